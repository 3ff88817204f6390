"""Replicas behind nginx, sharing scores through one Redis or a Redis Cluster: provider calls and latency.

1, 3 and 6 proxy replicas (`--workers 1` each) behind nginx balancing round robin
(bench/common.py's `start_nginx_lb`), their shared tier one redis-server or a 3-primary/3-replica
Redis Cluster on loopback (`start_redis_cluster`, `REDIS_CLUSTER=true`), their provider the
Cohere-protocol test server (bench/count_server.py) answering after 30 ms. The same client logs
every time: `--clients` clients, each sending its own log one search at a time (bench/loadgen.py,
a process per client, all at once); each log is bench/cost.py's (Zipf-popular Cranfield queries,
next pages, `bucket < k` filters), seeded per client, so popular queries repeat within and across
logs. Redis is flushed and the replicas are new before every run: each starts cold.

The same runs without a shared tier (each replica its own in-process cache) are the reference.
Recorded per run: the provider's requests and documents (and their ratio to one replica on the
same Redis: what replicas cost beyond one), client-side search time p50/p90 (from loadgen's
records: request written to last byte read), searches per second, and the replicas' shared-tier
hits and errors. Everything runs on one machine: with 6 replicas on 2 cores the latencies say as
much about CPU contention as about Redis.

    .venv/bin/python -m bench.replicas                     # about 4-5 minutes on 2 cores
    .venv/bin/python -m bench.replicas --searches 30       # a quick check of the machinery
"""

from __future__ import annotations

import argparse
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .common import (
    CRANFIELD_INDEX,
    REPO,
    RedisCluster,
    Service,
    counting_stats,
    engine_version,
    index_cranfield,
    load_queries,
    loadavg,
    log,
    machine_info,
    median,
    proxy_metrics,
    run_loadgen,
    save_json,
    start_counting_server,
    start_engine,
    start_nginx_lb,
    start_proxy,
    start_redis,
    start_redis_cluster,
    started_proxies,
    summary,
)
from .cost import Search, make_log

REPLICAS = (1, 3, 6)
BACKENDS = ("none", "redis", "cluster")   # none: no shared tier, the reference
PROVIDER_DELAY_MS = 30.0
SHARED = ("rerank_proxy_cache_shared_hits_total", "rerank_proxy_cache_shared_errors_total")
PER_ROW = {"RERANK_BASE_URL", "REDIS_URL", "REDIS_CLUSTER"}   # said apart in the table's line
DOC = REPO / "BENCHMARKS.md"
BLOCK = "replicas"


def client_logs(clients: int, searches: int, zipf_s: float, seed: int) -> list[list[Search]]:
    queries = load_queries()
    return [make_log(queries, searches, zipf_s, seed + i, next_page_share=0.3, filter_share=0.25)
            for i in range(clients)]


def run_clients(url: str, logs: list[list[Search]]) -> list[list[Any]]:
    """Every client at once, each its own loadgen process sending its log one search at a time."""
    def one(i: int, searches: list[Search]) -> list[list[Any]]:
        requests = [{"method": "POST", "url": f"{url}/{CRANFIELD_INDEX}/_search", "body": json.dumps(s.body()),
                     "headers": {"content-type": "application/json"}, "tag": s.kind} for s in searches]
        spec = {"mode": "list", "concurrency": 1, "requests": requests, "capture_headers": ["x-rerank"]}
        return list(run_loadgen(spec, name=f"client-{i}")["records"])

    with ThreadPoolExecutor(max_workers=len(logs)) as pool:
        return [rec for recs in pool.map(one, range(len(logs)), logs) for rec in recs]


