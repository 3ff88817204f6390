"""Run real Elasticsearch/OpenSearch engines locally, without Docker, for the demo, tests and benchmarks.

`ensure_engine()` fetches the official integ-test zip (see `distributions.py`), starts one node or a
small cluster on loopback as an unprivileged user, waits until it is healthy and returns an
`EngineInfo`. A second call for the same port finds the running engine and reuses it, from any
process: the pids, ports and version are kept in a small state file.

Ports. The CLI (`rerank-proxy engine up`) defaults to 9200 for elasticsearch and 9201 for
opensearch; the test fixtures use 19200 (elasticsearch), 19201 (opensearch), 19300-19302 (a
3-node opensearch cluster) and 19210/19211 (second-line versions). Node `i` of an engine on port P
serves HTTP on P+i and its transport (node-to-node) protocol on P+i+1000.

Layout under `cache_dir()` (`$RERANK_PROXY_CACHE_DIR`; default `~/.cache/rerank-proxy/engines`,
or `/var/cache/rerank-proxy/engines` as root):
`zips/` downloaded zips, `dist/<kind>-<version>/` unpacked trees (shared read-only by all engines of
that build), `run/port-<P>/state.json` plus `node-<i>/{config,data,logs}` per running engine.

Each node gets its own copy of `config/` so nodes never share a keystore or auto-generated files.
The Elasticsearch integ-test zip includes the x-pack-security module (but not the rest of x-pack),
so security is disabled explicitly: left on, the start script's security auto-configuration
writes a keystore entry the zip cannot read and the node dies. The zips lack most other modules
(docs/local-engines.md lists what is missing): e.g. neither 9.x Elasticsearch nor 2.x OpenSearch
knows the language analyzers (`english`, ...). Elasticsearch's root endpoint (`GET /`) lives in a
module the zip lacks too; `root_endpoint` builds a small plugin that serves it, installed at unpack.

Environment read here and in the helper modules: `RERANK_PROXY_CACHE_DIR` (cache root),
`RERANK_PROXY_ENGINE_USER` (user engines run as when we are root; default `rerankproxy`),
`RERANK_PROXY_JAVA_HOME`, `JAVA_HOME_21`, `JAVA_HOME_17`, `JAVA_HOME` (JDK choice, see `java.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from rerank_proxy.local_engines import processes
from rerank_proxy.local_engines.distributions import (
    DEFAULT_VERSIONS,
    ELASTICSEARCH,
    KINDS,
    OPENSEARCH,
    Distribution,
    Say,
    cache_dir,
    distribution,
    file_lock,
    unpack,
)
from rerank_proxy.local_engines.java import find_java_home

DEFAULT_PORTS: dict[str, int] = {ELASTICSEARCH: 9200, OPENSEARCH: 9201}
TRANSPORT_PORT_OFFSET = 1000
DEFAULT_HEAP = "512m"
DEFAULT_TIMEOUT_S = 180.0
HOST = "127.0.0.1"

__all__ = [
    "DEFAULT_HEAP", "DEFAULT_PORTS", "DEFAULT_TIMEOUT_S", "DEFAULT_VERSIONS", "ELASTICSEARCH",
    "KINDS", "OPENSEARCH", "EngineError", "EngineInfo", "ensure_engine", "fetch_engine",
    "health", "running_engines", "start_node", "stop_all", "stop_engine", "stop_node",
]


class EngineError(RuntimeError):
    """An engine could not be started, reused or stopped; the message says why (and shows logs)."""


def _stderr(message: str) -> None:
    print(f"[engine] {message}", file=sys.stderr, flush=True)


@dataclass
class EngineInfo:
    """A running engine (one node or a cluster), as recorded in its state file.

    `pids[i]` is the process (group) of node `i`, or None while that node is stopped by
    `stop_node()`. `reused` tells whether `ensure_engine()` found it already running.
    """

    kind: str
    version: str
    port: int
    nodes: int
    pids: list[int | None]
    start_times: list[int]
    heap: str
    java_home: str
    home: str
    run_dir: str
    started_at: float = field(default_factory=time.time)
    reused: bool = False

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        return [f"http://{HOST}:{port}" for port in self.http_ports]

    @property
    def http_ports(self) -> list[int]:
        return [self.port + i for i in range(self.nodes)]

    @property
    def transport_ports(self) -> list[int]:
        return [port + TRANSPORT_PORT_OFFSET for port in self.http_ports]

    @property
    def cluster_name(self) -> str:
        return f"rerank-proxy-{self.kind}-{self.port}"

    def node_dir(self, i: int) -> Path:
        return Path(self.run_dir) / f"node-{i}"

    def node_alive(self, i: int) -> bool:
        pid = self.pids[i]
        return pid is not None and processes.is_alive(pid, self.start_times[i])


# ---------------------------------------------------------------------------------------------
# Public API


def ensure_engine(
    kind: str,
    version: str | None = None,
    port: int | None = None,
    nodes: int = 1,
    heap: str = DEFAULT_HEAP,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    say: Say = _stderr,
) -> EngineInfo:
    """Return a healthy engine of this kind/version/size on `port`, starting it only if needed.

    Reuses a running engine started by any earlier call (same or another process) when it matches;
    a different engine on the port is an error rather than silently replaced.
    """
    dist = distribution(kind, version)
    port = port or DEFAULT_PORTS[kind]
    if nodes < 1:
        raise EngineError("nodes must be at least 1")
    if port + nodes - 1 + TRANSPORT_PORT_OFFSET > 65535:
        raise EngineError(f"port {port} is too high: transport ports are HTTP port + {TRANSPORT_PORT_OFFSET}")
    with file_lock(f"port-{port}"):
        current = _load_state(port)
        if current is not None:
            if _is_running(current):
                _check_same(current, dist, nodes)
                lacking = _lacks_root_endpoint(current)
                if lacking is None:
                    current.reused = True
                    say(f"reusing {current.kind} {current.version} at {current.url} (pids {current.pids})")
                    return current
                say(f"restarting {current.kind} {current.version} on port {port}: {lacking}")
            else:
                say(f"cleaning up a dead or partial {current.kind} on port {port}")
            _stop_processes(current)
            _remove_state(port)
        _check_ports_free(port, nodes)
        return _start_engine(dist, port, nodes, heap, timeout_s, say)


def stop_engine(kind: str | None = None, port: int | None = None, say: Say = _stderr) -> EngineInfo | None:
    """Stop the engine on `port` (default: the CLI port of `kind`) and forget it, data included.

    Returns what was stopped, or None if nothing ran there.
    """
    if port is None:
        if kind is None:
            raise EngineError("stop_engine needs a kind or a port")
        port = DEFAULT_PORTS[kind]
    with file_lock(f"port-{port}"):
        info = _load_state(port)
        if info is None:
            return None
        if kind is not None and info.kind != kind:
            raise EngineError(f"port {port} runs {info.kind}, not {kind}")
        say(f"stopping {info.kind} {info.version} on port {port}")
        _stop_processes(info)
        _remove_state(port)
        shutil.rmtree(info.run_dir, ignore_errors=True)
        return info


def stop_all(kind: str | None = None, say: Say = _stderr) -> list[EngineInfo]:
    """Stop every engine we know of (optionally only one kind)."""
    stopped = []
    for info in running_engines():
        if (kind is None or info.kind == kind) and stop_engine(port=info.port, say=say) is not None:
            stopped.append(info)
    return stopped


def running_engines() -> list[EngineInfo]:
    """Engines with a state file, alive or not (see `health()`), ordered by port."""
    found = []
    for path in sorted((cache_dir() / "run").glob("port-*/state.json")):
        info = _read_state_file(path)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda info: info.port)


def health(info: EngineInfo, timeout_s: float = 3.0) -> str:
    """Cluster health colour, or `down` (no process alive) / `no answer` (alive but not serving)."""
    alive = [i for i in range(info.nodes) if info.node_alive(i)]
    if not alive:
        return "down"
    for i in alive:
        try:
            response = httpx.get(f"{info.urls[i]}/_cluster/health", timeout=timeout_s)
            return str(response.json().get("status", response.status_code))
        except (httpx.HTTPError, ValueError):
            continue
    return "no answer"


def stop_node(info: EngineInfo, i: int, grace_s: float = 30.0) -> None:
    """Stop node `i` of a cluster and keep its data, so `start_node()` can bring it back (fault tests)."""
    with file_lock(f"port-{info.port}"):
        pid = info.pids[i]
        if pid is not None and processes.group_alive(pid, info.start_times[i]):
            processes.stop_groups([pid], grace_s)
        info.pids[i] = None
        _save_state(info)


def start_node(info: EngineInfo, i: int, timeout_s: float = DEFAULT_TIMEOUT_S, say: Say = _stderr) -> None:
    """Restart node `i` (stopped by `stop_node()`) and wait until the cluster has all nodes again."""
    with file_lock(f"port-{info.port}"):
        if info.node_alive(i):
            return
        _launch_node(info, i, bootstrap=False)
        _save_state(info)
        try:
            _wait_ready(info, [i], timeout_s, say)
        except EngineError:
            _stop_node_quietly(info, i)
            raise


def _stop_node_quietly(info: EngineInfo, i: int) -> None:
    pid = info.pids[i]
    if pid is not None:
        processes.stop_groups([pid], grace_s=10)
    info.pids[i] = None
    _save_state(info)


def fetch_engine(kind: str, version: str | None = None, say: Say = _stderr) -> Path:
    """Download and unpack a build ahead of time (CI warms the cache); returns its home folder."""
    return unpack(distribution(kind, version), say)


# ---------------------------------------------------------------------------------------------
# Starting


def _start_engine(dist: Distribution, port: int, nodes: int, heap: str, timeout_s: float, say: Say) -> EngineInfo:
    started = time.monotonic()
    home = unpack(dist, say)
    java_home = find_java_home(*dist.java_range)
    user = processes.engine_user()
    if user is not None:
        processes.ensure_user(user)
    run_dir = _run_dir(port)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    info = EngineInfo(
        kind=dist.kind, version=dist.version, port=port, nodes=nodes, pids=[None] * nodes,
        start_times=[0] * nodes, heap=heap, java_home=str(java_home), home=str(home), run_dir=str(run_dir),
    )
    for i in range(nodes):
        _prepare_node_dir(info, i)
    processes.give_to_user(home, user)
    processes.give_to_user(run_dir, user)
    processes.check_reachable(run_dir, user)
    say(f"starting {dist.name} ({nodes} node{'s' if nodes > 1 else ''}, HTTP {_port_range(info)}, "
        f"Java {java_home})")
    for i in range(nodes):
        _launch_node(info, i, bootstrap=True)
    _save_state(info)
    try:
        _wait_ready(info, list(range(nodes)), timeout_s, say)
    except EngineError:
        _stop_processes(info)
        _remove_state(port)
        raise
    say(f"{dist.name} is up at {info.url} after {time.monotonic() - started:.0f} s")
    return info


def _prepare_node_dir(info: EngineInfo, i: int) -> None:
    node = info.node_dir(i)
    shutil.copytree(Path(info.home) / "config", node / "config")
    (node / "data").mkdir()
    (node / "logs").mkdir()


def _launch_node(info: EngineInfo, i: int, bootstrap: bool) -> None:
    node = info.node_dir(i)
    command = [str(Path(info.home) / "bin" / info.kind)]
    for key, value in _node_settings(info, i, bootstrap).items():
        command += ["-E", f"{key}={value}"]
    # cwd = the logs folder: the JVM writes gc.log and crash files relative to it.
    started = processes.start(
        command, _node_env(info, i), cwd=node / "logs", console_log=node / "logs" / "console.log",
        user=processes.engine_user(),
    )
    info.pids[i] = started.pid
    info.start_times[i] = started.start_time


def _node_settings(info: EngineInfo, i: int, bootstrap: bool) -> dict[str, str]:
    node = info.node_dir(i)
    settings = {
        "cluster.name": info.cluster_name,
        "node.name": f"node-{i}",
        "network.host": HOST,
        "http.port": str(info.http_ports[i]),
        "transport.port": str(info.transport_ports[i]),
        "path.data": str(node / "data"),
        "path.logs": str(node / "logs"),
        # Small shared disks would otherwise turn indices read-only mid-test.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    if info.nodes == 1:
        settings["discovery.type"] = "single-node"
    else:
        settings["discovery.seed_hosts"] = ",".join(f"{HOST}:{p}" for p in info.transport_ports)
        if bootstrap:  # only for the very first start; a restarted node rejoins the formed cluster
            settings[_INITIAL_MANAGERS_SETTING[info.kind]] = ",".join(f"node-{n}" for n in range(info.nodes))
    if info.kind == ELASTICSEARCH:
        settings["xpack.security.enabled"] = "false"
    return settings


_INITIAL_MANAGERS_SETTING = {
    ELASTICSEARCH: "cluster.initial_master_nodes",
    OPENSEARCH: "cluster.initial_cluster_manager_nodes",
}


def _node_env(info: EngineInfo, i: int) -> dict[str, str]:
    """A minimal environment: inherited ES_*/OPENSEARCH_*/JAVA_TOOL_OPTIONS must not leak in."""
    prefix = "ES" if info.kind == ELASTICSEARCH else "OPENSEARCH"
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        f"{prefix}_JAVA_HOME": info.java_home,
        f"{prefix}_JAVA_OPTS": f"-Xms{info.heap} -Xmx{info.heap}",
        f"{prefix}_PATH_CONF": str(info.node_dir(i) / "config"),
    }


def _wait_ready(info: EngineInfo, watched: list[int], timeout_s: float, say: Say) -> None:
    """Wait for yellow health with all nodes joined, asked of each watched node in turn.

    Fails fast if a watched node dies, and shows the end of its log either way.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    next_report = started + 10
    query = f"/_cluster/health?wait_for_status=yellow&wait_for_nodes={info.nodes}&timeout=2s"
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=1.0)) as client:
        while True:
            pending = [i for i in watched if not _node_ready(client, info, i, query)]
            if not pending:
                return
            dead = [i for i in pending if not info.node_alive(i)]
            if dead:
                raise EngineError(f"{info.kind} {info.version} node {dead[0]} exited during start-up\n"
                                  + _log_tail(info, dead[0]))
            now = time.monotonic()
            if now >= deadline:
                raise EngineError(f"{info.kind} {info.version} on port {info.port} was not healthy after "
                                  f"{timeout_s:.0f} s\n" + _log_tail(info, pending[0]))
            if now >= next_report:
                next_report += 10
                say(f"  waiting for {info.kind} {info.version} on {_port_range(info)}: {now - started:.0f} s")
            time.sleep(1)


