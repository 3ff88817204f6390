"""Speed of the built-in reranker on Cranfield documents: cold embedding, warm and cold reranks.

    .venv/bin/python bench/local_model.py [--corpus /work/shared/datasets/cranfield] [--runs 5]

Prints one table per token limit (128, 192 and 256 by default). "Cold" = the documents' vectors are
not stored (the model is loaded); "stored" = all 100 candidates are in the vector store, so a rerank
is one query embedding plus a dot product. Reranks go through `LocalReranker.rerank()` exactly as
the proxy calls it (event loop, executor threads, SQLite).

On a shared machine other processes distort wall times, so every measurement also records our CPU
time and the CPU the rest of the machine used meanwhile ("others", in cores, from /proc/stat). The
multi-second cold runs are repeated until others stay under --max-others cores (or attempts run out;
such samples are flagged).
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

from rerank_proxy.config import IndexRule, Settings
from rerank_proxy.local.minilm import shared_model
from rerank_proxy.local.reranker import LocalReranker
from rerank_proxy.local.vector_store import VectorStore
from rerank_proxy.search.text.hit_text import hit_text

RULE = IndexRule(pattern="*")  # all string fields: title, then text


def load_corpus(folder: Path) -> tuple[list[str], list[str]]:
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    texts = [hit_text({"title": d.get("title", ""), "text": d.get("text", "")}, RULE) for d in docs]
    queries = [json.loads(line)["text"] for line in (folder / "queries.jsonl").open()]
    return texts, queries


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall time, our CPU time and the rest of the machine's CPU use, per measured block."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.others: list[float] = []   # cores used by other processes during the block

    def __enter__(self) -> Timer:
        self._busy = _busy_seconds()
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self._w, time.process_time() - self._c
        busy = _busy_seconds()
        self.wall.append(wall)
        self.cpu.append(cpu)
        if busy is not None and self._busy is not None:
            self.others.append(max(0.0, (busy - self._busy - cpu) / wall))

    def drop_last(self) -> None:
        for series in (self.wall, self.cpu, self.others):
            if series:
                series.pop()

    def summary(self) -> str:
        text = (f"p50 {statistics.median(self.wall) * 1000:.1f} ms, p95 {_pct(self.wall, 95) * 1000:.1f} ms, "
                f"min {min(self.wall) * 1000:.1f} ms | CPU p50 {statistics.median(self.cpu) * 1000:.0f} ms")
        if self.others:
            text += f" | others {statistics.mean(self.others):.2f} cores"
        return text


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def quiet_sample(timer: Timer, run, max_others: float, attempts: int) -> None:
    """One measurement of `await run()`, retried while other processes used > max_others cores."""
    for attempt in range(attempts):
        with timer:
            await run()
        if not timer.others or timer.others[-1] <= max_others or attempt == attempts - 1:
            return
        timer.drop_last()
        await asyncio.sleep(2.0)


async def bench(max_tokens: int, texts: list[str], queries: list[str], args: argparse.Namespace,
                rng: random.Random) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    started = time.perf_counter()
    model = shared_model(max_tokens)
    rows.append(("model load", f"{(time.perf_counter() - started) * 1000:.0f} ms"))

    order = list(range(len(texts)))
    rng.shuffle(order)
    samples = [[texts[i] for i in order[k * 100:(k + 1) * 100]] for k in range(len(order) // 100)]
    model.embed(samples[-1][:10])  # first-call allocations out of the way
    runs = min(args.runs, len(samples) // 2)

    tokens = [len(ids) for ids in model.token_ids([t for s in samples[:runs] for t in s])]
    rows.append(("tokens per doc (mean, after truncation)", f"{statistics.mean(tokens):.0f}"))

    cold = Timer()
    for sample in samples[:runs]:
        async def embed(sample=sample):
            model.embed(sample)
        await quiet_sample(cold, embed, args.max_others, args.attempts)
    rows.append(("embed 100 docs, cold (model only)", cold.summary()))

    single = Timer()
    for q in queries[:100]:
        with single:
            model.embed([q])
    rows.append(("embed 1 query", single.summary()))

    with tempfile.TemporaryDirectory() as tmp:
        # Cold reranks: documents never seen (a fresh store per attempt), new query.
        cold_rerank = Timer()
        for k, sample in enumerate(samples[runs:2 * runs]):
            async def rerank(k=k, sample=sample):
                path = Path(tmp) / f"cold-{k}-{time.monotonic_ns()}.sqlite"
                reranker = LocalReranker(Settings(local_vector_store=str(path), local_model_max_tokens=max_tokens))
                result = await reranker.rerank(queries[k], sample)
                await reranker.aclose()
                assert result.meta["embedded"] == len(set(sample))
            await quiet_sample(cold_rerank, rerank, args.max_others, args.attempts)
        rows.append(("rerank 100, cold (embed + store)", cold_rerank.summary()))

        # Stored: one candidate set, warmed; every query new (embedded), then every query again (cached).
        settings = Settings(local_vector_store=str(Path(tmp) / "v.sqlite"), local_model_max_tokens=max_tokens)
        reranker = LocalReranker(settings)
        candidates = samples[0]
        await reranker.embed_documents(candidates)
        for label, qs in (("rerank 100, stored, new query", queries[100:200]),
                          ("rerank 100, stored, cached query", queries[100:200])):
            timer = Timer()
            for q in qs:
                with timer:
                    result = await reranker.rerank(q, candidates)
                assert result.meta["embedded"] == 0
            rows.append((label, timer.summary()))
        await reranker.aclose()

        # Stored in SQLite only: a fresh process' view (empty in-process LRU).
        fresh = LocalReranker(settings, store=VectorStore(settings.local_vector_store, memory_entries=0))
        timer = Timer()
        for q in queries[:100]:
            with timer:
                await fresh.rerank(q, candidates)
        rows.append(("rerank 100, SQLite only, new query", timer.summary()))
        await fresh.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/datasets/cranfield"))
    parser.add_argument("--runs", type=int, default=5, help="cold runs (distinct 100-doc samples) per length")
    parser.add_argument("--max-tokens", default="128,192,256")
    parser.add_argument("--max-others", type=float, default=0.25,
                        help="retry a cold run while other processes used more cores than this")
    parser.add_argument("--attempts", type=int, default=15, help="tries per cold run before keeping a busy one")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    texts, queries = load_corpus(args.corpus)
    print(f"cpus: {os.cpu_count()}  load average before: {os.getloadavg()[0]:.2f}")
    for max_tokens in (int(x) for x in args.max_tokens.split(",")):
        rows = asyncio.run(bench(max_tokens, texts, queries, args, random.Random(args.seed)))
        print(f"\nmax tokens {max_tokens}")
        print("| measurement | wall | CPU | others |\n| --- | --- | --- | --- |")
        for name, value in rows:
            cells = [*value.split(" | "), "", ""][:3]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
