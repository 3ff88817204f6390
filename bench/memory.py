"""Memory benchmark: the proxy's RSS over a bounded mixed load, with the score cache filling up.

One proxy (1 worker) with CACHE_MAX_ENTRIES=20000 (a low bound, so the cache is full early in the
run and a flat curve afterwards means something), the Cohere-protocol test server as provider
(fixed 10 ms delay), and bench/loadgen.py in its own process sending, for `--duration` seconds at
concurrency 8: reranked searches each with a distinct query (every one a cache miss that adds up
to 100 entries), `GET /bench-small/_doc/{id}` and `_bulk` of 1,000 documents (weights 70/25/5).
VmRSS and VmHWM are read from /proc/<pid>/status every `--interval` seconds, with the cache's
entry count from /_rerank/metrics (`rerank_proxy_cache_entries`; no admin token, so apart from
CACHE_MAX_ENTRIES, the worker count and the test provider the proxy runs on the shipped defaults).

    .venv/bin/python -m bench.memory [--duration 600] [--interval 5]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .common import (
    CRANFIELD_INDEX,
    SMALL_INDEX,
    Service,
    bulk_body,
    engine_version,
    index_cranfield,
    index_small,
    load_queries,
    log,
    machine_info,
    proxy_metrics,
    run_loadgen,
    save_json,
    start_counting_server,
    start_engine,
    start_proxy,
    started_proxies,
    summary,
)


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def cache_entries(proxy: Service) -> int:
    """Scores in the proxy's in-process cache, from /_rerank/metrics (no admin token: the run stays
    on the shipped defaults)."""
    return int(proxy_metrics(proxy, ["rerank_proxy_cache_entries"])["rerank_proxy_cache_entries"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = start_engine(port=args.engine_port)
    index_small(engine)
    index_cranfield(engine)
    provider = start_counting_server(args.provider_delay_ms)
    results: dict[str, Any] = {"machine": machine_info(), "engine": f"elasticsearch {engine_version(engine)}",
                               "params": vars(args)}
    try:
        extra = dict(setting.split("=", 1) for setting in args.setting)
        proxy = start_proxy(engine, provider=provider, workers=1, name="proxy-memory",
                            CACHE_MAX_ENTRIES=args.cache_max_entries, **extra)
        try:
            pid = proxy.worker_pids()[0]
            spec = {"mode": "mix", "base_url": proxy.url, "duration_s": args.duration, "concurrency": args.concurrency,
                    "weights": {"search": 70, "get": 25, "bulk": 5}, "queries": load_queries(),
                    "search_path": f"/{CRANFIELD_INDEX}/_search", "get_path": f"/{SMALL_INDEX}/_doc/{{id}}",
                    "get_ids": list(range(1000)), "bulk_body": bulk_body(1000).decode(), "progress_s": 30,
                    "timeout_s": 60}
            holder: dict[str, Any] = {}
            samples: list[dict[str, Any]] = []
            start = time.time()
            samples.append({"t_s": 0.0, **status_kb(pid), "cache_entries": cache_entries(proxy)})
            thread = threading.Thread(target=lambda: holder.update(out=run_loadgen(spec, "memory-load")))
            thread.start()
            next_log = 0.0
            while thread.is_alive():
                time.sleep(args.interval)
                t = time.time() - start
                try:
                    entries = cache_entries(proxy)
                except (httpx.HTTPError, ValueError, KeyError):  # a sample missed under load: left blank
                    entries = None
                row: dict[str, Any] = {"t_s": round(t, 1), **status_kb(pid), "cache_entries": entries}
                samples.append(row)
                if t >= next_log:
                    log(f"memory {t:.0f}/{args.duration:.0f}s: RSS {row['VmRSS'] / 1024:.1f} MiB, "
                        f"cache entries {entries}")
                    next_log = t + 30
            thread.join()
            samples.append({"t_s": round(time.time() - start, 1), **status_kb(pid),
                            "cache_entries": cache_entries(proxy)})
            load = holder["out"]
        finally:
            proxy.stop()
    finally:
        provider.stop()
    full_at = next((s["t_s"] for s in samples if (s["cache_entries"] or 0) >= args.cache_max_entries * 0.99), None)
    after = [s for s in samples if full_at is not None and s["t_s"] >= full_at]
    second_half = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] / 2]
    slope = None
    if len(second_half) >= 3:
        xs = [s["t_s"] / 60 for s in second_half]
        ys = [s["VmRSS"] / 1024 for s in second_half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    results.update({
        "samples": samples,
        "cache_full_at_s": full_at,
        "rss_mib": {"first": samples[0]["VmRSS"] / 1024, "at_cache_full": after[0]["VmRSS"] / 1024 if after else None,
                    "last": samples[-1]["VmRSS"] / 1024, "max": max(s["VmRSS"] for s in samples) / 1024,
                    "hwm": samples[-1]["VmHWM"] / 1024,
                    "max_after_cache_full": max(s["VmRSS"] for s in after) / 1024 if after else None,
                    "min_after_cache_full": min(s["VmRSS"] for s in after) / 1024 if after else None},
        "rss_slope_second_half_mib_per_min": slope,
        "load": {k: {"requests": len(v["latencies_ms"]), "status": v["status"],
                     "latency_ms": summary(v["latencies_ms"])}
                 for k, v in load["stats"].items()},
        "load_elapsed_s": load["elapsed_s"],
    })
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["settings_differ"] = started_proxies()
    save_json(f"{args.name}.json", results)
    r = results["rss_mib"]
    log(f"RSS first {r['first']:.1f} MiB, at cache full {r['at_cache_full']} MiB, last {r['last']:.1f} MiB, "
        f"max {r['max']:.1f} MiB; slope over the second half {slope if slope is None else round(slope, 3)} MiB/min")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--cache-max-entries", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--provider-delay-ms", type=float, default=10.0)
    p.add_argument("--engine-port", type=int, default=9400)
    p.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a proxy setting that differs from the shipped defaults (repeatable)")
    p.add_argument("--name", default="memory", help="results go to bench/results/NAME.json")
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
