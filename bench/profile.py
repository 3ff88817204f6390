"""Where the proxy spends its CPU: py-spy on the proxy (1 worker) under the pass-through and cache-miss loads.

    .venv/bin/python -m bench.profile [--duration 20]

Loads: wrk `GET /bench-small/_doc/{id}` at concurrency 32, wrk `_bulk` of 1,000 documents at
concurrency 32, 32 concurrent reranked searches with distinct queries (every one a cache miss)
against the Cohere-protocol test server with its 50 ms delay (bench/loadgen.py), and wrk cycling
50 warmed searches (every one a cache hit) at concurrency 32. While each load
runs, `py-spy record --format raw --function` samples the proxy (and, for the cache-miss load, the
test server too, to show how busy the double itself is). The raw stacks are kept in
bench/results/profile/*.txt and summarised (top self and inclusive frames) in
bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import (
    CRANFIELD_INDEX,
    RESULTS,
    SMALL_INDEX,
    Service,
    bulk_body,
    cpu_seconds,
    index_cranfield,
    index_small,
    load_queries,
    log,
    machine_info,
    run_loadgen,
    run_wrk,
    save_json,
    search_body,
    start_counting_server,
    start_engine,
    start_proxy,
    started_proxies,
)

PROFILE_DIR = RESULTS / "profile"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    return found


class Recorder:
    """`py-spy record` on one pid for `duration` seconds, in a background process."""

    def __init__(self, pid: int, name: str, duration: float, rate: int) -> None:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        self.path = PROFILE_DIR / f"{name}.txt"
        self.duration, self.rate = duration, rate
        self.cpu_before = cpu_seconds(pid)
        self.pid = pid
        self.proc = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(int(duration)),
                                      "--rate", str(rate), "--format", "raw", "--function", "--nonblocking",
                                      "--output", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def wait(self) -> dict[str, Any]:
        _, err = self.proc.communicate(timeout=self.duration + 60)
        cpu = cpu_seconds(self.pid) - self.cpu_before
        if self.proc.returncode != 0 or not self.path.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        return summarise(self.path, self.duration, self.rate, cpu)


def _frame_name(frame: str) -> str:
    # raw frames look like "handle (rerank_proxy/app.py:123)"; keep function and file, shorten site-packages
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarise(path: Path, duration: float, rate: int, cpu_s: float, top: int = 25) -> dict[str, Any]:
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")
                  if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            incl_counts[f] += n
    def table(counter: Counter[str]) -> list[list[Any]]:
        return [[name, n, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []
    return {"samples": total, "duration_s": duration, "rate_hz": rate,
            "cpu_s_of_process": round(cpu_s, 2), "cpu_share_of_one_core": round(cpu_s / duration, 2),
            "top_self": table(self_counts), "top_inclusive": table(incl_counts),
            "raw": str(path.relative_to(RESULTS.parent.parent))}


def profile_wrk(name: str, proxy: Service, requests: list, duration: float, rate: int) -> dict[str, Any]:
    log(f"profiling {name}: wrk c=32 for {duration:.0f}s")
    holder: dict[str, Any] = {}

    def load() -> None:
        holder["report"] = run_wrk(proxy.url, requests, connections=32, duration_s=duration + 2)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.0)
    recorder = Recorder(proxy.pid, name, duration, rate)
    out = recorder.wait()
    thread.join()
    report = holder["report"]
    out["load"] = {"requests": report["requests"], "rps": report["requests"] / (report["duration_us"] / 1e6),
                   "p50_ms": report["latency_us"]["percentiles"]["50"] / 1000, "errors": report["errors"]}
    return out


def profile_miss(proxy: Service, provider: Service, duration: float, rate: int, count: int) -> dict[str, Any]:
    log(f"profiling cache_miss_c32: {count} distinct reranked searches at c=32")
    queries = load_queries()
    serial = itertools.count(10_000_000)
    requests = []
    for _ in range(count):
        n = next(serial)
        requests.append({"method": "POST", "url": proxy.url + f"/{CRANFIELD_INDEX}/_search",
                         "body": json.dumps(search_body(f"{queries[n % len(queries)]} {n}")),
                         "headers": {"content-type": "application/json"}})
    holder: dict[str, Any] = {}

    def load() -> None:
        holder["out"] = run_loadgen({"mode": "list", "concurrency": 32, "requests": requests, "progress_s": 5,
                                   "max_s": duration + 4})

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.5)
    rec_proxy = Recorder(proxy.pid, "cache_miss_c32-proxy", duration, rate)
    rec_provider = Recorder(provider.pid, "cache_miss_c32-test-provider", duration, rate)
    out = rec_proxy.wait()
    out["test_provider"] = rec_provider.wait()
    thread.join()
    elapsed = holder["out"]["elapsed_s"]
    sent = len(holder["out"]["records"])
    out["load"] = {"requests": sent, "rps": sent / elapsed}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = start_engine(port=args.engine_port)
    index_small(engine)
    index_cranfield(engine)
    provider = start_counting_server(50)
    results: dict[str, Any] = {"machine": machine_info(), "params": vars(args)}
    try:
        proxy = start_proxy(engine, provider=provider, workers=1, name="proxy-profile")
        try:
            run_wrk(proxy.url, [("GET", f"/{SMALL_INDEX}/_doc/1", b"", {})], connections=4, duration_s=2)
            results["passthrough_get_c32"] = profile_wrk(
                "passthrough_get_c32", proxy, [("GET", f"/{SMALL_INDEX}/_doc/{i}", b"", {}) for i in range(0, 1000, 7)],
                args.duration, args.rate)
            results["passthrough_bulk_c32"] = profile_wrk(
                "passthrough_bulk_c32", proxy,
                [("POST", "/_bulk", bulk_body(1000), {"Content-Type": "application/x-ndjson"})],
                args.duration, args.rate)
            results["cache_miss_c32"] = profile_miss(proxy, provider, args.duration, args.rate, args.miss_count)
            # cache hit: 50 searches warmed once, then cycled by wrk
            bodies = [json.dumps(search_body(q)).encode() for q in load_queries()[:50]]
            hit_requests = [("POST", f"/{CRANFIELD_INDEX}/_search", b, {"Content-Type": "application/json"})
                            for b in bodies]
            run_wrk(proxy.url, hit_requests, connections=1, duration_s=3)
            results["cache_hit_c32"] = profile_wrk("cache_hit_c32", proxy, hit_requests, args.duration, args.rate)
        finally:
            proxy.stop()
    finally:
        provider.stop()
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["settings_differ"] = started_proxies()
    save_json("profile.json", results)
    for name in ("passthrough_get_c32", "passthrough_bulk_c32", "cache_miss_c32", "cache_hit_c32"):
        r = results[name]
        log(f"{name}: proxy used {r['cpu_share_of_one_core']:.2f} of a core; top self: "
            + "; ".join(f"{n} {p}%" for n, _, p in r["top_self"][:6]))
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sampling per load")
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--miss-count", type=int, default=8000, help="most searches sent during the cache-miss profile")
    p.add_argument("--engine-port", type=int, default=9400)
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
