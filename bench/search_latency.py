"""Reranked-search latency: cache hit vs the engine alone, and the proxy's own time on a cache miss.

Cache hit: 50 Cranfield queries are searched once through the proxy (scores cached), then wrk (a
separate process) cycles through them at concurrency 1 and 32, through the proxy (first page,
size 10) and straight to the engine with size 100 (the window the proxy fetches), interleaved,
in rounds, with the shipped defaults (WORKERS=auto). The Cohere-protocol test server's request count
must not move while wrk runs: every timed proxy search was a cache hit.

Cache miss: every search has a distinct query text (a Cranfield query plus a serial number), so
every one is a miss; the provider is the Cohere-protocol test server (bench/count_server.py) with a
fixed 50 ms delay, which measures its own time per request. The load is bench/loadgen.py in its own
process. Per search: proxy's own time = client-measured total - engine time (Server-Timing
`engine;dur`, measured by the proxy around its engine call) - the provider's own time. Set-ups: the
shipped defaults (WORKERS=auto, RERANK_MAX_CONCURRENCY=64), 1 worker, and 1 worker with the earlier
default of 16 provider calls.

    .venv/bin/python -m bench.search_latency [--duration 8] [--rounds 3] [--miss-count 1500]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
from typing import Any

import httpx

from .common import (
    CRANFIELD_INDEX,
    Service,
    counting_stats,
    cpu_seconds,
    engine_version,
    index_cranfield,
    load_queries,
    loadavg,
    log,
    machine_info,
    median,
    run_loadgen,
    run_wrk,
    save_json,
    search_body,
    start_counting_server,
    start_engine,
    start_proxy,
    summary,
)

PCTS = [str(p) for p in range(1, 100)] + ["99.5", "99.9", "99.99"]
_TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
_serial = itertools.count(1)


def proxy_cpu(proxy: Service) -> float:
    """CPU seconds used so far by the proxy's processes (supervisor and workers)."""
    return sum(cpu_seconds(p) for p in {proxy.pid, *proxy.child_pids()})


def slot_wait_seconds(proxy: Service) -> float | None:
    """The proxy's `rerank_proxy_provider_slot_wait_seconds_total` (a scrape merges every worker's)."""
    text = httpx.get(proxy.url + "/_rerank/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rerank_proxy_provider_slot_wait_seconds_total "):
            return float(line.split()[1])
    return 0.0


def server_timing(value: str) -> dict[str, float]:
    return {k: float(v) for k, v in _TIMING.findall(value or "")}


# --- cache hit -----------------------------------------------------------------------------------

