"""Cranfield through the proxy: does the shipped built-in reranker beat the engine alone?

Everything as a user would run it: Elasticsearch from the engine runner, the corpus indexed as
{title, text}, `rerank-proxy warm` filling a fresh vector store, then `rerank-proxy serve` on its
embedded defaults (RERANK_PROVIDER=local, auto = blend, weight 0.7, 256 tokens, window 100). Each of
the 225 judged queries is sent as a `multi_match` over title and text with `size: 100` straight to
the engine and through the proxy; nDCG@10, MRR@10 and Recall@100 are computed on both. Two more
rows use the per-request option `rerank.score_mode` to show the alternatives (cosine only, and the
blend at 0.5). Latency of the rerank step (the proxy's `Server-Timing: rerank`) is reported with
stored vectors, and cold (a fresh store, one search, deadline raised so it does not fall back).

First, the user's first minutes: the shipped defaults on a fresh store with no warm command. Pass 1
sends every query once (cold: its reranked share and nDCG@10); then the background embedder is left
to finish the documents that traffic queued (until the store's row count reaches the number of
distinct documents the windows of pass 1 held), and pass 2 sends every query again.

    .venv/bin/python -m bench.relevance
    .venv/bin/python -m bench.relevance --only-cold-start
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    REPO,
    Service,
    index_cranfield,
    load_corpus,
    log,
    machine_info,
    named,
    start_command,
    start_engine,
    start_proxy,
    started_proxies,
)
from bench.relevance_offline import load, mrr_at, ndcg_at, recall_at

DATASET = Path("/work/shared/datasets/cranfield")
INDEX = "cranfield"
RESULTS = REPO / "bench" / "results" / "relevance.json"
VARIANTS = {"engine alone": None, "proxy, shipped default (blend 0.7)": {},
            "proxy, cosine only": {"score_mode": "rerank"}, "proxy, blend 0.5": {"blend_weight": 0.5}}
_TIMING = re.compile(r"rerank;dur=([0-9.]+)")


def start_relevance_proxy(engine_url: str, store: Path, name: str, **extra: Any) -> Service:
    """The shipped defaults (built-in model) on the vector store `store`, plus `extra` (from `named`);
    ready once it answers /_rerank/health, as a user's first search would find it."""
    return start_proxy(engine_url, provider=None, name=name, ready="/_rerank/health", wait_workers=False,
                       LOCAL_VECTOR_STORE=str(store), **extra)


def search(client: httpx.Client, url: str, query: str, options: dict | None) -> tuple[list[str], httpx.Response]:
    body = {"query": {"multi_match": {"query": query, "fields": ["title", "text"]}}, "size": 100, "_source": False}
    if options:
        body["rerank"] = options
    response = client.post(f"{url}/{INDEX}/_search", json=body)
    response.raise_for_status()
    return [h["_id"] for h in response.json()["hits"]["hits"]], response


def store_rows(store: Path) -> int:
    """Rows in the proxy's vector store, read from the file as any operator could."""
    if not store.exists():
        return 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM vectors").fetchone()[0]


def wait_until_stored(store: Path, expected: int, limit_s: float = 1800.0) -> float:
    """Seconds until the store holds `expected` vectors (every distinct text the traffic showed it)."""
    started = time.monotonic()
    while store_rows(store) < expected and time.monotonic() - started < limit_s:
        time.sleep(2.0)
    return time.monotonic() - started


def one_pass(client: httpx.Client, url: str, queries: dict[str, str], qrels: dict,
             seen: set[str] | None = None) -> dict[str, Any]:
    """nDCG@10 over all queries, the share the proxy reranked, and the rerank step's p50."""
    ndcg, reranked, partial, rerank_ms = [], 0, 0, []
    reasons: dict[str, int] = {}
    for qid, text in queries.items():
        ranked, response = search(client, url, text, None)
        if seen is not None:
            seen.update(ranked)
        ndcg.append(ndcg_at(ranked, qrels[qid]))
        outcome = response.headers.get("x-rerank")
        if outcome in ("reranked", "cached"):
            reranked += 1
            partial += response.headers.get("x-rerank-reason") == "vectors_partial"  # cold hits kept in place
        elif outcome is not None:
            reason = response.headers.get("x-rerank-reason", "?")
            reasons[reason] = reasons.get(reason, 0) + 1
        if m := _TIMING.search(response.headers.get("server-timing", "")):
            rerank_ms.append(float(m.group(1)))
    return {"ndcg@10": statistics.fmean(ndcg), "reranked_share": reranked / len(queries),
            "partial_share": partial / len(queries),
            "rerank_ms_p50": statistics.median(rerank_ms) if rerank_ms else 0.0, "fallback_reasons": reasons}