def one_run(backend: str, count: int, engine_url: str, provider: Service, redis_url: str | None,
            logs: list[list[Search]]) -> tuple[dict[str, Any], list[float]]:
    """`count` new replicas on `backend` behind a new nginx, every log sent; (the run's row, its search times)."""
    cluster = backend == "cluster"
    proxies: list[Service] = []
    nginx: Service | None = None
    try:
        for i in range(count):
            proxies.append(start_proxy(engine_url, provider=provider, workers=1, name=f"{backend}-{count}r-{i}",
                                       REDIS_URL=redis_url, REDIS_CLUSTER=cluster))
        nginx = start_nginx_lb(proxies)
        counting_stats(provider, reset=True)
        started = time.monotonic()
        records = run_clients(nginx.url, logs)
        elapsed = time.monotonic() - started
        stats = counting_stats(provider)
        shared = [proxy_metrics(p, SHARED) for p in proxies]
    finally:
        if nginx is not None:
            nginx.stop()
        for proxy in proxies:
            proxy.stop()
    statuses: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for rec in records:
        statuses[str(rec[4])] = statuses.get(str(rec[4]), 0) + 1
        outcome = rec[5].get("x-rerank") or "none"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    row = {"searches": len(records), "elapsed_s": round(elapsed, 2), "searches_per_s": round(len(records) / elapsed, 1),
           "provider": {"requests": stats["requests"], "documents": stats["documents"],
                        "search_units": stats["search_units"]},
           "latency_ms": summary([r[3] for r in records]), "http_status": statuses, "x_rerank": outcomes,
           "shared_hits": sum(s[SHARED[0]] for s in shared), "shared_errors": sum(s[SHARED[1]] for s in shared)}
    return row, [r[3] for r in records]


