"""Before and after, side by side: the same loads against proxies built from several git revisions.

Each revision is checked out in a temporary `git worktree` and run from there (`python -m
rerank_proxy.cli serve`, with this checkout's environment and dependencies), all of them started
before the first load and loaded in turn, round after round, so a noisy spell hits every revision
alike; figures are medians over rounds. Loads:
- `get`: wrk cycling `GET /bench-small/_doc/{id}` at concurrency 32: requests/s, and the proxy's CPU
  per request (all its processes, user + system); `bypass`: the same for a search the proxy relays
  (`size: 0`);
- `miss`: bench/loadgen.py sending searches with distinct query texts (every one a cache miss) at
  concurrency 32 to the Cohere-protocol test server with its fixed delay: searches/s, the proxy's
  CPU per search, the client's total p50/p99, and the proxy's own time by the one clock every
  revision has: client total - engine (`Server-Timing: engine;dur`) - the test server's own time.

    .venv/bin/python -m bench.revisions --revs 30cadd1 HEAD [--workers 1 auto] [--loads get miss]
    .venv/bin/python -m bench.revisions --table relay    # the table of an earlier run, printed again

Results go to bench/results/revisions_NAME.json; the table printed at the end is the one on
docs/decisions/revisions.md (the page names the columns after the changes, not the commits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import (
    REPO,
    RESULTS,
    SMALL_INDEX,
    Service,
    engine_version,
    index_cranfield,
    index_small,
    load_queries,
    log,
    machine_info,
    median,
    run_wrk,
    save_json,
    start_counting_server,
    start_engine,
    start_proxy,
    started_proxies,
    summary,
)
from .report import machine_block, md_table, ms
from .search_latency import cache_miss_run, proxy_cpu


@contextlib.contextmanager
def worktrees(revs: list[str]) -> Iterator[dict[str, Path]]:
    """rev -> a detached checkout of it, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="rerank-revs-"))
    made: dict[str, Path] = {}
    try:
        for rev in revs:
            path = root / rev.replace("/", "_")
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
                           check=True, capture_output=True)
            made[rev] = path
        yield made
    finally:
        for path in made.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


WrkRequest = tuple[str, str, bytes, dict[str, str]]  # method, path, body, headers (as run_wrk takes them)

WRK_LOADS: dict[str, list[WrkRequest]] = {
    "get": [("GET", f"/{SMALL_INDEX}/_doc/{i}", b"", {}) for i in range(0, 1000, 7)],
    # a search the proxy does not rerank (size 0): read whole, decided, relayed
    "bypass": [("POST", f"/{SMALL_INDEX}/_search", b'{"size": 0, "query": {"match_all": {}}}',
                {"Content-Type": "application/json"})],
}


def wrk_load(proxy: Service, requests: list[WrkRequest], duration: float) -> dict[str, Any]:
    before = proxy_cpu(proxy)
    report = run_wrk(proxy.url, requests, connections=32, duration_s=duration)
    count = max(1, report["requests"])
    latency = report["latency_us"]["percentiles"]
    return {"rps": report["requests"] / (report["duration_us"] / 1e6),
            "cpu_us_per_request": (proxy_cpu(proxy) - before) * 1e6 / count,
            "p50_ms": latency["50"] / 1000, "p99_ms": latency["99"] / 1000}


def miss_load(proxy: Service, provider: Service, queries: list[str], count: int) -> dict[str, Any]:
    """The cache-miss run of bench.search_latency at concurrency 32, reduced to what every revision
    can be compared on (older ones do not time the provider themselves)."""
    rows, meta = cache_miss_run(proxy, provider, queries, 32, count, warmup=64)
    return {"searches_per_s": count / meta["elapsed_s"], "cpu_ms_per_search": meta["proxy_cpu_s"] * 1000 / count,
            "measured": len(rows), "total": summary([r["total"] for r in rows]),
            "own_by_test_server_clock": summary([r["added_provider_own_clock"] for r in rows])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = start_engine(port=args.engine_port)
    index_small(engine)
    index_cranfield(engine)
    queries = load_queries()
    provider = start_counting_server(args.provider_delay_ms)
    results: dict[str, Any] = {"machine": machine_info(), "engine": f"elasticsearch {engine_version(engine)}",
                               "params": vars(args), "cells": {}}
    proxies: dict[tuple[str, str], Service] = {}
    try:
        with worktrees(args.revs) as trees:
            commits = {rev: subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"], check=True,
                                           capture_output=True, text=True).stdout.strip()
                       for rev, path in trees.items()}
            results["commits"] = commits
            for rev, path in trees.items():
                for workers in args.workers:
                    proxies[rev, workers] = start_proxy(engine, provider=provider, checkout=path,
                                                        workers=int(workers) if workers.isdigit() else workers,
                                                        name=f"proxy-{rev}-{workers}")
            for round_no in range(1, args.rounds + 1):
                for (rev, workers), proxy in proxies.items():
                    for load in args.loads:
                        cell = f"{load}/{workers}/{rev}"
                        res = (wrk_load(proxy, WRK_LOADS[load], args.duration) if load in WRK_LOADS
                               else miss_load(proxy, provider, queries, args.miss_count))
                        results["cells"].setdefault(cell, []).append(res)
                        said = (f"{res['rps']:.0f} req/s, {res['cpu_us_per_request']:.1f} us CPU/request"
                                if load in WRK_LOADS else
                                f"{res['searches_per_s']:.0f}/s, {res['cpu_ms_per_search']:.2f} ms CPU/search, "
                                f"own p50 {res['own_by_test_server_clock']['p50']:.2f} ms")
                        log(f"round {round_no}/{args.rounds} {cell}: {said}")
    finally:
        for proxy in proxies.values():
            proxy.stop()
        provider.stop()
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["settings_differ"] = started_proxies()
    results["medians"] = {cell: _medians(runs) for cell, runs in results["cells"].items()}
    save_json(f"revisions_{args.name}.json", results)
    return results


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    flat: dict[str, list[float]] = {}
    for res in runs:
        for key, value in res.items():
            if isinstance(value, dict):
                for inner, number in value.items():
                    flat.setdefault(f"{key}_{inner}", []).append(number)
            else:
                flat.setdefault(key, []).append(value)
    return {key: median(values) for key, values in flat.items()}


