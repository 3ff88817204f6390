"""Reranked-search latency: cache hit vs the engine alone, and the proxy's own time on a cache miss.

Cache hit: 50 Cranfield queries are searched once through the proxy (scores cached), then wrk (a
separate process) cycles through them at concurrency 1 and 32, through the proxy (first page,
size 10) and straight to the engine with size 100 (the window the proxy fetches), interleaved,
in rounds, with the shipped defaults (WORKERS=auto), and beside them a proxy with the finished-answer
memo off (CACHE_ANSWERS_MAX_MB=0), which builds each answer again from the cached scores. The
Cohere-protocol test server's request count must not move while wrk runs: every timed proxy search
was a cache hit.

Cache miss: every search has a distinct query text (a Cranfield query plus a serial number), so
every one is a miss; the provider is the Cohere-protocol test server (bench/count_server.py) with a
fixed 50 ms delay, which measures its own time per request. The load is bench/loadgen.py in its own
process. Per search: proxy's own time = client-measured total - engine time (Server-Timing
`engine;dur`, measured by the proxy around its engine call) - provider time (`provider;dur`, measured
by the proxy around its HTTP exchanges with the provider, as the engine's is). The figure with the
test server's own clock instead (`added_provider_own_clock`, from the moment its application is called
until its reply is handed over) is kept beside it: it also charges the proxy with the test server's
HTTP parsing and its queue, which a provider's answer time includes. Set-ups: the
shipped defaults (WORKERS=auto, RERANK_MAX_CONCURRENCY=64), 1 worker, 1 worker with the earlier
default of 16 provider calls, and the shipped defaults with the engine on a core of its own
(`default_engine_own_core`: the engine's threads pinned to CPU 0, the proxy, the test server and
the load generator to CPU 1, so WORKERS=auto starts one worker), and the shipped defaults with the
proxy on a core of its own (`default_proxy_own_core`: the proxy on CPU 1; the engine, the test server
and the load generator on CPU 0), as on a 1-CPU pod beside an engine on its own nodes. On two shared
cores the closed loop of 32 keeps every core busy and the latency lands in whichever process waits
for one; so the set-ups are interleaved in rounds (`--miss-rounds`, each set-up's rounds pooled).
Two figures of the proxy's own time are reported: seen by the client (its total, which
also holds the load generator's and the kernel's queueing) and inside the proxy (`total;dur`, from
the request head to the answer).

    .venv/bin/python -m bench.search_latency [--duration 8] [--rounds 3] [--miss-count 1500]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import resource
from collections.abc import Iterator
from typing import Any

import httpx

from .common import (
    CRANFIELD_INDEX,
    DEFAULT_ENGINE_PORT,
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
    named,
    run_loadgen,
    run_wrk,
    save_json,
    search_body,
    start_counting_server,
    start_engine,
    start_proxy,
    started_proxies,
    summary,
)

PCTS = [str(p) for p in range(1, 100)] + ["99.5", "99.9", "99.99"]
_TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
_serial = itertools.count(1)


def proxy_cpu(proxy: Service) -> float:
    """CPU seconds used so far by the proxy's processes (supervisor and workers)."""
    return sum(cpu_seconds(p) for p in {proxy.pid, *proxy.child_pids()})


def other_cpu(provider: Service) -> dict[str, float]:
    """CPU seconds used so far by the rest of a cache-miss run: the engine (every node process),
    the test server, and the load generators this process has waited for."""
    from rerank_proxy.local_engines.runner import ensure_engine

    engine = ensure_engine("elasticsearch", port=DEFAULT_ENGINE_PORT)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"engine": sum(cpu_seconds(p) for pid in engine.pids if pid for p in _process_tree(pid)),
            "test_server": cpu_seconds(provider.pid),
            "load_generator": children.ru_utime + children.ru_stime}


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

# The shipped defaults, and the same with the finished-answer memo off: every score is still cached,
# but the engine's 100 hits are parsed, looked up and merged again (a search that repeats no earlier
# request exactly, e.g. a new filter over scored documents, takes that path).
HIT_SETTINGS: dict[str, dict[str, Any]] = {"proxy_hit": {}, "proxy_hit_no_memo": named(CACHE_ANSWERS_MAX_MB=0)}
VARIANTS = {"proxy_hit_no_memo": " (CACHE_ANSWERS_MAX_MB=0: scores cached, answer built again)"}