def cold_start(engine_url: str, queries: dict[str, str], qrels: dict, folder: Path) -> dict:
    """Shipped defaults, fresh store, no warm: pass 1 cold, pass 2 after the traffic-fed warm-up."""
    seen: set[str] = set()
    with httpx.Client(timeout=120) as client:
        engine = one_pass(client, engine_url, queries, qrels, seen)
    corpus = {str(d["_id"]): (d.get("title", ""), d.get("text", "")) for d in load_corpus()}
    expected = len({corpus[i] for i in seen})  # identical documents share one vector
    store = folder / "cold-start.sqlite"
    proxy = start_relevance_proxy(engine_url, store, "relevance-cold-start")
    try:
        with httpx.Client(timeout=120) as client:
            started = time.perf_counter()
            first = one_pass(client, proxy.url, queries, qrels)
            first["seconds"] = time.perf_counter() - started
            log(f"cold start pass 1: reranked {first['reranked_share']:.1%}, nDCG@10 {first['ndcg@10']:.4f}")
            settled = wait_until_stored(store, expected)
            rows = store_rows(store)
            log(f"store at {rows} of {expected} window documents' vectors after {settled:.0f} s more")
            second = one_pass(client, proxy.url, queries, qrels)
            log(f"cold start pass 2: reranked {second['reranked_share']:.1%}, nDCG@10 {second['ndcg@10']:.4f}")
    finally:
        proxy.stop()
    return {"engine_ndcg@10": engine["ndcg@10"], "pass1": first, "settled_s": settled,
            "store_rows": rows, "expected_rows": expected, "pass2": second, "machine": machine_info(),
            "settings_differ": {k: v for k, v in started_proxies().items() if k.startswith("relevance-cold-start")}}


def print_cold_start(result: dict) -> None:
    base = result["engine_ndcg@10"]
    print("\n| shipped defaults, fresh store, no warm (Cranfield, 225 queries) | reranked | nDCG@10 | vs engine |")
    print("| --- | --- | --- | --- |")
    print(f"| engine alone | - | {base:.4f} | +0.0000 |")
    for name, key in (("pass 1 (cold)", "pass1"), ("pass 2 (store warmed by pass 1's traffic)", "pass2")):
        row = result[key]
        print(f"| {name} | {row['reranked_share']:.1%} | {row['ndcg@10']:.4f} | {row['ndcg@10'] - base:+.4f} |")
    print(f"\npass 1 took {result['pass1']['seconds']:.1f} s, fallback reasons {result['pass1']['fallback_reasons']}; "
          f"the store held {result['store_rows']} of the {result['expected_rows']} window documents "
          f"{result['settled_s']:.0f} s later; "
          f"pass 2 fallback reasons {result['pass2']['fallback_reasons']}")


def warm_store(engine_url: str, store: Path) -> float:
    """`rerank-proxy warm` into a fresh store, as a user would; returns its seconds."""
    started = time.perf_counter()
    warm = start_command("warm", ["warm", "--index", INDEX, "--url", engine_url], LOCAL_VECTOR_STORE=str(store))
    if warm.proc.wait() != 0:
        raise SystemExit(f"warm failed:\n{warm.log_tail()}")
    warm_s = time.perf_counter() - started
    log(f"warm: 1,400 documents embedded in {warm_s:.1f} s")
    return warm_s


