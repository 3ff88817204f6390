"""Shared machinery of the benchmarks: the machine, ports, processes, the engine, the data.

Every process a benchmark needs (the proxy, nginx, redis-server, the Cohere-protocol test server,
the load generator) is started here as a child in its own session and stopped by its process
group id, which is its own pid; nothing is ever stopped by name. Logs go to a temporary
directory that is printed on failure.

The proxy is started only by `start_proxy` (or, in-process, configured by `in_process_settings`):
the shipped defaults plus what the bench names, with the differences recorded for its results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.nginx_lb import render_conf

if TYPE_CHECKING:
    from rerank_proxy.config import Settings

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
DATASET = Path(os.environ.get("BENCH_DATASET", "/work/shared/datasets/cranfield"))
DEFAULT_ENGINE_PORT = 9400
ADMIN_TOKEN = "bench-admin-token"   # only for a proxy started with ADMIN_TOKEN=ADMIN_TOKEN named
PROVIDER_KEY = "bench-provider-key"
CRANFIELD_INDEX = "cranfield"
SMALL_INDEX = "bench-small"
BULK_INDEX = "bench-bulk"
BUCKETS = 10                     # derived integer field `bucket` = int(_id) % BUCKETS, for filters


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the machine ---------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "absent"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
        "wrk": version(["wrk", "-v"]),
        "nginx": version(["nginx", "-v"]),
        "redis": version(["redis-server", "--version"]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- statistics ----------------------------------------------------------------------------------

def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in 0..1) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": quantile(values, 0.5), "p90": quantile(values, 0.9),
            "p99": quantile(values, 0.99), "mean": sum(values) / len(values), "max": max(values),
            "min": min(values)}


def median(values: Iterable[float]) -> float:
    return quantile(list(values), 0.5)


# --- processes -----------------------------------------------------------------------------------

_LOG_DIR = Path(tempfile.mkdtemp(prefix="rerank-bench-"))


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    url: str = ""
    port: int = 0
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def child_pids(self) -> list[int]:
        """Direct children (uvicorn's workers when --workers > 1)."""
        out: list[int] = []
        task_dir = Path(f"/proc/{self.pid}/task")
        try:
            for task in task_dir.iterdir():
                children = (task / "children").read_text().split()
                out.extend(int(c) for c in children)
        except OSError:
            pass
        return out

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children if any, else the process itself."""
        children = [p for p in self.child_pids()
                    if _cmdline(p) and "multiprocessing.resource_tracker" not in _cmdline(p)]
        return children or [self.pid]

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)   # our own child's group: pgid == its pid
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kb(pid: int) -> int:
    """VmRSS of one process, from /proc/<pid>/status (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> Service:
    log_path = _LOG_DIR / f"{name}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Service(name, proc, log_path=log_path)


def wait_http(service: Service, path: str, timeout_s: float = 60.0, ok=lambda r: r.status_code < 500) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited early:\n{service.log_tail()}")
        try:
            response = httpx.get(service.url + path, timeout=2.0)
            if ok(response):
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} not ready after {timeout_s}s ({last}):\n{service.log_tail()}")


# --- the engine and the data ---------------------------------------------------------------------

def start_engine(kind: str = "elasticsearch", port: int = DEFAULT_ENGINE_PORT) -> str:
    """A real engine on `port` (reused when already running); returns its URL."""
    from rerank_proxy.local_engines.runner import ensure_engine

    info = ensure_engine(kind, port=port, say=lambda m: log(f"engine: {m}"))
    return info.url


def engine_version(url: str) -> str:
    try:
        data = httpx.get(url + "/_nodes/_local", timeout=5).json()
        node = next(iter(data["nodes"].values()))
        return f"{node.get('version', '?')}"
    except Exception:  # noqa: BLE001 - the version is only a label in the results; unreadable, it is "?"
        return "?"


def load_corpus() -> list[dict[str, Any]]:
    docs = []
    with open(DATASET / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            docs.append({"_id": doc["_id"], "title": doc.get("title", ""), "text": doc.get("text", "")})
    return docs


def load_queries() -> list[str]:
    out = []
    with open(DATASET / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            out.append(" ".join(json.loads(line)["text"].split()))
    return out


def _bulk(client: httpx.Client, url: str, lines: list[bytes]) -> None:
    body = b"\n".join(lines) + b"\n"
    response = client.post(url + "/_bulk", content=body, headers={"content-type": "application/x-ndjson"})
    response.raise_for_status()
    if response.json().get("errors"):
        raise RuntimeError(f"bulk load failed: {response.text[:500]}")


def index_cranfield(url: str, index: str = CRANFIELD_INDEX) -> int:
    """The Cranfield corpus with `title`, `text` and the derived integer `bucket` (id % 10)."""
    docs = load_corpus()
    with httpx.Client(timeout=60) as client:
        count = client.get(f"{url}/{index}/_count")
        if count.status_code == 200 and count.json().get("count") == len(docs):
            return len(docs)
        client.delete(f"{url}/{index}")
        mapping = {"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                   "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"},
                                               "bucket": {"type": "integer"}}}}
        client.put(f"{url}/{index}", json=mapping).raise_for_status()
        lines: list[bytes] = []
        for doc in docs:
            lines.append(json.dumps({"index": {"_index": index, "_id": doc["_id"]}}).encode())
            lines.append(json.dumps({"title": doc["title"], "text": doc["text"],
                                     "bucket": int(doc["_id"]) % BUCKETS}).encode())
        _bulk(client, url, lines)
        client.post(f"{url}/{index}/_refresh").raise_for_status()
    log(f"indexed {len(docs)} Cranfield documents into {index}")
    return len(docs)


def small_doc(i: int) -> dict[str, Any]:
    return {"name": f"item {i}", "n": i, "tag": ("red", "green", "blue")[i % 3]}


def index_small(url: str, index: str = SMALL_INDEX, n: int = 1000) -> None:
    """Small documents (about 50 bytes of _source) for the pass-through GET benchmark."""
    with httpx.Client(timeout=60) as client:
        count = client.get(f"{url}/{index}/_count")
        if count.status_code == 200 and count.json().get("count") == n:
            return
        client.delete(f"{url}/{index}")
        for name in (index, BULK_INDEX):
            client.delete(f"{url}/{name}")
            client.put(f"{url}/{name}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
                       ).raise_for_status()
        lines = []
        for i in range(n):
            lines.append(json.dumps({"index": {"_index": index, "_id": str(i)}}).encode())
            lines.append(json.dumps(small_doc(i)).encode())
        _bulk(client, url, lines)
        client.post(f"{url}/{index}/_refresh").raise_for_status()
    log(f"indexed {n} small documents into {index}")


def bulk_body(n: int = 1000, index: str = BULK_INDEX) -> bytes:
    """A `_bulk` of n small documents with fixed ids (repeated bulks overwrite, the index stays bounded)."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({"index": {"_index": index, "_id": str(i)}}, separators=(",", ":")))
        lines.append(json.dumps(small_doc(i), separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def search_body(query: str, *, size: int | None = None, from_: int | None = None,
                bucket_lt: int | None = None) -> dict[str, Any]:
    """The benchmark's search: multi_match over title and text, optionally filtered on `bucket`."""
    match = {"multi_match": {"query": query, "fields": ["title^2", "text"]}}
    query_dsl: dict[str, Any] = match
    if bucket_lt is not None:
        query_dsl = {"bool": {"must": [match], "filter": [{"range": {"bucket": {"lt": bucket_lt}}}]}}
    body: dict[str, Any] = {"query": query_dsl}
    if from_ is not None:
        body["from"] = from_
    if size is not None:
        body["size"] = size
    return body


# --- the services --------------------------------------------------------------------------------

def clean_env(**settings: Any) -> dict[str, str]:
    """This process's environment without any proxy setting, plus the given ones."""
    from rerank_proxy.config import FILE_VARIANTS, SETTING_NAMES

    env = {k: v for k, v in os.environ.items()
           if k not in SETTING_NAMES and k not in {f"{n}_FILE" for n in FILE_VARIANTS}}
    env.update({k: str(v) for k, v in settings.items() if v is not None})
    return env


def start_counting_server(delay_ms: float, port: int | None = None) -> Service:
    """The Cohere-protocol test server (bench/count_server.py) with a fixed delay per request."""
    port = port or free_port()
    service = spawn(f"count-server-{port}", [sys.executable, "-m", "bench.count_server", "--port", str(port),
                                             "--delay-ms", str(delay_ms), "--api-key", PROVIDER_KEY],
                    env=clean_env())
    service.url, service.port = f"http://127.0.0.1:{port}", port
    wait_http(service, "/health")
    return service


def counting_stats(server: Service, records: bool = False, reset: bool = False) -> dict[str, Any]:
    if reset:
        httpx.post(server.url + "/_stats/reset", timeout=10).raise_for_status()
        return {}
    return httpx.get(server.url + "/_stats", params={"records": "1" if records else "0"}, timeout=30).json()


# --- the proxy: the one harness every benchmark starts it through --------------------------------
#
# A proxy started here runs on the shipped environment (clean_env strips every inherited setting)
# plus only: UPSTREAM_URLS and the --host/--port flags; the provider under test when one is given
# (RERANK_PROVIDER=cohere, RERANK_BASE_URL, RERANK_API_KEY); --workers when the caller names a
# worker count; and the settings the caller names, each checked against rerank_proxy.config. What
# differs from the shipped defaults is recorded (`Service.extra["differs"]`, secrets redacted, and
# `started_proxies()` for the results file), so a report states it from what was set. Naming a
# setting is the only way to change one: tests/test_bench_harness.py fails on a bench that spawns
# the proxy itself or writes a setting name anywhere but in a call to this harness.

PROVIDER_SETTINGS = ("RERANK_PROVIDER", "RERANK_BASE_URL", "RERANK_API_KEY")
HARNESS_FLAGS = {"UPSTREAM_URLS": "the upstream argument", "HOST": "--host", "PORT": "the port argument",
                 "WORKERS": "the workers argument"}
REDACTED = "<redacted>"
_STARTED: dict[str, dict[str, str]] = {}


def _setting_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def named(**settings: Any) -> dict[str, Any]:
    """Settings a benchmark sets on purpose, checked now (a real setting name, a value it accepts),
    as NAME -> text (typed Any so that `**named(...)` passes to the harness's keyword arguments).

    Where named settings are kept in a variable before they reach `start_proxy`, they are built by
    this call: the guard test accepts a setting name in a bench only inside a harness call."""
    from rerank_proxy.config import SETTINGS
    from rerank_proxy.config_values import BadValue

    by_name = {s.name: s for s in SETTINGS}
    out: dict[str, str] = {}
    for name, value in settings.items():
        setting = by_name.get(name)
        if setting is None:
            raise ValueError(f"{name!r} is not a proxy setting (rerank_proxy.config.SETTING_NAMES); "
                             "a benchmark can only name real settings")
        if value is None:
            continue
        text = _setting_text(value)
        try:
            setting.parse(text)
        except BadValue as exc:
            shown = REDACTED if setting.secret else repr(text)
            raise ValueError(f"{name}={shown}: {exc.problem}; accepted: {exc.accepted}") from None
        out[name] = text
    return out


def differs_from_shipped(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings among `settings` (NAME -> text) whose value is not the shipped default, secrets
    redacted, sorted by name. UPSTREAM_URLS is left out: every run sets it to its engine.
    WORKERS is compared as written ("auto" is the default whatever it resolves to here)."""
    from rerank_proxy.config import SETTINGS

    by_name = {s.name: s for s in SETTINGS}
    out: dict[str, str] = {}
    for name, text in sorted(named(**settings).items()):
        setting = by_name[name]
        if name == "UPSTREAM_URLS":
            continue
        if name == "WORKERS":
            same = text.strip().lower() == setting.default
        else:
            same = setting.parse(text) == setting.parse(setting.default)
        if not same:
            out[name] = REDACTED if setting.secret and text else text
    return out


def _provider_url(provider: Service | str | None) -> str | None:
    return provider.url if isinstance(provider, Service) else provider


def proxy_env(upstream: str, provider: Service | str | None = None, settings: Mapping[str, Any] | None = None, *,
              workers: int | str | None = None, port: int = 8080,
              host: str = "127.0.0.1") -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(env, argv, differs) of `rerank-proxy serve` as the harness starts it; pure, starts nothing.

    env: clean_env() plus UPSTREAM_URLS, the provider trio when `provider` (a Cohere-protocol server:
    a Service or its URL) is given, and `settings` (checked by `named`). argv: `python -m
    rerank_proxy.cli serve --host --port`, `--workers` only when `workers` is given. differs: the
    settings of env and argv that are not the shipped defaults (`differs_from_shipped`)."""
    chosen = named(**(settings or {}))
    if clash := sorted(set(chosen) & set(HARNESS_FLAGS)):
        raise ValueError(f"{clash[0]} is set by the harness ({HARNESS_FLAGS[clash[0]]}), not as a named setting")
    base = {"UPSTREAM_URLS": upstream}
    url = _provider_url(provider)
    if url is not None:
        if clash := sorted(set(chosen) & set(PROVIDER_SETTINGS)):
            raise ValueError(f"{clash[0]} is named while a provider is given: the provider sets it")
        base.update(RERANK_PROVIDER="cohere", RERANK_BASE_URL=url, RERANK_API_KEY=PROVIDER_KEY)
    base.update(chosen)
    env = clean_env(**base)
    # `python -m` from the checkout: its proxy, also when the venv's editable install points elsewhere
    argv = [sys.executable, "-m", "rerank_proxy.cli", "serve", "--host", host, "--port", str(port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
        base["WORKERS"] = str(workers)
    return env, argv, differs_from_shipped(base)


def _record(label: str, differs: dict[str, str]) -> str:
    """Keep what a proxy (or an in-process runtime) of this run was set to, under a unique label."""
    key, n = label, 1
    while key in _STARTED and _STARTED[key] != differs:
        n += 1
        key = f"{label} ({n})"
    _STARTED[key] = dict(differs)
    return key


def started_proxies() -> dict[str, dict[str, str]]:
    """Every proxy this process started through the harness (by name), each with the settings that
    differed from the shipped defaults: what a results file records as `settings_differ`."""
    return {label: dict(differs) for label, differs in _STARTED.items()}


def start_proxy(upstream: str, *, provider: Service | str | None, workers: int | str | None = None,
                port: int | None = None, name: str = "proxy", checkout: Path = REPO,
                ready: str = "/_rerank/ready", wait_workers: bool = True, home: Path | None = None,
                **settings: Any) -> Service:
    """`rerank-proxy serve` on the shipped defaults plus what `proxy_env` adds; `provider`: a
    Cohere-protocol server (a Service or a URL) or None for the shipped provider; `workers` only
    when the bench needs a count (None: the shipped WORKERS=auto, no flag); `checkout`: the source
    tree to run (another revision's); `ready`: the path polled until it answers 200 (/_rerank/health
    does not wait for the reranker); `wait_workers`: also wait until every worker runs; `home`: the
    proxy's HOME, so a fresh folder gives the shipped store path (~/.cache/...) a fresh store with
    no setting changed."""
    port = port or free_port()
    env, argv, differs = proxy_env(upstream, provider, settings, workers=workers, port=port)
    if home is not None:
        env["HOME"] = str(home)
    service = spawn(f"{name}-{port}", argv, env=env, cwd=checkout)
    service.url, service.port = f"http://127.0.0.1:{port}", port
    from rerank_proxy.config_values import Workers

    count = Workers()(str(workers) if workers is not None else "auto")
    service.extra = {"workers": count, "differs": differs, "label": _record(name, differs)}
    try:
        wait_http(service, ready, ok=lambda r: r.status_code == 200)
        if wait_workers and count > 1:  # every worker must be up before load starts
            deadline = time.monotonic() + 60
            while len(service.worker_pids()) < count or service.worker_pids() == [service.pid]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{service.name}: workers did not start:\n{service.log_tail()}")
                time.sleep(0.2)
            time.sleep(1.0)
    except BaseException:
        service.stop()
        raise
    return service


def in_process_settings(upstream: str, provider: Service | str | None, *, name: str = "in-process",
                        **settings: Any) -> tuple[Settings, dict[str, str]]:
    """The `Settings` a proxy started by `start_proxy` with the same arguments would load, for the
    benches that build the runtime in-process; (settings, differs), recorded like a started proxy."""
    from rerank_proxy.config import SETTING_NAMES, load_settings

    env, _, differs = proxy_env(upstream, provider, settings)
    loaded = load_settings({k: v for k, v in env.items() if k in SETTING_NAMES})
    _record(name, differs)
    return loaded, differs


def start_command(name: str, args: Sequence[str], *, checkout: Path = REPO, **settings: Any) -> Service:
    """Another `rerank-proxy` command (e.g. `warm`) of the checkout, on the shipped environment plus
    the named settings (checked by `named`); `serve` goes through `start_proxy`."""
    if not args or args[0] == "serve":
        raise ValueError("start the proxy with start_proxy, which records its settings")
    return spawn(name, [sys.executable, "-m", "rerank_proxy.cli", *args], env=clean_env(**named(**settings)),
                 cwd=checkout)


def proxy_metrics(proxy: Service, names: Sequence[str]) -> dict[str, float]:
    """Unlabelled samples of the proxy's merged metrics (every worker), by name; absent ones are 0."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(proxy.url + "/_rerank/metrics", timeout=30).text
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    return {name: found.get(name, 0.0) for name in names}


def proxy_cache_metrics(proxy: Service) -> dict[str, float]:
    """The score cache's and the answer memo's samples from /_rerank/metrics (no admin token needed),
    labelled ones as `name{label="value"}`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(proxy.url + "/_rerank/metrics", timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(("rerank_proxy_cache_", "rerank_proxy_answer_memo_")):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def proxy_cache_stats(proxy: Service) -> dict[str, Any]:
    """/_rerank/admin/cache: needs a proxy started with ADMIN_TOKEN=ADMIN_TOKEN named (so the run
    records it as a difference); proxy_cache_metrics reads the same counts without it."""
    if "ADMIN_TOKEN" not in proxy.extra.get("differs", {}):
        raise RuntimeError(f"{proxy.name} was not started with ADMIN_TOKEN named; use proxy_cache_metrics")
    return httpx.get(proxy.url + "/_rerank/admin/cache", headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                     timeout=10).json()


def start_redis(port: int | None = None) -> Service:
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=_LOG_DIR))
    service = spawn(f"redis-{port}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(workdir),
                                      "--daemonize", "no"])
    service.url, service.port = f"redis://127.0.0.1:{port}/0", port
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return service
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"redis-server did not start:\n{service.log_tail()}")


def start_nginx(upstream_url: str, port: int | None = None, worker_processes: str = "auto") -> Service:
    """nginx as a plain reverse proxy (bench/nginx.conf), in the foreground, in a temp prefix."""
    port = port or free_port()
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=_LOG_DIR))
    # the workers run as nobody: they must reach tmp/ to buffer an answer larger than their memory
    # buffers to disk (a 10 MB search answer), so the log directory above must be traversable
    _LOG_DIR.chmod(0o711)
    prefix.chmod(0o755)
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir()
        (prefix / sub).chmod(0o777)
    upstream = upstream_url.split("://", 1)[1].rstrip("/")
    user_line = "user nobody nogroup;" if os.geteuid() == 0 else ""
    conf = (BENCH / "nginx.conf").read_text()
    for key, value in {"@USER@": user_line, "@WORKERS@": worker_processes, "@PREFIX@": str(prefix),
                       "@PORT@": str(port), "@UPSTREAM@": upstream}.items():
        conf = conf.replace(key, value)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    service = spawn(f"nginx-{port}", ["nginx", "-p", str(prefix), "-c", str(conf_path),
                                      "-e", str(prefix / "logs" / "error.log")])
    service.url, service.port = f"http://127.0.0.1:{port}", port
    service.log_path = prefix / "logs" / "error.log"
    wait_http(service, "/_cluster/health", ok=lambda r: r.status_code == 200)
    return service