def warm_hits(proxies: dict[str, Service], bodies: list[dict[str, Any]], path: str,
              headers: dict[str, str]) -> dict[str, int]:
    """Each search once through each proxy (scores cached), then again: how many answered `cached`."""
    cached = {}
    for name, proxy in proxies.items():
        warm = [{"method": "POST", "url": proxy.url + path, "body": json.dumps(b), "headers": headers}
                for b in bodies]
        run_loadgen({"mode": "list", "concurrency": 1, "requests": warm})
        check = run_loadgen({"mode": "list", "concurrency": 1, "requests": warm, "capture_headers": ["x-rerank"]})
        cached[name] = sum(1 for r in check["records"] if r[5].get("x-rerank") == "cached")
        log(f"cache hit {name}: {cached[name]}/{len(bodies)} warm searches answered from the cache")
    return cached


def hit_run(url: str, proxy: Service | None, reqs: list[Any], conc: int, duration: float) -> dict[str, Any]:
    """One wrk run against one target, with the proxy's CPU over it (None for the engine)."""
    cpu_before = proxy_cpu(proxy) if proxy is not None else 0.0
    rep = run_wrk(url, reqs, connections=conc, duration_s=duration)
    cpu_used = proxy_cpu(proxy) - cpu_before if proxy is not None else 0.0
    lat = rep["latency_us"]["percentiles"]
    rps = rep["requests"] / (rep["duration_us"] / 1e6)
    return {"p50_ms": lat["50"] / 1000, "p99_ms": lat["99"] / 1000, "rps": rps, "requests": rep["requests"],
            "errors": rep["errors"],
            "proxy_cpu_ms_per_request": (cpu_used * 1000 / rep["requests"]
                                         if proxy is not None and rep["requests"] else None),
            "percentiles_ms": {p: lat[p] / 1000 for p in PCTS},
            "loadavg": loadavg()}


def pool_hit_rounds(cells: dict[str, Any]) -> None:
    """Each cell's figures: medians over its rounds (errors summed)."""
    for cell in cells.values():
        runs = cell["runs"]
        cell.update(p50_ms=median(x["p50_ms"] for x in runs), p99_ms=median(x["p99_ms"] for x in runs),
                    rps=median(x["rps"] for x in runs), errors=sum(sum(x["errors"].values()) for x in runs),
                    percentiles_ms={p: median(x["percentiles_ms"][p] for x in runs) for p in PCTS})
        cpu = [x["proxy_cpu_ms_per_request"] for x in runs if x.get("proxy_cpu_ms_per_request") is not None]
        cell["proxy_cpu_ms_per_request"] = median(cpu) if cpu else None


def hit_ratios(cells: dict[str, Any], proxies: dict[str, Service]) -> dict[str, Any]:
    """proxy -> concurrency -> proxy's figure / the engine's size-100 figure."""
    ratios: dict[str, Any] = {}
    for name in proxies:
        for conc in (1, 32):
            p, d = cells[f"c{conc}/{name}"], cells[f"c{conc}/engine_size100"]
            ratios.setdefault(name, {})[f"c{conc}"] = {"p50": p["p50_ms"] / d["p50_ms"],
                                                       "p99": p["p99_ms"] / d["p99_ms"], "rps": p["rps"] / d["rps"]}
    return ratios


