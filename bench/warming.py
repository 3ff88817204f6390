"""Warming under load: how soon a fresh store reranks on the shipped defaults, on a quiet and a busy host.

A newcomer's proxy starts with no vectors; searches answer in lexical order while the background
embedder catches up. On a host shared with other services the embedder gets only its share of the
CPU, so this bench puts `busy` CPU-bound processes beside the proxy, each in its own session (as
other services are: with autogroup scheduling each session gets an equal share of the CPU), and
measures the share of searches reranked over time.

For each busy count (0, 3, 6 by default): a fresh HOME (so the shipped store path is a new, empty
file, and no setting is changed), `rerank-proxy serve` on the shipped defaults, then every judged
Cranfield query once at t=0 (the first traffic, which queues the windows' documents), and again at
each checkpoint (60, 120, 180, 240, 300 s after the first search by default). Each pass records
the share reranked (`X-Rerank: reranked` or `cached`) and nDCG@10, against the engine's own nDCG@10.

    .venv/bin/python -m bench.warming [--busy 0 3 6] [--checkpoints 60 120 180 240 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import index_cranfield, log, machine_info, save_json, start_engine, start_proxy, started_proxies
from bench.relevance import DATASET, INDEX, one_pass, store_rows
from bench.relevance_offline import load

SHIPPED_STORE = ".cache/rerank-proxy/vectors.sqlite"  # LOCAL_VECTOR_STORE's default, under HOME
BUSY_LOOP = "while True:\n    pass\n"


def start_busy(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` CPU-bound processes, each in its own session (its own scheduling group)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)]


def stop_busy(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(10)


def warming_run(engine_url: str, busy: int, checkpoints: list[float], queries: dict[str, str],
                qrels: dict, engine_ndcg: float) -> dict[str, Any]:
    """One fresh proxy beside `busy` busy processes: a pass at t=0 and one at each checkpoint."""
    home = Path(tempfile.mkdtemp(prefix=f"warming-{busy}-"))
    store = home / SHIPPED_STORE
    procs = start_busy(busy)
    load_before = os.getloadavg()
    passes: list[dict[str, Any]] = []
    try:
        proxy = start_proxy(engine_url, provider=None, name=f"warming-busy{busy}", ready="/_rerank/health",
                            wait_workers=False, home=home)
        try:
            with httpx.Client(timeout=120) as client:
                started = time.monotonic()
                for at in [0.0, *checkpoints]:
                    wait = started + at - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)  # the schedule of the traffic, not a synchronisation
                    begun = time.monotonic() - started
                    rows_before = store_rows(store)
                    result = one_pass(client, proxy.url, queries, qrels)
                    result.update(store_rows_before=rows_before, store_rows_after=store_rows(store), at_s=at,
                                  began_s=round(begun, 1), pass_s=round(time.monotonic() - started - begun, 1),
                                  gain=result["ndcg@10"] - engine_ndcg, loadavg_1m=os.getloadavg()[0])
                    passes.append(result)
                    log(f"busy={busy} t={at:.0f}s (began {begun:.0f}s): reranked {result['reranked_share']:.1%} "
                        f"({result['partial_share']:.1%} partly), "
                        f"nDCG@10 {result['ndcg@10']:.4f} ({result['gain']:+.4f}), store {rows_before} vectors, "
                        f"load {result['loadavg_1m']:.1f}")
        finally:
            proxy.stop()
    finally:
        stop_busy(procs)
    return {"busy": busy, "loadavg_before": list(load_before), "passes": passes}


def print_table(result: dict[str, Any]) -> None:
    checkpoints = result["params"]["checkpoints"]
    print("\n| busy processes | " + " | ".join(f"after {c:.0f} s" for c in checkpoints) + " |")
    print("| --- |" + " --- |" * len(checkpoints))
    for run in result["runs"]:
        cells = [f"{p['reranked_share']:.0%}, {p['partial_share']:.0%} partly ({p['gain']:+.3f})"
                 for p in run["passes"][1:]]
        print(f"| {run['busy']} | " + " | ".join(cells) + " |")
    print(f"\nshare of searches reranked (nDCG@10 gain over the engine's {result['engine_ndcg@10']:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 3, 6])
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[60, 120, 180, 240, 300])
    args = parser.parse_args()
    _, queries, qrels = load(DATASET)
    engine_url = start_engine()
    index_cranfield(engine_url, INDEX)
    with httpx.Client(timeout=120) as client:
        engine_ndcg = one_pass(client, engine_url, queries, qrels)["ndcg@10"]
    result: dict[str, Any] = {"machine": machine_info(), "params": vars(args), "engine_ndcg@10": engine_ndcg,
                              "queries": len(queries), "runs": []}
    for busy in args.busy:
        result["runs"].append(warming_run(engine_url, busy, sorted(args.checkpoints), queries, qrels, engine_ndcg))
        result["settings_differ"] = started_proxies()
        result["machine"]["loadavg_at_end"] = list(os.getloadavg())
        save_json("warming.json", result)
    print_table(result)


if __name__ == "__main__":
    main()