def cache_hit(engine: str, proxy: Service, provider: Service, queries: list[str], duration: float,
              rounds: int) -> dict[str, Any]:
    bodies = [search_body(q) for q in queries]
    direct = [dict(b, size=100) for b in bodies]
    path = f"/{CRANFIELD_INDEX}/_search"
    headers = {"Content-Type": "application/json"}
    warm = [{"method": "POST", "url": proxy.url + path, "body": json.dumps(b), "headers": headers} for b in bodies]
    run_loadgen({"mode": "list", "concurrency": 1, "requests": warm})
    check = run_loadgen({"mode": "list", "concurrency": 1, "requests": warm, "capture_headers": ["x-rerank"]})
    cached = sum(1 for r in check["records"] if r[5].get("x-rerank") == "cached")
    log(f"cache hit: {cached}/{len(bodies)} warm searches answered from the cache")
    calls_before = counting_stats(provider)["requests"]
    targets = {"engine_size100": (engine, [("POST", path, json.dumps(b).encode(), headers) for b in direct]),
               "proxy_hit": (proxy.url, [("POST", path, json.dumps(b).encode(), headers) for b in bodies])}
    for url, reqs in targets.values():
        run_wrk(url, reqs, connections=4, duration_s=2)
    cells: dict[str, Any] = {}
    for r in range(rounds):
        for conc in (1, 32):
            for name, (url, reqs) in targets.items():
                cpu_before = proxy_cpu(proxy)
                rep = run_wrk(url, reqs, connections=conc, duration_s=duration)
                cpu_used = proxy_cpu(proxy) - cpu_before
                lat = rep["latency_us"]["percentiles"]
                rps = rep["requests"] / (rep["duration_us"] / 1e6)
                cells.setdefault(f"c{conc}/{name}", {"runs": []})["runs"].append(
                    {"p50_ms": lat["50"] / 1000, "p99_ms": lat["99"] / 1000, "rps": rps, "requests": rep["requests"],
                     "errors": rep["errors"],
                     "proxy_cpu_ms_per_request": (cpu_used * 1000 / rep["requests"]
                                                  if name == "proxy_hit" and rep["requests"] else None),
                     "percentiles_ms": {p: lat[p] / 1000 for p in PCTS},
                     "loadavg": loadavg()})
                log(f"round {r + 1}/{rounds} cache hit c{conc}/{name}: p50 {lat['50'] / 1000:.2f} ms, "
                    f"p99 {lat['99'] / 1000:.2f} ms, {rps:.0f} req/s")
    calls_during = counting_stats(provider)["requests"] - calls_before
    for cell in cells.values():
        runs = cell["runs"]
        cell.update(p50_ms=median(x["p50_ms"] for x in runs), p99_ms=median(x["p99_ms"] for x in runs),
                    rps=median(x["rps"] for x in runs), errors=sum(sum(x["errors"].values()) for x in runs),
                    percentiles_ms={p: median(x["percentiles_ms"][p] for x in runs) for p in PCTS})
        cpu = [x["proxy_cpu_ms_per_request"] for x in runs if x.get("proxy_cpu_ms_per_request") is not None]
        cell["proxy_cpu_ms_per_request"] = median(cpu) if cpu else None
    ratios = {}
    for conc in (1, 32):
        p, d = cells[f"c{conc}/proxy_hit"], cells[f"c{conc}/engine_size100"]
        ratios[f"c{conc}"] = {"p50": p["p50_ms"] / d["p50_ms"], "p99": p["p99_ms"] / d["p99_ms"],
                              "rps": p["rps"] / d["rps"]}
    return {"queries": len(bodies), "workers": proxy.extra.get("workers", 1), "warm_cached": cached,
            "provider_calls_during_timed_runs": calls_during,
            "cells": cells, "ratios": ratios,
            "target": {"check": "c=1 cache-hit p50 <= 1.3x engine size-100 p50", "value": ratios["c1"]["p50"],
                       "met": ratios["c1"]["p50"] <= 1.3}}


# --- cache miss ----------------------------------------------------------------------------------