def cache_hit(engine: str, proxies: dict[str, Service], provider: Service, queries: list[str], duration: float,
              rounds: int) -> dict[str, Any]:
    """`proxies`: cell name -> proxy; `proxy_hit` is the shipped defaults, the others variants of it."""
    bodies = [search_body(q) for q in queries]
    direct = [dict(b, size=100) for b in bodies]
    path = f"/{CRANFIELD_INDEX}/_search"
    headers = {"Content-Type": "application/json"}
    cached = warm_hits(proxies, bodies, path, headers)
    calls_before = counting_stats(provider)["requests"]
    targets: dict[str, tuple[str, Service | None, list[Any]]] = {
        "engine_size100": (engine, None, [("POST", path, json.dumps(b).encode(), headers) for b in direct])}
    for name, proxy in proxies.items():
        targets[name] = (proxy.url, proxy, [("POST", path, json.dumps(b).encode(), headers) for b in bodies])
    for url, _, reqs in targets.values():
        run_wrk(url, reqs, connections=4, duration_s=2)
    cells: dict[str, Any] = {}
    for r in range(rounds):
        for conc in (1, 32):
            for name, (url, measured, reqs) in targets.items():
                run = hit_run(url, measured, reqs, conc, duration)
                cells.setdefault(f"c{conc}/{name}", {"runs": []})["runs"].append(run)
                log(f"round {r + 1}/{rounds} cache hit c{conc}/{name}: p50 {run['p50_ms']:.2f} ms, "
                    f"p99 {run['p99_ms']:.2f} ms, {run['rps']:.0f} req/s")
    calls_during = counting_stats(provider)["requests"] - calls_before
    pool_hit_rounds(cells)
    ratios = hit_ratios(cells, proxies)
    targets_out = []
    for name in proxies:
        value = ratios[name]["c1"]["p50"]
        label = VARIANTS.get(name, "")
        targets_out.append({"check": f"c=1 cache-hit p50 <= 1.3x engine size-100 p50{label}", "value": value,
                            "met": value <= 1.3, "proxy": name, "settings": dict(HIT_SETTINGS.get(name, {}))})
    first = next(iter(proxies.values()))
    return {"queries": len(bodies), "workers": first.extra.get("workers", 1), "warm_cached": cached,
            "provider_calls_during_timed_runs": calls_during, "proxies": list(proxies),
            "cells": cells, "ratios": ratios, "target": targets_out[0], "targets": targets_out}


# --- cache miss ----------------------------------------------------------------------------------

def cache_miss_run(proxy: Service, provider: Service, queries: list[str], concurrency: int, count: int,
                   warmup: int) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """One timed run: a row of timings per measured miss, and what the run used."""
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
    others_before = other_cpu(provider)
    waited_before = slot_wait_seconds(proxy)
    out = run_loadgen({"mode": "list", "concurrency": concurrency, "requests": requests(count),
                       "capture_headers": ["server-timing", "x-rerank", "x-rerank-cache"], "progress_s": 5})
    proxy_cpu_s = proxy_cpu(proxy) - cpu_before
    others_s = {name: used - others_before[name] for name, used in other_cpu(provider).items()}
    waited_after = slot_wait_seconds(proxy)
    slot_wait_s = None if waited_before is None or waited_after is None else waited_after - waited_before
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
        engine_ms, rerank_ms, own_clock = timing.get("engine", 0.0), timing.get("rerank", 0.0), provider_ms[query]
        waited = timing.get("provider", own_clock)
        rows.append({"total": total, "engine": engine_ms, "rerank": rerank_ms, "provider": waited,
                     "provider_own_clock": own_clock, "added": total - engine_ms - waited,
                     "added_provider_own_clock": total - engine_ms - own_clock,
                     "rerank_minus_provider": rerank_ms - waited,
                     "outside_engine_and_rerank": total - engine_ms - rerank_ms,
                     "added_in_proxy": timing.get("total", total) - engine_ms - waited,
                     "outside_proxy": total - timing.get("total", total)})
    return rows, {"requests": count, "elapsed_s": out["elapsed_s"], "proxy_cpu_s": proxy_cpu_s, "other_cpu_s": others_s,
                  "slot_wait_s": slot_wait_s, "outcomes": outcomes, "loadavg": loadavg(),
                  "workers": proxy.extra.get("workers", 1)}