# --- load ----------------------------------------------------------------------------------------

def run_wrk(url: str, requests: list[tuple[str, str, bytes, dict[str, str]]], *, connections: int,
            duration_s: float, threads: int | None = None, timeout_s: int = 10) -> dict[str, Any]:
    """Run wrk (a separate process) against `url`, cycling through `requests`; returns its JSON report.

    `requests` are (method, path, body, headers). The Lua script (bench/wrk_report.lua) reports the
    latency percentiles from wrk's own histogram (microseconds) and the error counters.
    """
    threads = threads or (1 if connections == 1 else min(2, connections))
    work = Path(tempfile.mkdtemp(prefix="wrk-", dir=_LOG_DIR))
    lua = [f"package.path = '{BENCH}/?.lua;' .. package.path", "local r = require('wrk_report')", "r.requests = {"]
    for method, path, body, headers in requests:
        hdrs = ", ".join(f"[ {_lua_str(k)} ] = {_lua_str(v)}" for k, v in headers.items())
        body_expr = _lua_str(body.decode()) if body else "nil"
        lua.append(f"  {{{_lua_str(method)}, {_lua_str(path)}, {{{hdrs}}}, {body_expr}}},")
    lua.append("}")
    lua.append("init = r.init\nrequest = r.request\ndone = r.done\nsetup = r.setup")
    script = work / "script.lua"
    script.write_text("\n".join(lua))
    out_path = work / "report.json"
    env = dict(os.environ, WRK_REPORT=str(out_path))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
           f"--timeout={timeout_s}s", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s + 60)
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    report = json.loads(out_path.read_text())
    report["stdout"] = proc.stdout
    return report


