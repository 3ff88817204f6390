"""The demo's measurement: nDCG@10 of the proxy's lexical and reranked answers over a judged set.

Everything goes through the proxy, as a user's first minutes would: the corpus is written through
it (so write warming, not a warm command, fills the vector store), the evaluation waits for the
background embedder to catch up with those writes, then sends every judged query twice with the
benchmarks' query DSL (bench/relevance.py). The lexical column asks for `rerank.score_mode:
lexical`, which cuts the page from the same candidate window in the engine's order; the reranked
column sends the search as is. Same DSL, same window, same top 10: only the reranking differs.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rerank_proxy.config import Settings
from rerank_proxy.console.beir import EvalQuery, load_folder
from rerank_proxy.console.ndcg import K, mean, ndcg_at_k
from rerank_proxy.errors import ProxyError
from rerank_proxy.local.warming import written_texts

CRANFIELD = Path("/work/shared/datasets/cranfield")
EVAL_INDEX = "rerank-demo-cranfield"
BULK_DOCS = 100              # per _bulk: each write is queued for embedding as soon as it lands
WARM_TIMEOUT_S = 3600.0      # a 2-core host at load average 10-22 embedded 1,396 documents in 868 s (1.6/s)
RERANKED = ("reranked", "cached")
# The embedder's counters that end a queued document's wait, whether it was stored or lost.
_HANDLED = ("embedded", "already_stored", "dropped", "failed")

# `wait(predicate, what, timeout_s)`: the demo's own `poll` below; tests pass their wait_until.
Wait = Callable[[Callable[[], Any], str, float], Any]
Progress = Callable[[int, int], None]


class EvalError(Exception):
    """The evaluation cannot run (dataset unreadable, a write refused by the engine)."""


@dataclass(frozen=True, slots=True)
class Collection:
    name: str                      # the dataset folder's name
    docs: list[dict[str, str]]     # {"_id", "title", "text"}
    queries: list[EvalQuery]       # each with its judgments, restricted to `docs`


def load_collection(folder: Path, max_docs: int | None = None, max_queries: int | None = None) -> Collection:
    """A BEIR folder's corpus and judged queries. A slice keeps the first `max_docs` documents and
    only the queries with a relevant document among them, so every query kept is evaluable."""
    docs: list[dict[str, str]] = []
    try:
        with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    doc = json.loads(line)
                    docs.append({"_id": str(doc["_id"]), "title": doc.get("title") or "",
                                 "text": doc.get("text") or ""})
        judged = load_folder(str(folder))
    except (OSError, ValueError, KeyError, TypeError, ProxyError) as exc:
        # missing files, bad JSON (a ValueError), a line without "_id" or not an object, the console
        # loader's own refusals (ProxyError)
        raise EvalError(f"cannot read the dataset in {folder}: {exc}") from None
    docs = docs[:max_docs] if max_docs is not None else docs
    kept = {d["_id"] for d in docs}
    queries = []
    for item in judged:
        qrels = {doc: grade for doc, grade in (item.qrels or {}).items() if doc in kept}
        if any(grade > 0 for grade in qrels.values()):
            queries.append(EvalQuery(item.id, item.text, qrels))
    return Collection(folder.name, docs, queries[:max_queries] if max_queries is not None else queries)


def search_body(text: str) -> dict[str, Any]:
    """bench/relevance.py's Cranfield search. It asks for 100 hits; nDCG@10 reads only the first
    10, and the proxy reranks its 100-hit window (RERANK_WINDOW) whatever the page size."""
    return {"query": {"multi_match": {"query": text, "fields": ["title", "text"]}}, "size": K, "_source": False}


def write_corpus(client: httpx.Client, settings: Settings, index: str, docs: list[dict[str, str]]) -> int:
    """A fresh index with the benchmarks' mapping, written through the proxy in small bulks.

    Returns how many distinct texts those writes queue for embedding: computed with the proxy's own
    write-warming rule, so the wait below knows when the embedder has caught up."""
    client.delete(f"/{index}")  # a 404 for a first run is fine: the index must be fresh
    created = client.put(f"/{index}", json={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}})
    if created.status_code != 200:
        raise EvalError(f"creating index {index} failed: {created.status_code} {created.text[:300]}")
    texts: set[str] = set()
    path = f"/{index}/_bulk"
    for start in range(0, len(docs), BULK_DOCS):
        lines = []
        for doc in docs[start:start + BULK_DOCS]:
            lines.append(json.dumps({"index": {"_id": doc["_id"]}}))
            lines.append(json.dumps({"title": doc["title"], "text": doc["text"]}))
        body = ("\n".join(lines) + "\n").encode()
        answer = client.post(path, content=body, headers={"content-type": "application/x-ndjson"})
        if answer.status_code != 200 or answer.json().get("errors"):
            raise EvalError(f"writing to {index} failed: {answer.status_code} {answer.text[:300]}")
        texts.update(written_texts(settings, "POST", path, body))
    client.post(f"/{index}/_refresh").raise_for_status()
    return len(texts)


def vectors_status(client: httpx.Client) -> dict[str, Any] | None:
    """The background embedder's counters as `/_rerank/ready` reports them (None: no local model)."""
    ready = client.get("/_rerank/ready")
    ready.raise_for_status()
    reranker = ready.json().get("reranker") or {}
    vectors = reranker.get("vectors")
    return vectors if isinstance(vectors, dict) else None