def _node_ready(client: httpx.Client, info: EngineInfo, i: int, query: str) -> bool:
    try:
        response = client.get(info.urls[i] + query)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and not response.json().get("timed_out", True)


def _log_tail(info: EngineInfo, i: int, lines: int = 40) -> str:
    log = info.node_dir(i) / "logs" / "console.log"
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    tail = "\n".join(line[:400] for line in text[-lines:])
    return f"--- last {lines} lines of {log} ---\n{tail}"


# ---------------------------------------------------------------------------------------------
# Reuse checks


def _is_running(info: EngineInfo) -> bool:
    """All nodes alive (the very processes we started) and the engine answers as the right kind."""
    if not all(info.node_alive(i) for i in range(info.nodes)):
        return False
    return _answers_as(info.url, info.kind)


def _answers_as(url: str, kind: str) -> bool:
    """Elasticsearch marks every response with `X-Elastic-Product`; OpenSearch never does."""
    try:
        response = httpx.get(f"{url}/_cluster/health", timeout=5.0)
    except httpx.HTTPError:
        return False
    is_elasticsearch = response.headers.get("x-elastic-product") == "Elasticsearch"
    return response.status_code == 200 and is_elasticsearch == (kind == ELASTICSEARCH)


def _lacks_root_endpoint(info: EngineInfo) -> str | None:
    """Why a running Elasticsearch must not be reused for want of `GET /`, or None if it serves it.

    Nodes started before the root endpoint plugin was installed (see `root_endpoint`) answer 405,
    and every client's `info()` call would fail against them; a restart loads the plugin.
    """
    if info.kind != ELASTICSEARCH:
        return None
    try:
        status = httpx.get(f"{info.url}/", timeout=5.0).status_code
    except httpx.HTTPError as exc:
        return f"GET / failed ({exc})"
    return None if status == 200 else f"it answers GET / with {status} (started before the root endpoint plugin)"