def _lua_str(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def run_loadgen(spec: dict[str, Any], name: str = "loadgen") -> dict[str, Any]:
    """Run bench/loadgen.py (a bounded asyncio client) in its own process; returns its records."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_LOG_DIR))
    spec_path, out_path = work / "spec.json", work / "out.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)],
                          cwd=REPO, stdin=subprocess.DEVNULL, env=clean_env())
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed with status {proc.returncode}")
    return json.loads(out_path.read_text())


def save_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=str))
    tmp.replace(path)
    log(f"wrote {path.relative_to(REPO)}")
    return path


def ensure_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (apt-get install {' '.join(missing)})")


# --- replicas: a Redis Cluster and nginx balancing over proxies (bench/replicas.py) ---------------

@dataclass
class RedisCluster:
    """A Redis Cluster of `start_redis_cluster`: its nodes (each a Service) and the seed URL."""

    nodes: list[Service]
    seed_url: str

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        """Every primary emptied (a replica refuses FLUSHALL, and follows its primary)."""
        import redis

        for node in self.nodes:
            with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5) as client:
                if client.info("replication").get("role") == "master":
                    client.flushall()


def _cluster_state(port: int) -> str:
    import redis

    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
            info = client.execute_command("CLUSTER", "INFO")
    except (redis.RedisError, OSError):
        return ""
    text = info.decode() if isinstance(info, bytes) else str(info)
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cluster_state:")),
                "?")


def start_redis_cluster(primaries: int = 3, replicas_each: int = 1, node_timeout_ms: int = 1000) -> RedisCluster:
    """A Redis Cluster on loopback (`redis-cli --cluster create`): `primaries` primaries with
    `replicas_each` replicas each, free ports for the clients and for the bus (`--cluster-port`).
    The same shape as the tests' fixture (tests/fixtures/redis_cluster.py), without pytest."""
    nodes = []
    for _ in range(primaries * (1 + replicas_each)):
        port, bus = free_port(), free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"redis-cluster-{port}-", dir=_LOG_DIR))
        service = spawn(f"redis-cluster-{port}", [
            "redis-server", "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--appendonly", "no", "--save", "",
            "--dir", str(workdir), "--daemonize", "no"])
        service.url, service.port = f"redis://127.0.0.1:{port}/0", port
        nodes.append(service)
    cluster = RedisCluster(nodes, nodes[0].url)
    try:
        deadline = time.monotonic() + 30
        while not all(_cluster_state(n.port) for n in nodes):  # every node answers CLUSTER INFO
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster nodes did not start:\n{nodes[0].log_tail()}")
            time.sleep(0.1)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", str(replicas_each), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        while not all(_cluster_state(n.port) == "ok" for n in nodes):
            if time.monotonic() > deadline + 30:
                raise RuntimeError("the redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_nginx_lb(backends: Sequence[Service], port: int | None = None) -> Service:
    """nginx balancing round robin over `backends` (proxy replicas), one worker, no access log;
    a search (a POST) whose replica fails is sent on to the next (`non_idempotent`)."""
    port = port or free_port()
    prefix = Path(tempfile.mkdtemp(prefix="nginx-lb-", dir=_LOG_DIR))
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir()
        (prefix / sub).chmod(0o777)
    conf = prefix / "nginx.conf"
    conf.write_text(render_conf(prefix, port, [f"127.0.0.1:{b.port}" for b in backends], access_log=False))
    service = spawn(f"nginx-lb-{port}", ["nginx", "-p", str(prefix), "-c", str(conf),
                                         "-e", str(prefix / "logs" / "error.log")])
    service.url, service.port = f"http://127.0.0.1:{port}", port
    service.log_path = prefix / "logs" / "error.log"
    wait_http(service, "/_rerank/health", ok=lambda r: r.status_code == 200)
    return service