@dataclass(slots=True)
class CaughtUp:
    """Predicate: the embedder has handled `expected` more documents than at `baseline`, and has
    nothing left queued or in flight. Each poll reports (handled, expected) to `progress`."""

    client: httpx.Client
    baseline: dict[str, Any]
    expected: int
    progress: Progress | None = None
    handled: int = 0

    def __call__(self) -> bool:
        status = vectors_status(self.client)
        if status is None:
            return True
        self.handled = sum(int(status[k]) - int(self.baseline[k]) for k in _HANDLED)
        if self.progress is not None:
            self.progress(min(self.handled, self.expected), self.expected)
        return self.handled >= self.expected and not status["queue_depth"] and not status["in_flight"]


def poll(predicate: Callable[[], Any], what: str, timeout_s: float, interval_s: float = 0.5) -> bool:
    """The demo's wait: poll until `predicate` holds (True) or `timeout_s` passes (False, the
    evaluation then runs on a store that has not caught up, and says so)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True


@dataclass(slots=True)
class Pass:
    """One run of every query through the proxy."""

    ndcg: float | None
    seconds: float
    outcomes: Counter[str] = field(default_factory=Counter)   # X-Rerank values
    reasons: Counter[str] = field(default_factory=Counter)    # X-Rerank-Reason of the others

    @property
    def searches(self) -> int:
        return sum(self.outcomes.values())

    @property
    def reranked_share(self) -> float:
        return sum(self.outcomes[o] for o in RERANKED) / self.searches if self.searches else 0.0


def run_pass(client: httpx.Client, index: str, queries: list[EvalQuery], rerank: dict[str, Any] | None) -> Pass:
    started = time.perf_counter()
    scores: list[float | None] = []
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for item in queries:
        body = search_body(item.text)
        if rerank is not None:
            body["rerank"] = rerank
        answer = client.post(f"/{index}/_search", json=body)
        answer.raise_for_status()
        ranking = [str(hit["_id"]) for hit in answer.json()["hits"]["hits"]]
        scores.append(ndcg_at_k(ranking, item.qrels or {}))
        outcome = answer.headers.get("x-rerank", "none")
        outcomes[outcome] += 1
        if outcome not in RERANKED and answer.headers.get("x-rerank-reason"):
            reasons[answer.headers["x-rerank-reason"]] += 1
    return Pass(mean(scores), time.perf_counter() - started, outcomes, reasons)


@dataclass(slots=True)
class Evaluation:
    documents: int
    lexical: Pass
    reranked: Pass
    write_seconds: float
    warm_seconds: float
    caught_up: bool                 # the embedder caught up with the writes before the passes
    expected: int                   # distinct texts the writes queued
    handled: int                    # of which the embedder had handled
    vectors: dict[str, Any] | None  # the embedder's counters after the passes

    @property
    def queries(self) -> int:
        return self.reranked.searches

    @property
    def delta(self) -> float | None:
        if self.lexical.ndcg is None or self.reranked.ndcg is None:
            return None
        return self.reranked.ndcg - self.lexical.ndcg

    @property
    def wall_seconds(self) -> float:
        return self.write_seconds + self.warm_seconds + self.lexical.seconds + self.reranked.seconds


def evaluate(proxy_url: str, settings: Settings, collection: Collection, *, index: str = EVAL_INDEX,
             wait: Wait = poll, progress: Progress | None = None,
             warm_timeout_s: float = WARM_TIMEOUT_S) -> Evaluation:
    """Write the collection through the proxy, wait for write warming, run both passes."""
    with httpx.Client(base_url=proxy_url, timeout=120) as client:
        baseline = vectors_status(client) or {}
        started = time.perf_counter()
        expected = write_corpus(client, settings, index, collection.docs)
        written = time.perf_counter()
        caught_up = CaughtUp(client, baseline, expected, progress)
        done = bool(wait(caught_up, "the background embedder to catch up with the writes", warm_timeout_s))
        warmed = time.perf_counter()
        lexical = run_pass(client, index, collection.queries, {"score_mode": "lexical"})
        reranked = run_pass(client, index, collection.queries, None)
        vectors = vectors_status(client)
    return Evaluation(len(collection.docs), lexical, reranked, written - started, warmed - written, done,
                      expected, caught_up.handled, vectors)


HEADER = ("queries", "nDCG@10 lexical", "nDCG@10 reranked", "delta", "searches reranked", "wall time")


def table(result: Evaluation) -> str:
    """The one-row result table, then where the time went and what the proxy said."""
    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    delta = "-" if result.delta is None else f"{result.delta:+.4f}"
    row = (str(result.queries), score(result.lexical.ndcg), score(result.reranked.ndcg), delta,
           f"{result.reranked.reranked_share:.1%}", f"{result.wall_seconds:.1f} s")
    widths = [max(len(h), len(c)) for h, c in zip(HEADER, row, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |",
             "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"]
    state = "caught up" if result.caught_up else "had NOT caught up (timed out)"
    lines.append(f"time: writing {result.documents} documents {result.write_seconds:.1f} s, background embedding "
                 f"{result.warm_seconds:.1f} s ({state}: {result.handled} of {result.expected} texts), "
                 f"lexical pass {result.lexical.seconds:.1f} s, reranked pass {result.reranked.seconds:.1f} s")
    lost = {k: result.vectors[k] for k in ("dropped", "failed") if result.vectors and result.vectors.get(k)}
    if lost:
        lines.append(f"the embedder lost documents: {_counts(Counter(lost))}")
    lines.append(f"X-Rerank, lexical pass: {_counts(result.lexical.outcomes)}; "
                 f"reranked pass: {_counts(result.reranked.outcomes)}"
                 + (f" (reasons: {_counts(result.reranked.reasons)})" if result.reranked.reasons else ""))
    return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counter.most_common()) or "none"