def table(d: dict[str, Any]) -> str:
    """The run as markdown for its docs/decisions/ page: one row per load and worker count, one column
    per revision (oldest first), then the revisions' subjects."""
    revs = list(d["commits"])
    labels = {rev: f"`{d['commits'][rev].split()[0]}`" for rev in revs}
    medians = d["medians"]
    rows = []
    for load, workers in dict.fromkeys((cell.split("/")[0], cell.split("/")[1]) for cell in medians):
        wrk = load != "miss"
        for figure, key, digits in (
                ("req/s", "rps", 0), ("proxy CPU µs / request", "cpu_us_per_request", 1),
                ("searches/s", "searches_per_s", 0), ("proxy CPU ms / search", "cpu_ms_per_search", 2),
                ("own time p50 ms (test server's clock)", "own_by_test_server_clock_p50", 2),
                ("own time p99 ms (test server's clock)", "own_by_test_server_clock_p99", 2)):
            values = [medians.get(f"{load}/{workers}/{rev}", {}).get(key) for rev in revs]
            if all(v is None for v in values) or wrk != (key in ("rps", "cpu_us_per_request")):
                continue
            first, last = values[0], values[-1]
            change = f"{last / first:.2f}x" if first and last is not None else ""
            rows.append([load, workers, figure, *(ms(v, digits) for v in values), change])
    table = md_table(["load", "workers", "figure", *(labels[r] for r in revs), "last / first"], rows)
    commits = "\n".join(f"- {labels[rev]}: {d['commits'][rev].split(' ', 1)[1].split(';')[0][:160]}" for rev in revs)
    p = d["params"]
    return (f"{machine_block(d['machine'])} Engine: {d['engine']}. {p['rounds']} rounds, the revisions interleaved "
            f"in each; medians over rounds. `get` (a document by id) and `bypass` (a search relayed, `size: 0`): "
            f"wrk, concurrency 32, {p['duration']:.0f} s per run; `miss`: "
            f"{p['miss_count']} searches with distinct queries at concurrency 32, provider fixed "
            f"{p['provider_delay_ms']:.0f} ms. Workers: `1`, and `auto` (the shipped default: "
            f"2 here). Settings otherwise the shipped defaults.\n\n{table}\n\nRevisions, oldest first:\n{commits}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--revs", nargs="+", help="git revisions, oldest first")
    p.add_argument("--workers", nargs="+", default=["1", "auto"])
    p.add_argument("--loads", nargs="+", default=["get", "miss"], choices=["get", "bypass", "miss"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run (get)")
    p.add_argument("--miss-count", type=int, default=1000, help="searches per miss run")
    p.add_argument("--provider-delay-ms", type=float, default=50.0)
    p.add_argument("--name", default="latest", help="results go to bench/results/revisions_NAME.json")
    p.add_argument("--engine-port", type=int, default=9400)
    p.add_argument("--table", metavar="NAME",
                   help="run nothing: print the table of bench/results/revisions_NAME.json")
    return p


def main() -> None:
    p = parser()
    args = p.parse_args()
    if args.table:
        print(table(json.loads((RESULTS / f"revisions_{args.table}.json").read_text())))
        return
    if not args.revs:
        p.error("--revs is required (or --table NAME)")
    print(table(run(args)))


if __name__ == "__main__":
    main()