def merged(backend: str, count: int, rounds: list[dict[str, Any]], latencies: list[float]) -> dict[str, Any]:
    """One table row from its rounds: provider counts per round (and the largest), search time over
    every round's searches, HTTP statuses summed."""
    statuses: dict[str, int] = {}
    for r in rounds:
        for code, n in r["http_status"].items():
            statuses[code] = statuses.get(code, 0) + n
    return {"backend": backend, "replicas": count,
            "provider_requests": max(r["provider"]["requests"] for r in rounds),
            "provider_documents": max(r["provider"]["documents"] for r in rounds),
            "requests_by_round": [r["provider"]["requests"] for r in rounds],
            "latency_ms": summary(latencies), "searches_per_s": median(r["searches_per_s"] for r in rounds),
            "shared_hits_per_round": sum(r["shared_hits"] for r in rounds) / len(rounds),
            "shared_errors": sum(r["shared_errors"] for r in rounds), "http_status": statuses, "rounds": rounds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info()
    engine_url = start_engine()
    index_cranfield(engine_url)
    logs = client_logs(args.clients, args.searches, args.zipf, args.seed)
    provider = start_counting_server(PROVIDER_DELAY_MS)
    single = start_redis()
    cluster: RedisCluster | None = None
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    latencies: dict[tuple[str, int], list[float]] = {}
    try:
        cluster = start_redis_cluster()
        log("warm-up (not reported): the engine and the page cache see the logs once")
        one_run("none", 1, engine_url, provider, None, logs)
        for n in range(args.rounds):
            for backend in BACKENDS:
                url = {"none": None, "redis": single.url, "cluster": cluster.seed_url}[backend]
                for count in REPLICAS:
                    single_flush(single)
                    cluster.flush()
                    log(f"round {n + 1}: {backend}, {count} replica(s), {args.clients} clients x {args.searches}")
                    row, times = one_run(backend, count, engine_url, provider, url, logs)
                    rounds.setdefault((backend, count), []).append(row)
                    latencies.setdefault((backend, count), []).extend(times)
                    log(f"  provider requests {row['provider']['requests']}, p50 {row['latency_ms']['p50']:.1f} ms, "
                        f"p90 {row['latency_ms']['p90']:.1f} ms")
    finally:
        provider.stop()
        single.stop()
        if cluster is not None:
            cluster.stop()
    rows = [merged(backend, count, rounds[(backend, count)], latencies[(backend, count)])
            for backend, count in rounds]
    for row in rows:
        base = next(r for r in rows if r["backend"] == row["backend"] and r["replicas"] == 1)
        row["requests_vs_one_replica"] = round(row["provider_requests"] / max(1, base["provider_requests"]), 3)
        row["documents_vs_one_replica"] = round(row["provider_documents"] / max(1, base["provider_documents"]), 3)
    return {"machine": machine, "engine": engine_version(engine_url), "loadavg_at_end": loadavg(),
            "provider_delay_ms": PROVIDER_DELAY_MS, "rounds": args.rounds,
            "log": {"clients": args.clients, "searches_per_client": args.searches, "zipf_s": args.zipf,
                    "seed": args.seed, "next_page_share": 0.3, "filter_share": 0.25},
            "settings_differ": started_proxies(), "rows": rows}


def single_flush(redis_service: Service) -> None:
    import redis

    with redis.Redis.from_url(redis_service.url, socket_timeout=5) as client:
        client.flushall()


# --- the BENCHMARKS.md block ---------------------------------------------------------------------

def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lg = results["log"]
    differs = sorted({f"{k}={v}" for d in results["settings_differ"].values() for k, v in d.items()
                      if k not in PER_ROW})
    lines = [
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['redis']}, {m['nginx']}; run {m['when']}; load average "
        f"{'/'.join(str(round(x, 1)) for x in m['loadavg_at_start'])} at start, "
        f"{'/'.join(str(x) for x in results['loadavg_at_end'])} at end. Engine: elasticsearch {results['engine']}. "
        f"Log: {lg['clients']} clients x {lg['searches_per_client']} searches (Zipf s = {lg['zipf_s']}, seeds "
        f"{lg['seed']}..{lg['seed'] + lg['clients'] - 1}), each client one search at a time, all clients at once; "
        f"{results['rounds']} rounds, interleaved, after one unreported warm-up run; search times over every "
        f"round's searches; test provider delay {results['provider_delay_ms']:.0f} ms. Settings that differ from "
        f"the shipped defaults (as the harness set them), in every replica: {', '.join(differs)}, and "
        "RERANK_BASE_URL (the test server); REDIS_URL in the redis-server and cluster rows, REDIS_CLUSTER=true in "
        "the cluster rows only.",
        "",
        "| shared tier | replicas | provider requests (by round) | documents sent | requests vs 1 replica | "
        "search p50 ms | search p90 ms | searches/s | shared hits / round | shared errors | HTTP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        tier = {"none": "none (each replica its own cache)", "redis": "one redis-server",
                "cluster": "Redis Cluster (3+3)"}[r["backend"]]
        http = " ".join(f"{k} {v}" for k, v in sorted(r["http_status"].items()))
        by_round = " / ".join(str(n) for n in r["requests_by_round"])
        lines.append(f"| {tier} | {r['replicas']} | {by_round} | {r['provider_documents']} | "
                     f"{r['requests_vs_one_replica']:.3f} | {r['latency_ms']['p50']:.1f} | "
                     f"{r['latency_ms']['p90']:.1f} | {r['searches_per_s']:.1f} | {r['shared_hits_per_round']:.0f} | "
                     f"{r['shared_errors']:.0f} | {http} |")
    return "\n".join(lines)


def write_block(results: dict[str, Any]) -> None:
    """Rewrite the block between `<!-- BEGIN:replicas -->` and `<!-- END:replicas -->` of BENCHMARKS.md."""
    text = DOC.read_text()
    pattern = re.compile(rf"(<!-- BEGIN:{BLOCK} -->\n).*?(<!-- END:{BLOCK} -->)", re.S)
    if not pattern.search(text):
        log(f"BENCHMARKS.md has no block {BLOCK}; not written")
        return
    DOC.write_text(pattern.sub(lambda mt: mt.group(1) + table(results) + "\n" + mt.group(2), text))
    log("rewrote the replicas block of BENCHMARKS.md")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--searches", type=int, default=300, help="searches per client")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2, help="every set-up this many times, interleaved")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--table-only", action="store_true", help="rewrite the BENCHMARKS.md block from the results")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.table_only:
        results = json.loads((REPO / "bench" / "results" / "replicas.json").read_text())
    else:
        results = run(args)
        save_json("replicas.json", results)
    print(table(results))
    write_block(results)


if __name__ == "__main__":
    main()