def _check_same(current: EngineInfo, dist: Distribution, nodes: int) -> None:
    if (current.kind, current.version, current.nodes) != (dist.kind, dist.version, nodes):
        raise EngineError(
            f"port {current.port} already runs {current.kind} {current.version} with {current.nodes} "
            f"node(s), not {dist.kind} {dist.version} with {nodes}; stop it first "
            f"(rerank-proxy engine down --port {current.port})"
        )


def _check_ports_free(port: int, nodes: int) -> None:
    wanted = [port + i for i in range(nodes)]
    wanted += [p + TRANSPORT_PORT_OFFSET for p in wanted]
    busy = [p for p in wanted if _port_in_use(p)]
    if not busy:
        return
    for other in running_engines():
        if set(busy) & set(other.http_ports + other.transport_ports):
            raise EngineError(
                f"port(s) {busy} are used by {other.kind} {other.version} on {_port_range(other)} "
                f"(stop it with: rerank-proxy engine down --port {other.port}, or pick another --port)"
            )
    raise EngineError(f"port(s) {busy} are in use by something rerank-proxy did not start")


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _stop_processes(info: EngineInfo) -> None:
    pgids = [pid for pid, started in zip(info.pids, info.start_times)
             if pid is not None and processes.group_alive(pid, started)]
    processes.stop_groups(pgids)


def _port_range(info: EngineInfo) -> str:
    ports = info.http_ports
    return str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"


# ---------------------------------------------------------------------------------------------
# State files


def _run_dir(port: int) -> Path:
    return cache_dir() / "run" / f"port-{port}"


def _state_path(port: int) -> Path:
    return _run_dir(port) / "state.json"


def _save_state(info: EngineInfo) -> None:
    data = asdict(info)
    data.pop("reused")
    path = _state_path(info.port)
    if not path.parent.is_dir():
        return  # stopped and forgotten meanwhile (stop_engine removed the run folder)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _load_state(port: int) -> EngineInfo | None:
    return _read_state_file(_state_path(port))


def _read_state_file(path: Path) -> EngineInfo | None:
    try:
        return EngineInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _remove_state(port: int) -> None:
    _state_path(port).unlink(missing_ok=True)
