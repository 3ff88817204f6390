"""Cost benchmark: what the score cache saves on a realistic search log.

A log of searches is drawn from the Cranfield queries with a Zipf distribution over query
popularity; about a third of the searches ask for the next page of a recent search, and some new
searches add a filter on the derived `bucket` field. The log is replayed, in order, through the
proxy against the real engine, with a Cohere-protocol test server (bench/count_server.py, NOT
Cohere's API) that counts the requests, documents and search units it is asked for, in these
set-ups: no cache (CACHE_MAX_ENTRIES=0), the in-process cache (one worker), two proxy replicas
sharing a Redis (the log split round-robin between them), two replicas sharing nothing (what
several workers without the per-host tier amounted to), and one proxy with the shipped default
WORKERS=auto. The one-worker and default set-ups are also replayed with --workers-concurrency
searches in flight, where workers race each other for the same scores. In the worker set-ups each
search opens a new connection, so the kernel spreads them over the workers. Then cache-hit
searches are timed next to the same searches sent straight to the engine with size 100.

    .venv/bin/python -m bench.cost [--searches 3000] [--zipf 1.0] [--seed 7]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from .common import (
    CRANFIELD_INDEX,
    Service,
    counting_stats,
    engine_version,
    index_cranfield,
    load_queries,
    log,
    machine_info,
    named,
    proxy_cache_metrics,
    proxy_metrics,
    run_loadgen,
    save_json,
    search_body,
    start_counting_server,
    start_engine,
    start_proxy,
    start_redis,
    started_proxies,
    summary,
)

PAGE_SIZE = 10
HOST_METRICS = ("rerank_proxy_cache_host_hits_total", "rerank_proxy_cache_host_waits_total",
                "rerank_proxy_cache_host_gave_up_total", "rerank_proxy_cache_host_errors_total")
FILTERS = (5, 7, 9)      # `bucket < k`: keeps 50%, 70% or 90% of the corpus


@dataclass
class Search:
    query: str
    page: int = 0
    bucket_lt: int | None = None
    kind: str = "new"    # new | next_page

    def body(self) -> dict[str, Any]:
        return search_body(self.query, from_=self.page * PAGE_SIZE if self.page else None,
                           bucket_lt=self.bucket_lt)


def make_log(queries: list[str], n: int, zipf_s: float, seed: int, next_page_share: float,
             filter_share: float) -> list[Search]:
    """The search log. Query popularity: rank r (a seeded shuffle of the queries) has weight 1/r^s.

    Each search is, with probability `next_page_share`, the next page of one of the last 8 searches
    (a user paging on); otherwise a new search of a Zipf-drawn query, with probability
    `filter_share` filtered on `bucket < k` (k in 5, 7, 9).
    """
    rng = random.Random(seed)
    ranked = queries[:]
    rng.shuffle(ranked)
    cumulative = list(itertools.accumulate(1.0 / (r ** zipf_s) for r in range(1, len(ranked) + 1)))
    recent: list[Search] = []
    out: list[Search] = []
    for _ in range(n):
        if recent and rng.random() < next_page_share:
            slot = rng.randrange(len(recent))
            prev = recent[slot]
            search = Search(prev.query, prev.page + 1, prev.bucket_lt, "next_page")
            recent[slot] = search
        else:
            query = ranked[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]
            bucket = rng.choice(FILTERS) if rng.random() < filter_share else None
            search = Search(query, 0, bucket, "new")
            recent.append(search)
            recent = recent[-8:]
        out.append(search)
    return out


def log_profile(searches: list[Search]) -> dict[str, Any]:
    new = [s for s in searches if s.kind == "new"]
    return {"searches": len(searches), "new_searches": len(new),
            "next_page_searches": len(searches) - len(new),
            "filtered_new_searches": sum(1 for s in new if s.bucket_lt is not None),
            "distinct_queries": len({s.query for s in searches}),
            "distinct_query_filter_pairs": len({(s.query, s.bucket_lt) for s in searches}),
            "max_page": max(s.page for s in searches) + 1,
            "top_query_share": max(sum(1 for s in searches if s.query == q) for q in {s.query for s in searches})
            / len(searches)}


def replay(searches: list[Search], proxies: list[Service], provider: Service, concurrency: int,
           new_connections: bool = False) -> dict[str, Any]:
    """Send the log (round-robin over `proxies`) and count what the provider was asked."""
    counting_stats(provider, reset=True)
    headers = {"content-type": "application/json", **({"connection": "close"} if new_connections else {})}
    requests = [{"method": "POST", "url": proxies[i % len(proxies)].url + f"/{CRANFIELD_INDEX}/_search",
                 "body": json.dumps(s.body()), "headers": headers, "tag": s.kind} for i, s in enumerate(searches)]
    started = time.time()
    out = run_loadgen({"mode": "list", "concurrency": concurrency, "requests": requests,
                       "capture_headers": ["x-rerank", "x-rerank-cache", "server-timing"], "progress_s": 10})
    stats = counting_stats(provider, records=True)
    records = out["records"]
    statuses: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    caches: dict[str, int] = {}
    for rec in records:
        statuses[str(rec[4])] = statuses.get(str(rec[4]), 0) + 1
        outcomes[rec[5].get("x-rerank") or "none"] = outcomes.get(rec[5].get("x-rerank") or "none", 0) + 1
        caches[rec[5].get("x-rerank-cache") or "none"] = caches.get(rec[5].get("x-rerank-cache") or "none", 0) + 1
    # Cumulative provider work along the log: with a sequential replay, the provider's requests
    # arrive in log order, one per search whose X-Rerank-Cache is miss or partial.
    cumulative = None
    calling = [i for i, rec in enumerate(records) if rec[5].get("x-rerank-cache") in ("miss", "partial")]
    if concurrency == 1 and len(calling) == len(stats["records"]):
        calls = [0] * len(records)
        docs = [0] * len(records)
        for i, row in zip(calling, stats["records"]):
            calls[i] = 1
            docs[i] = row[1]
        cumulative = {"calls": list(itertools.accumulate(calls)), "documents": list(itertools.accumulate(docs))}
    n = len(searches)
    per_1000 = {"provider_calls": stats["requests"] * 1000 / n, "documents_sent": stats["documents"] * 1000 / n,
                "search_units": stats["search_units"] * 1000 / n}
    last_1000 = None
    if cumulative and n >= 2000:
        k = n - 1000
        units = [0] * n
        for i, row in zip(calling, stats["records"]):
            units[i] = -(-row[1] // 100)
        last_1000 = {"provider_calls": cumulative["calls"][-1] - cumulative["calls"][k - 1],
                     "documents_sent": cumulative["documents"][-1] - cumulative["documents"][k - 1],
                     "search_units": sum(units[k:])}
    return {"elapsed_s": round(time.time() - started, 1), "concurrency": concurrency,
            "workers": [p.extra.get("workers", 1) for p in proxies],
            "host_tier": {name.removeprefix("rerank_proxy_cache_"): sum(proxy_metrics(p, [name])[name] for p in proxies)
                          for name in HOST_METRICS},
            "provider": {k: v for k, v in stats.items() if k != "records"},
            "per_1000": per_1000, "last_1000": last_1000, "http_status": statuses, "x_rerank": outcomes,
            "x_rerank_cache": caches, "cumulative": cumulative,
            "proxy_cache_metrics": [proxy_cache_metrics(p) for p in proxies],
            "search_latency_ms": summary([r[3] for r in records])}


def hit_latency(searches: list[Search], proxy: Service, engine_url: str, samples: int) -> dict[str, Any]:
    """Cache-hit searches through the (warm) proxy vs the same searches straight to the engine with
    size = window (100), interleaved, one at a time."""
    firsts, seen = [], set()
    for s in searches:
        key = (s.query, s.bucket_lt)
        if s.page == 0 and key not in seen:
            seen.add(key)
            firsts.append(s)
    firsts = firsts[:samples]
    requests = []
    for s in firsts:
        requests.append({"method": "POST", "url": proxy.url + f"/{CRANFIELD_INDEX}/_search", "tag": "proxy",
                         "body": json.dumps(s.body()), "headers": {"content-type": "application/json"}})
        direct = s.body()
        direct["size"] = 100
        requests.append({"method": "POST", "url": engine_url + f"/{CRANFIELD_INDEX}/_search", "tag": "direct",
                         "body": json.dumps(direct), "headers": {"content-type": "application/json"}})
    # one untimed pass warms the engine's and the proxy's paths; the timed pass follows
    run_loadgen({"mode": "list", "concurrency": 1, "requests": requests})
    out = run_loadgen({"mode": "list", "concurrency": 1, "requests": requests, "capture_headers": ["x-rerank"]})
    proxy_ms = [r[3] for r in out["records"] if r[1] == "proxy"]
    direct_ms = [r[3] for r in out["records"] if r[1] == "direct"]
    cached = sum(1 for r in out["records"] if r[1] == "proxy" and r[5].get("x-rerank") == "cached")
    p, d = summary(proxy_ms), summary(direct_ms)
    return {"searches": len(firsts), "proxy_cached_responses": cached, "proxy_hit_ms": p, "direct_size100_ms": d,
            "ratio_p50": p["p50"] / d["p50"], "ratio_p99": p["p99"] / d["p99"],
            "distributions": {"proxy_hit": sorted(proxy_ms), "direct_size100": sorted(direct_ms)}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = start_engine(port=args.engine_port)
    index_cranfield(engine)
    searches = make_log(load_queries(), args.searches, args.zipf, args.seed, args.next_page_share, args.filter_share)
    profile = log_profile(searches)
    log(f"log: {profile}")
    provider = start_counting_server(args.provider_delay_ms)
    results: dict[str, Any] = {"machine": machine_info(), "engine": f"elasticsearch {engine_version(engine)}",
                               "params": vars(args), "log": profile, "setups": {}}
    services: list[Service] = [provider]
    try:
        # (name, proxies, workers per proxy, settings, replay concurrency, a new connection per search)
        c = args.workers_concurrency
        setups: list[tuple[str, int, int | str, dict[str, Any], int, bool]] = [
            ("no_cache", 1, 1, named(CACHE_MAX_ENTRIES=0), args.concurrency, False),
            ("in_process", 1, 1, {}, args.concurrency, False),
            ("two_replicas_redis", 2, 1, {}, args.concurrency, False),
            ("two_replicas_no_share", 2, 1, {}, args.concurrency, False),
            ("one_worker", 1, 1, {}, args.concurrency, True),
            ("default_workers", 1, "auto", {}, args.concurrency, True),
            (f"one_worker_c{c}", 1, 1, {}, c, True),
            (f"default_workers_c{c}", 1, "auto", {}, c, True),
        ]
        for name, replicas, workers, settings, concurrency, fresh in setups:
            log(f"setup {name}: {replicas} proxy replica(s) of {workers} worker(s) {settings or ''}, "
                f"concurrency {concurrency}")
            redis = None
            if name == "two_replicas_redis":
                redis = start_redis()
                services.append(redis)
                settings = {**settings, **named(REDIS_URL=redis.url)}
            proxies = [start_proxy(engine, provider=provider, name=f"proxy-{name}-{i}", workers=workers, **settings)
                       for i in range(replicas)]
            services.extend(proxies)
            result = replay(searches, proxies, provider, concurrency, new_connections=fresh)
            log(f"setup {name}: per 1,000 searches {result['per_1000']} (replay {result['elapsed_s']} s)")
            if name == "in_process":
                log("timing cache-hit searches against the engine (size 100)")
                result["hit_latency"] = hit_latency(searches, proxies[0], engine, args.latency_samples)
                h = result["hit_latency"]
                log(f"cache hit p50 {h['proxy_hit_ms']['p50']:.2f} ms vs engine size-100 p50 "
                    f"{h['direct_size100_ms']['p50']:.2f} ms (x{h['ratio_p50']:.2f})")
            results["setups"][name] = result
            for p in proxies:
                p.stop()
            if redis is not None:
                redis.stop()
    finally:
        for s in services:
            s.stop()
    base = results["setups"]["no_cache"]["per_1000"]["provider_calls"]
    cached = results["setups"]["in_process"]["per_1000"]["provider_calls"]
    results["target"] = {"in_process_calls_vs_no_cache": cached / base if base else None,
                         "halved": bool(base) and cached <= base / 2}
    pairs = []
    for one, default in (("one_worker", "default_workers"), (f"one_worker_c{c}", f"default_workers_c{c}")):
        a, b = results["setups"][one]["provider"], results["setups"][default]["provider"]
        pairs.append({"one": one, "default": default, "workers": results["setups"][default]["workers"][0],
                      "concurrency": results["setups"][default]["concurrency"],
                      "calls": [a["requests"], b["requests"]], "documents": [a["documents"], b["documents"]],
                      "met": b["requests"] <= a["requests"] and b["documents"] <= a["documents"]})
    results["workers_target"] = pairs
    results["machine"]["loadavg_at_end"] = list(__import__("os").getloadavg())
    results["settings_differ"] = started_proxies()
    save_json("cost.json", results)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searches", type=int, default=3000, help="searches in the log (default 3000)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s of query popularity (default 1.0)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--next-page-share", type=float, default=1 / 3)
    p.add_argument("--filter-share", type=float, default=0.25, help="share of new searches with a filter")
    p.add_argument("--concurrency", type=int, default=1, help="replay concurrency (1 = in log order)")
    p.add_argument("--workers-concurrency", type=int, default=8,
                   help="concurrency of the second one-worker vs default-workers replay (default 8)")
    p.add_argument("--provider-delay-ms", type=float, default=50.0)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--engine-port", type=int, default=9400)
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