def miss_result(concurrency: int, runs: list[tuple[list[dict[str, float]], dict[str, Any]]]) -> dict[str, Any]:
    """The runs of one set-up and concurrency (one per round), pooled: percentiles over every miss
    measured, CPU per search over every search sent."""
    rows = [row for part, _ in runs for row in part]
    metas = [meta for _, meta in runs]
    count = sum(m["requests"] for m in metas)
    elapsed = sum(m["elapsed_s"] for m in metas)
    cpu_s = sum(m["proxy_cpu_s"] for m in metas)
    outcomes: dict[str, int] = {}
    for meta in metas:
        for key, n in meta["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + n
    waits = [m["slot_wait_s"] for m in metas]
    result = {"concurrency": concurrency, "workers": metas[0]["workers"], "rounds": len(runs), "requests": count,
              "measured_misses": len(rows), "outcomes": outcomes, "elapsed_s": elapsed,
              "throughput_rps": count / elapsed, "loadavg": metas[-1]["loadavg"],
              "proxy_cpu_ms_per_search": cpu_s * 1000 / count,
              "slot_wait_ms_per_search": None if None in waits else sum(waits) * 1000 / count,
              "other_cpu_ms_per_search": {name: sum(m["other_cpu_s"][name] for m in metas) * 1000 / count
                                          for name in metas[0]["other_cpu_s"]},
              "proxy_cpu_share": cpu_s / elapsed}
    for field in ("total", "engine", "rerank", "provider", "provider_own_clock", "added", "added_provider_own_clock",
                  "rerank_minus_provider", "outside_engine_and_rerank", "added_in_proxy", "outside_proxy"):
        result[field] = summary([r[field] for r in rows])
    result["added_distribution"] = sorted(round(r["added"], 3) for r in rows)
    return result


# Set-ups whose engine runs on a core of its own (as on its own node), the rest of the run on the other;
# and set-ups whose proxy does (as on a 1-CPU pod of its own), the engine, test server and load on the other.
OWN_CORE = "engine_own_core"
PROXY_OWN_CORE = "proxy_own_core"


def _process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in threads:  # a child belongs to the thread that started it
            with contextlib.suppress(OSError), open(f"/proc/{current}/task/{tid}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
    return out


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` and of its descendants on `cpus` (threads started later inherit it)."""
    for process in _process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{process}/task")
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def placed(provider: Service, *, engine_cpu: int, rest_cpu: int) -> Iterator[None]:
    """The engine's threads on `engine_cpu`; the test server and this process (so the load generator
    and the proxy it starts) on `rest_cpu`. WORKERS=auto then counts one usable CPU, as on a 1-CPU pod.
    Everything is free to run anywhere again afterwards."""
    from rerank_proxy.local_engines.runner import ensure_engine

    everything = set(range(os.cpu_count() or 1))
    if len(everything) < 2:
        raise SystemExit("a set-up with its own core needs 2 CPUs")
    engine_pids = [p for p in ensure_engine("elasticsearch", port=DEFAULT_ENGINE_PORT).pids if p]
    for pid in engine_pids:
        _pin(pid, {engine_cpu})
    _pin(provider.pid, {rest_cpu})
    os.sched_setaffinity(0, {rest_cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)
        _pin(provider.pid, everything)
        for pid in engine_pids:
            _pin(pid, everything)


def _placement(name: str, provider: Service) -> contextlib.AbstractContextManager[None]:
    if name.endswith(OWN_CORE):  # the engine alone on CPU 0
        return placed(provider, engine_cpu=0, rest_cpu=1)
    if name.endswith(PROXY_OWN_CORE):  # all on CPU 0, until `_cache_miss_setup` moves the proxy to CPU 1
        return placed(provider, engine_cpu=0, rest_cpu=0)
    return contextlib.nullcontext()


PLACEMENTS = {OWN_CORE: "engine on CPU 0; proxy, provider and load generator on CPU 1",
              PROXY_OWN_CORE: "proxy on CPU 1; engine, provider and load generator on CPU 0"}


def cache_miss(engine: str, provider: Service, queries: list[str], setups: list[tuple[str, int | str, dict[str, Any]]],
               count_c1: int, count_c32: int, rounds: int) -> dict[str, Any]:
    """Every set-up once per round, the set-ups interleaved, so a slow spell of the machine (or an
    engine that has not warmed up yet) hits them alike; each set-up's rounds are pooled."""
    runs: dict[str, list[tuple[list[dict[str, float]], dict[str, Any]]]] = {}
    for round_no in range(1, rounds + 1):
        for name, workers, settings in setups:
            with _placement(name, provider):
                for key, run in _cache_miss_setup(engine, provider, queries, name, workers, settings,
                                                  count_c1, count_c32).items():
                    runs.setdefault(key, []).append(run)
                    _say(f"round {round_no}/{rounds} ", key, miss_result(int(key.rsplit("/c", 1)[1]), [run]))
    out: dict[str, Any] = {}
    for key, parts in runs.items():
        res = out[key] = miss_result(int(key.rsplit("/c", 1)[1]), parts)
        res["placement"] = next((text for suffix, text in PLACEMENTS.items() if key.split("/")[0].endswith(suffix)),
                                "no pinning")
        _say(f"{rounds} rounds pooled, ", key, res)
    return out


def _say(prefix: str, key: str, res: dict[str, Any]) -> None:
    log(f"{prefix}cache miss {key}: proxy's own time p50 {res['added']['p50']:.2f} ms, "
        f"p99 {res['added']['p99']:.2f} ms seen by the client, p50 {res['added_in_proxy']['p50']:.2f} ms, "
        f"p99 {res['added_in_proxy']['p99']:.2f} ms inside the proxy "
        f"(total p50 {res['total']['p50']:.1f} ms, engine p50 {res['engine']['p50']:.1f}, provider p50 "
        f"{res['provider']['p50']:.1f}; {res['measured_misses']}/{res['requests']} misses; "
        f"{res['throughput_rps']:.0f}/s; {res['workers']} worker(s))")


def _cache_miss_setup(engine: str, provider: Service, queries: list[str], name: str, workers: int | str,
                      settings: dict[str, Any], count_c1: int,
                      count_c32: int) -> dict[str, tuple[list[dict[str, float]], dict[str, Any]]]:
    out = {}
    proxy = start_proxy(engine, provider=provider, workers=workers, name=f"proxy-miss-{name}", **settings)
    if name.endswith(PROXY_OWN_CORE):
        _pin(proxy.pid, {1})
    try:
        for conc, count in ((1, count_c1), (32, count_c32)):
            # warm-up: the proxy's first searches, and an engine that may have idled since the last set-up
            out[f"{name}/c{conc}"] = cache_miss_run(proxy, provider, queries, conc, count, warmup=max(20, conc * 8))
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
            proxies = {}
            try:
                for name, settings in HIT_SETTINGS.items():
                    proxies[name] = start_proxy(engine, provider=provider, workers="auto", name=name, **settings)
                results["cache_hit"] = cache_hit(engine, proxies, provider, queries[:args.hit_queries],
                                                 args.duration, args.rounds)
            finally:
                for proxy in proxies.values():
                    proxy.stop()
        if "miss" in args.parts:
            setups: list[tuple[str, int | str, dict[str, Any]]] = [
                ("default", "auto", {}), ("1w", 1, {}), ("1w_conc16", 1, named(RERANK_MAX_CONCURRENCY=16)),
                (f"default_{OWN_CORE}", "auto", {}), (f"default_{PROXY_OWN_CORE}", "auto", {})]
            results["cache_miss"] = cache_miss(engine, provider, queries, setups, args.miss_count_c1, args.miss_count,
                                               args.miss_rounds)
            checks = []
            for name, _, _ in setups:
                for field, seen in (("added", "seen by the client: client's total"),
                                    ("added_in_proxy", "inside the proxy: its total;dur")):
                    res = results["cache_miss"][f"{name}/c32"][field]
                    checks.append({"check": f"cache miss c=32 {name}: proxy's own time ({seen} - engine - provider) "
                                            "p50 <= 5 ms and p99 <= 15 ms",
                                   "p50": res["p50"], "p99": res["p99"], "met": res["p50"] <= 5 and res["p99"] <= 15})
            results["cache_miss_checks"] = checks
    finally:
        provider.stop()
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["settings_differ"] = started_proxies()
    save_json("search_latency.json", results)
    if "cache_hit" in results:
        for t in results["cache_hit"]["targets"]:
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
    p.add_argument("--miss-count", type=int, default=1500, help="searches at concurrency 32 per set-up and round")
    p.add_argument("--miss-count-c1", type=int, default=200, help="searches at concurrency 1 per set-up and round")
    p.add_argument("--miss-rounds", type=int, default=2, help="rounds of the cache-miss set-ups, interleaved")
    p.add_argument("--provider-delay-ms", type=float, default=50.0)
    p.add_argument("--engine-port", type=int, default=9400)
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