def cache_miss_run(proxy: Service, provider: Service, queries: list[str], concurrency: int, count: int,
                   warmup: int) -> dict[str, Any]:
    path = f"/{CRANFIELD_INDEX}/_search"

    def requests(n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            serial = next(_serial)
            q = f"{queries[serial % len(queries)]} {serial}"
            out.append({"method": "POST", "url": proxy.url + path, "body": json.dumps(search_body(q)),
                        "headers": {"content-type": "application/json"}, "tag": " ".join(q.split())})
        return out

    run_loadgen({"mode": "list", "concurrency": concurrency, "requests": requests(warmup)})
    counting_stats(provider, reset=True)
    cpu_before = proxy_cpu(proxy)
    waited_before = slot_wait_seconds(proxy)
    out = run_loadgen({"mode": "list", "concurrency": concurrency, "requests": requests(count),
                       "capture_headers": ["server-timing", "x-rerank", "x-rerank-cache"], "progress_s": 5})
    cpu_ms_per_search = (proxy_cpu(proxy) - cpu_before) * 1000 / count
    waited_after = slot_wait_seconds(proxy)
    slot_wait_ms = (None if waited_before is None or waited_after is None
                    else (waited_after - waited_before) * 1000 / count)
    provider_ms = {row[0]: row[2] for row in counting_stats(provider, records=True)["records"]}
    rows = []
    outcomes: dict[str, int] = {}
    for rec in out["records"]:
        _, query, _, total, status, hdrs = rec
        key = f"{hdrs.get('x-rerank', '')}/{hdrs.get('x-rerank-cache', '')}/{status}"
        outcomes[key] = outcomes.get(key, 0) + 1
        timing = server_timing(hdrs.get("server-timing", ""))
        if status != 200 or hdrs.get("x-rerank-cache") != "miss" or query not in provider_ms:
            continue
        engine_ms, rerank_ms, prov = timing.get("engine", 0.0), timing.get("rerank", 0.0), provider_ms[query]
        rows.append({"total": total, "engine": engine_ms, "rerank": rerank_ms, "provider": prov,
                     "added": total - engine_ms - prov, "rerank_minus_provider": rerank_ms - prov,
                     "outside_engine_and_rerank": total - engine_ms - rerank_ms})
    result = {"concurrency": concurrency, "workers": proxy.extra.get("workers", 1), "requests": count,
              "measured_misses": len(rows), "outcomes": outcomes,
              "elapsed_s": out["elapsed_s"], "throughput_rps": count / out["elapsed_s"], "loadavg": loadavg(),
              "proxy_cpu_ms_per_search": cpu_ms_per_search, "slot_wait_ms_per_search": slot_wait_ms,
              "proxy_cpu_share": cpu_ms_per_search * count / 1000 / out["elapsed_s"]}
    for field in ("total", "engine", "rerank", "provider", "added", "rerank_minus_provider",
                  "outside_engine_and_rerank"):
        result[field] = summary([r[field] for r in rows])
    result["added_distribution"] = sorted(round(r["added"], 3) for r in rows)
    return result


def cache_miss(engine: str, provider: Service, queries: list[str], setups: list[tuple[str, int | str, dict[str, Any]]],
               count_c1: int, count_c32: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, workers, settings in setups:
        proxy = start_proxy(engine, provider=provider, workers=workers, name=f"proxy-miss-{name}", **settings)
        try:
            for conc, count in ((1, count_c1), (32, count_c32)):
                res = cache_miss_run(proxy, provider, queries, conc, count, warmup=max(20, conc * 2))
                out[f"{name}/c{conc}"] = res
                log(f"cache miss {name} c={conc}: proxy's own time p50 {res['added']['p50']:.2f} ms, "
                    f"p99 {res['added']['p99']:.2f} ms (total p50 {res['total']['p50']:.1f} ms, engine p50 "
                    f"{res['engine']['p50']:.1f}, provider p50 {res['provider']['p50']:.1f}; "
                    f"{res['measured_misses']}/{count} misses; {res['throughput_rps']:.0f}/s)")
        finally:
            proxy.stop()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = start_engine(port=args.engine_port)
    index_cranfield(engine)
    queries = load_queries()
    results: dict[str, Any] = {"machine": machine_info(), "engine": f"elasticsearch {engine_version(engine)}",
                               "params": vars(args)}
    provider = start_counting_server(args.provider_delay_ms)
    try:
        if "hit" in args.parts:
            proxy = start_proxy(engine, provider=provider, workers="auto", name="proxy-hit")
            try:
                results["cache_hit"] = cache_hit(engine, proxy, provider, queries[:args.hit_queries],
                                                 args.duration, args.rounds)
            finally:
                proxy.stop()
        if "miss" in args.parts:
            setups: list[tuple[str, int | str, dict[str, Any]]] = [
                ("default", "auto", {}), ("1w", 1, {}), ("1w_conc16", 1, {"RERANK_MAX_CONCURRENCY": 16})]
            results["cache_miss"] = cache_miss(engine, provider, queries, setups, args.miss_count_c1, args.miss_count)
            checks = []
            for name, _, _ in setups:
                res = results["cache_miss"][f"{name}/c32"]["added"]
                checks.append({"check": f"cache miss c=32 {name}: proxy's own time p50 <= 5 ms and p99 <= 15 ms",
                               "p50": res["p50"], "p99": res["p99"], "met": res["p50"] <= 5 and res["p99"] <= 15})
            results["cache_miss_checks"] = checks
    finally:
        provider.stop()
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    save_json("search_latency.json", results)
    if "cache_hit" in results:
        t = results["cache_hit"]["target"]
        log(f"{'MET' if t['met'] else 'NOT MET'}: {t['check']} ({t['value']:.2f}x)")
    for c in results.get("cache_miss_checks", []):
        log(f"{'MET' if c['met'] else 'NOT MET'}: {c['check']} (p50 {c['p50']:.2f}, p99 {c['p99']:.2f})")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["hit", "miss"], choices=["hit", "miss"])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (cache hit)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hit-queries", type=int, default=50)
    p.add_argument("--miss-count", type=int, default=1500, help="searches at concurrency 32 per set-up")
    p.add_argument("--miss-count-c1", type=int, default=200, help="searches at concurrency 1 per set-up")
    p.add_argument("--provider-delay-ms", type=float, default=50.0)
    p.add_argument("--engine-port", type=int, default=9400)
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