def rank_variants(client: httpx.Client, engine_url: str, proxy_url: str, queries: dict[str, str],
                  qrels: dict) -> tuple[dict[str, dict[str, float]], dict[str, int], list[float]]:
    """Every judged query through each of VARIANTS: (metrics per variant, X-Rerank outcomes through the
    proxy, the rerank step's ms of the shipped default)."""
    rows: dict[str, dict[str, float]] = {}
    outcomes: dict[str, int] = {}
    rerank_ms: list[float] = []
    for name, options in VARIANTS.items():
        ndcg, mrr, recall = [], [], []
        for n, (qid, text) in enumerate(queries.items(), 1):
            url = engine_url if options is None else proxy_url
            ranked, response = search(client, url, text, options)
            if options is not None:
                outcome = response.headers.get("x-rerank", "?")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if options == {} and (m := _TIMING.search(response.headers.get("server-timing", ""))):
                    rerank_ms.append(float(m.group(1)))
            ndcg.append(ndcg_at(ranked, qrels[qid]))
            mrr.append(mrr_at(ranked, qrels[qid]))
            recall.append(recall_at(ranked, qrels[qid]))
            if n % 75 == 0:
                log(f"{name}: {n}/{len(queries)} queries")
        rows[name] = {"ndcg@10": statistics.fmean(ndcg), "mrr@10": statistics.fmean(mrr),
                      "recall@100": statistics.fmean(recall)}
    return rows, outcomes, rerank_ms


def cold_reranks(engine_url: str, folder: Path, queries: dict[str, str], runs: int) -> list[float]:
    """The rerank step's ms for one search on a fresh store (deadline raised so it does not fall back)."""
    cold_ms = []
    for run in range(runs):
        fresh = folder / f"cold-{run}.sqlite"
        proxy = start_relevance_proxy(engine_url, fresh, f"relevance-cold-{run}",
                                      **named(RERANK_DEADLINE_MS="60000", RERANK_ATTEMPT_TIMEOUT_MS="60000"))
        with httpx.Client(timeout=120) as client:
            _, response = search(client, proxy.url, list(queries.values())[run], {})
        proxy.stop()
        if m := _TIMING.search(response.headers.get("server-timing", "")):
            cold_ms.append(float(m.group(1)))
        log(f"cold run {run + 1}: rerank {cold_ms[-1]:.0f} ms")
    return cold_ms


def print_rankings(result: dict[str, Any]) -> None:
    rows = result["rows"]
    base = rows["engine alone"]["ndcg@10"]
    print(f"\n| ranking (Cranfield, {result['queries']} queries) | nDCG@10 | vs engine | MRR@10 | Recall@100 |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['ndcg@10']:.4f} | {row['ndcg@10'] - base:+.4f} | {row['mrr@10']:.4f} | "
              f"{row['recall@100']:.4f} |")
    print(f"\nX-Rerank outcomes through the proxy: {result['outcomes_through_proxy']}")
    print(f"rerank step, stored vectors: p50 {result['rerank_ms_stored']['p50']:.1f} ms, "
          f"p90 {result['rerank_ms_stored']['p90']:.1f} ms; cold (100 new documents): "
          f"{result['rerank_ms_cold']['runs']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--only-cold-start", action="store_true", help="run only the fresh-store passes")
    args = parser.parse_args()
    _, queries, qrels = load(DATASET)
    engine_url = start_engine()
    index_cranfield(engine_url, INDEX)
    folder = Path(tempfile.mkdtemp(prefix="relevance-"))
    store = folder / "vectors.sqlite"
    cold = cold_start(engine_url, queries, qrels, folder)
    if args.only_cold_start:
        RESULTS.with_name("relevance_cold_start.json").write_text(json.dumps(cold, indent=2))
        print_cold_start(cold)
        return

    warm_s = warm_store(engine_url, store)
    proxy = start_relevance_proxy(engine_url, store, "relevance")
    with httpx.Client(timeout=120) as client:
        rows, outcomes, rerank_ms = rank_variants(client, engine_url, proxy.url, queries, qrels)
    proxy.stop()
    cold_ms = cold_reranks(engine_url, folder, queries, args.cold_runs)

    result: dict[str, Any] = {
        "machine": machine_info(), "queries": len(queries), "warm_s": warm_s, "rows": rows,
        "outcomes_through_proxy": outcomes,
        "rerank_ms_stored": {"p50": statistics.median(rerank_ms), "p90": sorted(rerank_ms)[int(0.9 * len(rerank_ms))]},
        "rerank_ms_cold": {"runs": cold_ms, "p50": statistics.median(cold_ms)}, "cold_start": cold,
        "settings_differ": started_proxies()}
    RESULTS.write_text(json.dumps(result, indent=2))
    print_rankings(result)
    print_cold_start(cold)

if __name__ == "__main__":
    main()
