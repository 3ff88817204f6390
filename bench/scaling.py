"""How the proxy's CPU per search grows with the window and the document size, next to nginx's.

For each document size (1 KB, 10 KB, 100 KB of Cranfield text: a doc's `title` and a `body` made
of its own abstract followed by the next ones, cut to size; 1,100 documents per index, so a window
of 1,000 is full) and each window (10, 100, 1,000: RERANK_WINDOW, one proxy process per window),
the same Cranfield queries (those matching at least 1,000 documents) are sent:
- straight to the engine with `size` = window (the baseline: what the proxy itself fetches);
- through nginx as a plain reverse proxy, same request (the reference: nginx's CPU per request);
- through the proxy, first page of 10, after a warm pass (cache hit: wrk; the test provider's
  request count must not move while wrk runs);
- through the proxy with a new query text per search (cache miss; provider = the Cohere-protocol
  test server with no delay), sent one at a time by bench/loadgen.py.
CPU per request is read from /proc for the proxy's and nginx's processes. The engine is shared
with other work, so its own CPU is not counted. wrk runs at concurrency 1, engine/nginx/proxy
interleaved within each round; a figure is the median over rounds.

At 1,000 x 100 KB the engine's answer (about 100 MB) is past the proxy's MAX_CANDIDATE_BYTES
(64 MiB by default): the proxy then relays the client's own request and the engine answers it in
lexical order (`X-Rerank: bypass`, reason `candidates_too_large`). That is recorded as the cell's
outcome; its CPU figures are the cost of reading up to the limit and relaying. (The window is not
set with the per-search `rerank: {"window": N}` option because that relay sends the client's body
as it came, `rerank` key included, and the engine refuses it with a 400 parsing_exception.)

    .venv/bin/python -m bench.scaling            # about 6 minutes (first run: + 20 s of indexing)
    .venv/bin/python -m bench.scaling --quick    # about 2 minutes: checks the machinery
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Any

import httpx

from .common import (
    Service,
    counting_stats,
    cpu_seconds,
    engine_version,
    load_corpus,
    load_queries,
    loadavg,
    log,
    machine_info,
    median,
    run_loadgen,
    run_wrk,
    save_json,
    start_counting_server,
    start_engine,
    start_nginx,
    start_proxy,
    started_proxies,
    summary,
)

SIZES = {"1kb": 1024, "10kb": 10 * 1024, "100kb": 100 * 1024}
WINDOWS = (10, 100, 1000)
DOCS = 1100
PAGE = 10
INDEX_VERSION = 2                # bump when the documents change: a stale index is rebuilt
JSON_HEADERS = {"Content-Type": "application/json"}
_serial = itertools.count(1)


# --- the data ------------------------------------------------------------------------------------

def index_name(label: str) -> str:
    return f"bench-scale-{label}"


def sized_docs(doc_bytes: int, n: int) -> list[dict[str, str]]:
    """n documents of about `doc_bytes` of `_source` each: real text, so the engine and the proxy
    see the usual analysis, hit text and JSON escaping, only longer."""
    corpus = [d for d in load_corpus() if d["text"].strip()]
    out = []
    for i in range(n):
        title = corpus[i % len(corpus)]["title"]
        room = doc_bytes - len(json.dumps({"title": title, "body": ""}))
        parts, length, j = [], 0, i
        while length < room:
            text = " ".join(corpus[j % len(corpus)]["text"].split())
            parts.append(text)
            length += len(text) + 2
            j += 1
        body = "\n\n".join(parts)[:room]
        while len(json.dumps({"title": title, "body": body})) > doc_bytes:  # escapes take room too
            body = body[:-16]
        body = body[:body.rfind(" ")] if " " in body[-40:] else body  # end on a word
        out.append({"title": title, "body": body})
    return out


def index_sized(url: str, label: str, doc_bytes: int, n: int = DOCS) -> dict[str, Any]:
    """The index of one document size, reused when its `_meta` says it is already this one."""
    index = index_name(label)
    meta = {"doc_bytes": doc_bytes, "docs": n, "version": INDEX_VERSION}
    with httpx.Client(timeout=120) as client:
        current = client.get(f"{url}/{index}/_mapping")
        if current.status_code == 200:
            found = current.json().get(index, {}).get("mappings", {}).get("_meta", {})
            count = client.get(f"{url}/{index}/_count").json().get("count")
            if found == meta and count == n:
                return {"index": index, "reused": True, **meta}
        client.delete(f"{url}/{index}")
        mapping = {"settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"},
                   "mappings": {"_meta": meta, "properties": {"title": {"type": "text"}, "body": {"type": "text"}}}}
        client.put(f"{url}/{index}", json=mapping).raise_for_status()
        started = time.monotonic()
        docs = sized_docs(doc_bytes, n)
        batch = max(1, (8 << 20) // doc_bytes)        # about 8 MB per _bulk
        for start in range(0, n, batch):
            lines = []
            for i, doc in enumerate(docs[start:start + batch], start):
                lines.append(json.dumps({"index": {"_index": index, "_id": str(i)}}))
                lines.append(json.dumps(doc))
            response = client.post(f"{url}/_bulk", content=("\n".join(lines) + "\n").encode(),
                                   headers={"content-type": "application/x-ndjson"})
            response.raise_for_status()
            if response.json().get("errors"):
                raise RuntimeError(f"bulk into {index} failed: {response.text[:500]}")
            log(f"indexing {index}: {min(start + batch, n)}/{n}")
        client.put(f"{url}/{index}/_settings", json={"index": {"refresh_interval": None}}).raise_for_status()
        client.post(f"{url}/{index}/_refresh").raise_for_status()
    log(f"indexed {n} documents of {doc_bytes} bytes into {index} in {time.monotonic() - started:.0f} s")
    return {"index": index, "reused": False, **meta}


def query_dsl(text: str) -> dict[str, Any]:
    return {"multi_match": {"query": text, "fields": ["title^2", "body"]}}


def full_window_queries(url: str, want: int) -> list[str]:
    """Cranfield queries matching at least 1,000 documents of the 1 KB index (the larger
    documents begin with the same text, so they match at least as many): every window is full."""
    out = []
    with httpx.Client(timeout=30) as client:
        for q in load_queries():
            count = client.post(f"{url}/{index_name('1kb')}/_count", json={"query": query_dsl(q)}).json()["count"]
            if count >= max(WINDOWS):
                out.append(q)
            if len(out) == want:
                break
    if not out:
        raise SystemExit("no Cranfield query matches 1,000 documents of the 1 KB index")
    return out


# --- the services --------------------------------------------------------------------------------

def start_checkout_proxy(upstream: str, provider: Service, label: str, window: int) -> Service:
    """The proxy of this checkout on the shipped defaults apart from the provider and RERANK_WINDOW
    (bench.common's harness; WORKERS left to its default)."""
    return start_proxy(upstream, provider=provider, name=f"proxy-scaling-{label}-w{window}", RERANK_WINDOW=window)


def cpu_of(service: Service) -> float:
    """CPU seconds used so far by a service's processes (the parent and its children)."""
    return sum(cpu_seconds(p) for p in {service.pid, *service.child_pids()})


def shipped_default(name: str) -> str:
    from rerank_proxy.config import SETTINGS

    return next(s.default for s in SETTINGS if s.name == name)


# Shipped defaults the report names beside the figures (as kept, unless a proxy's recorded
# settings_differ says otherwise).
SHOWN_DEFAULTS = ("RERANK_WINDOW", "WORKERS", "MAX_CANDIDATE_BYTES", "RERANK_MAX_CHARS", "RERANK_BATCH_SIZE")


# --- one cell: a document size and a window ------------------------------------------------------

def wrk_cell(url: str, requests: list[tuple[str, str, bytes, dict[str, str]]], duration: float,
             service: Service | None) -> dict[str, Any]:
    before = cpu_of(service) if service else 0.0
    rep = run_wrk(url, requests, connections=1, duration_s=duration, timeout_s=30)
    used = cpu_of(service) - before if service else 0.0
    n = rep["requests"]
    lat = rep["latency_us"]["percentiles"]
    return {"requests": n, "p50_ms": lat["50"] / 1000 if n else None, "p90_ms": lat["90"] / 1000 if n else None,
            "rps": n / (rep["duration_us"] / 1e6), "errors": rep["errors"],
            "bytes_per_request": rep["bytes"] / n if n else None,
            "cpu_ms_per_request": used * 1000 / n if service and n else None, "loadavg": loadavg()}


def answer_size(url: str, body: bytes) -> int:
    """Bytes of one engine answer, uncompressed as wrk, nginx and the proxy get it (wrk's byte count
    also holds the partial answer in flight when a run ends, not small next to 100 MB answers)."""
    size = 0
    headers = {**JSON_HEADERS, "Accept-Encoding": "identity"}  # httpx asks for gzip, which the engine honours
    with httpx.stream("POST", url, content=body, headers=headers, timeout=60) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    return size


def outcomes_of(records: list[list[Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in records:
        hdrs, status = rec[5], rec[4]
        key = "/".join(x for x in (hdrs.get("x-rerank", ""), hdrs.get("x-rerank-reason", ""),
                                   hdrs.get("x-rerank-cache", ""), str(status)) if x)
        out[key] = out.get(key, 0) + 1
    return out


def measure_cell(engine: str, nginx: Service, proxy: Service, provider: Service, index: str, window: int,
                 queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    path = f"/{index}/_search"
    direct = [("POST", path, json.dumps({"query": query_dsl(q), "size": window}).encode(), JSON_HEADERS)
              for q in queries]
    paged = [{"query": query_dsl(q), "size": PAGE} for q in queries]
    capture = ["x-rerank", "x-rerank-reason", "x-rerank-cache", "server-timing"]

    # warm the score cache (and record what the proxy makes of these searches)
    warm = run_loadgen({"mode": "list", "concurrency": 1, "max_s": args.warm_max_s, "capture_headers": capture,
                        "requests": [{"method": "POST", "url": proxy.url + path, "body": json.dumps(b),
                                      "headers": JSON_HEADERS} for b in paged]})
    warmed = len(warm["records"])
    hit_reqs = [("POST", path, json.dumps(b).encode(), JSON_HEADERS) for b in paged[:warmed]]
    targets = {"engine": (engine, direct, None), "nginx": (nginx.url, direct, nginx),
               "proxy_hit": (proxy.url, hit_reqs, proxy)}
    for url, reqs, _ in targets.values():
        run_wrk(url, reqs, connections=1, duration_s=1, timeout_s=30)
    answer_bytes = answer_size(engine + path, direct[0][2])
    calls_before = counting_stats(provider)["requests"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(args.rounds):
        for name, (url, reqs, service) in targets.items():
            runs[name].append(wrk_cell(url, reqs, args.duration, service))
    hit_provider_calls = counting_stats(provider)["requests"] - calls_before

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r[key] is not None]
        return median(values) if values else None

    cell: dict[str, Any] = {}
    for name in targets:
        cell[name] = {"p50_ms": med(name, "p50_ms"), "p90_ms": med(name, "p90_ms"), "rps": med(name, "rps"),
                      "cpu_ms_per_request": med(name, "cpu_ms_per_request"),
                      "bytes_per_request": med(name, "bytes_per_request"),
                      "requests": sum(r["requests"] for r in runs[name]),
                      "errors": sum(sum(r["errors"].values()) for r in runs[name]), "runs": runs[name]}
    cell["proxy_hit"].update(warm_searches=warmed, warm_outcomes=outcomes_of(warm["records"]),
                             provider_calls_during_wrk=hit_provider_calls)
    cell["engine"]["answer_bytes"] = answer_bytes
    cell["proxy_miss"] = measure_miss(proxy, provider, path, queries, args)
    reasons = cell["proxy_miss"]["outcomes"]
    cell["outcome"] = ("candidates_too_large" if any("candidates_too_large" in k for k in reasons)
                       else "reranked" if any(k.startswith("reranked") for k in reasons) else ", ".join(reasons))
    return cell


def measure_miss(proxy: Service, provider: Service, path: str, queries: list[str],
                 args: argparse.Namespace) -> dict[str, Any]:
    """Searches with a query text never seen before (a Cranfield query plus a serial number), one
    at a time: each one a cache miss, so each one is engine fetch + provider call + merge."""
    def requests(n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            serial = next(_serial)
            body = {"query": query_dsl(f"{queries[serial % len(queries)]} {serial}"), "size": PAGE}
            out.append({"method": "POST", "url": proxy.url + path, "body": json.dumps(body), "headers": JSON_HEADERS})
        return out

    run_loadgen({"mode": "list", "concurrency": 1, "requests": requests(2)})
    counting_stats(provider, reset=True)
    before = cpu_of(proxy)
    out = run_loadgen({"mode": "list", "concurrency": 1, "requests": requests(args.miss_count),
                       "max_s": args.miss_max_s, "capture_headers": ["x-rerank", "x-rerank-reason",
                                                                     "x-rerank-cache", "server-timing"]})
    used = cpu_of(proxy) - before
    records = out["records"]
    stats = counting_stats(provider, records=True)
    n = len(records)
    return {"searches": n, "elapsed_s": out["elapsed_s"], "cpu_ms_per_search": used * 1000 / n if n else None,
            "latency_ms": summary([r[3] for r in records]), "outcomes": outcomes_of(records),
            "provider_requests": stats["requests"],
            "documents_per_provider_request": stats["documents"] / stats["requests"] if stats["requests"] else 0,
            "loadavg": loadavg()}


# --- the run -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:  # in run(), so that run_all's parse_args + run() gets it too
        args.duration, args.rounds, args.queries = 2.0, 1, 8
        args.warm_max_s, args.miss_count, args.miss_max_s = 8.0, 40, 3.0
    engine = start_engine(port=args.engine_port)
    indices = {label: index_sized(engine, label, size) for label, size in SIZES.items() if label in args.sizes}
    queries = full_window_queries(engine, args.queries)
    log(f"{len(queries)} queries, each matching >= {max(WINDOWS)} documents of the 1 KB index")
    results: dict[str, Any] = {
        "machine": machine_info(), "engine": f"elasticsearch {engine_version(engine)}", "params": vars(args),
        "indices": indices, "queries": len(queries), "page_size": PAGE,
        "settings": {"shipped": {name: shipped_default(name) for name in SHOWN_DEFAULTS}},
        "cells": {}}
    provider = start_counting_server(0)
    nginx = start_nginx(engine)
    started = time.monotonic()
    try:
        for label, window in itertools.product(args.sizes, args.windows):
            proxy = start_checkout_proxy(engine, provider, label, window)
            results["settings"]["worker_processes"] = len(proxy.worker_pids())
            try:
                key = f"{label}/w{window}"
                cell = measure_cell(engine, nginx, proxy, provider, indices[label]["index"], window, queries, args)
                cell.update(doc_bytes=SIZES[label], window=window)
                results["cells"][key] = cell
                e, n, h, m = cell["engine"], cell["nginx"], cell["proxy_hit"], cell["proxy_miss"]
                log(f"{key} ({cell['outcome']}; engine answer {fmt(e['answer_bytes'], 1e-6)} MB): "
                    f"engine p50 {fmt(e['p50_ms'])} ms; nginx CPU {fmt(n['cpu_ms_per_request'], digits=3)} ms/req;"
                    f" proxy hit p50 {fmt(h['p50_ms'])} ms, CPU {fmt(h['cpu_ms_per_request'])} ms/search "
                    f"({h['provider_calls_during_wrk']} provider calls during wrk); miss CPU "
                    f"{fmt(m['cpu_ms_per_search'])} ms/search over {m['searches']}; "
                    f"{time.monotonic() - started:.0f} s so far")
            finally:
                proxy.stop()
    finally:
        nginx.stop()
        provider.stop()
    results["elapsed_s"] = time.monotonic() - started
    results["settings_differ"] = started_proxies()
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    too_large = [k for k, c in results["cells"].items() if c["outcome"] == "candidates_too_large"]
    if too_large:
        log(f"answered lexically (candidates_too_large, past MAX_CANDIDATE_BYTES "
            f"{int(shipped_default('MAX_CANDIDATE_BYTES')) >> 20} MiB): {', '.join(too_large)}")
    save_json("scaling.json", results)
    return results


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (about 2 minutes): checks the machinery")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of engine/nginx/proxy (default 3)")
    p.add_argument("--queries", type=int, default=20, help="distinct queries cycled through (default 20)")
    p.add_argument("--warm-max-s", type=float, default=20.0, help="time bound on the warm pass (default 20)")
    p.add_argument("--miss-count", type=int, default=150, help="cache-miss searches per cell (default 150)")
    p.add_argument("--miss-max-s", type=float, default=8.0, help="time bound on the miss searches (default 8)")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--windows", nargs="+", type=int, default=list(WINDOWS))
    p.add_argument("--engine-port", type=int, default=9400)
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
