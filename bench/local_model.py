"""Speed of the built-in reranker on Cranfield documents: cold embedding, warm and cold reranks.

    .venv/bin/python bench/local_model.py [--corpus /work/shared/datasets/cranfield] [--runs 5]

Prints one table per token limit (128, 192 and 256 by default). "Cold" = the documents' vectors are
not stored and the model is already loaded; "stored" = all 100 candidates are in the vector store,
so a rerank is one query embedding plus a dot product. Every rerank goes through
`LocalReranker.rerank()` exactly as the proxy calls it (event loop, executor threads, SQLite). The machine's load average is printed
with the results because on a shared machine it moves the numbers a lot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from proxy.config import IndexRule, Settings
from proxy.rerank.local import LocalReranker
from proxy.rerank.minilm import shared_model
from proxy.rerank.vector_store import VectorStore
from proxy.search.hit_text import hit_text

RULE = IndexRule(pattern="*")  # all string fields: title, then text


def load_corpus(folder: Path) -> tuple[list[str], list[str]]:
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    texts = [hit_text({"title": d.get("title", ""), "text": d.get("text", "")}, RULE) for d in docs]
    queries = [json.loads(line)["text"] for line in (folder / "queries.jsonl").open()]
    return texts, queries


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(values: list[float], cpu: list[float] | None = None) -> str:
    text = (f"p50 {statistics.median(values) * 1000:.1f} ms, p95 {pct(values, 95) * 1000:.1f} ms, "
            f"min {min(values) * 1000:.1f} ms")
    if cpu:
        text += f"; CPU p50 {statistics.median(cpu) * 1000:.0f} ms"
    return text


class Timer:
    """Wall and process CPU time (all threads) of a block: CPU time is what a busy machine distorts least."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> "Timer":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.process_time() - self._c)


async def bench(max_tokens: int, texts: list[str], queries: list[str], runs: int, rng: random.Random) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    started = time.perf_counter()
    model = shared_model(max_tokens)
    rows.append(("model load", f"{(time.perf_counter() - started) * 1000:.0f} ms"))

    order = list(range(len(texts)))
    rng.shuffle(order)
    samples = [[texts[i] for i in order[k * 100:(k + 1) * 100]] for k in range(len(order) // 100)]
    model.embed(samples[-1][:10])  # first-call allocations out of the way

    tokens = [min(len(ids), max_tokens) for ids in model.token_ids([t for s in samples[:runs] for t in s])]
    rows.append(("tokens per doc (mean)", f"{statistics.mean(tokens):.0f}"))

    cold = Timer()
    for sample in samples[:runs]:
        with cold:
            model.embed(sample)
    rows.append(("embed 100 docs, cold", ms(cold.wall, cold.cpu)))

    single = Timer()
    for q in queries[:100]:
        with single:
            model.embed([q])
    rows.append(("embed 1 query", ms(single.wall, single.cpu)))

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(local_vector_store=str(Path(tmp) / "v.sqlite"), local_model_max_tokens=max_tokens)

        # Cold reranks: documents never seen (a different sample each run), new query.
        reranker = LocalReranker(settings)
        cold_rerank = Timer()
        for k, sample in enumerate(samples[runs:2 * runs]):
            with cold_rerank:
                await reranker.rerank(queries[k], sample)
        rows.append(("rerank 100, cold (embed + store)", ms(cold_rerank.wall, cold_rerank.cpu)))

        # Stored: one candidate set, warmed; every query new (embedded), then every query again (cached).
        candidates = samples[0]
        await reranker.embed_documents(candidates)
        for label, qs in (("rerank 100, stored, new query", queries[100:200]),
                          ("rerank 100, stored, cached query", queries[100:200])):
            timer = Timer()
            for q in qs:
                with timer:
                    result = await reranker.rerank(q, candidates)
                assert result.meta["embedded"] == 0
            rows.append((label, ms(timer.wall, timer.cpu)))
        await reranker.aclose()

        # Stored in SQLite only: a fresh process' view (empty in-process LRU).
        fresh = LocalReranker(settings, store=VectorStore(settings.local_vector_store, memory_entries=0))
        timer = Timer()
        for q in queries[:100]:
            with timer:
                await fresh.rerank(q, candidates)
        rows.append(("rerank 100, SQLite only, new query", ms(timer.wall, timer.cpu)))
        await fresh.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/datasets/cranfield"))
    parser.add_argument("--runs", type=int, default=5, help="cold runs (distinct 100-doc samples) per length")
    parser.add_argument("--max-tokens", default="128,192,256")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    texts, queries = load_corpus(args.corpus)
    print(f"cpus: {os.cpu_count()}  load average before: {os.getloadavg()[0]:.2f}")
    for max_tokens in (int(x) for x in args.max_tokens.split(",")):
        rows = asyncio.run(bench(max_tokens, texts, queries, args.runs, random.Random(args.seed)))
        print(f"\nmax tokens {max_tokens}")
        print("| measurement | time |\n| --- | --- |")
        for name, value in rows:
            print(f"| {name} | {value} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
