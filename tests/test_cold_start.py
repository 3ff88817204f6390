"""Cold documents are a capacity state: the background embedder, the breaker, and a fresh proxy.

Unit parts drive the embedder with a gated model (an Event decides when it may run), so order and
bounds are checked without timing. The integration part is the user's first minute: the proxy on
its defaults, a fresh vector store, a fresh 1,000-document index, no warm command, and traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import wait
from pathlib import Path

import httpx
import numpy as np
import pytest

from rerank_proxy.config import Settings, load_settings
from rerank_proxy.local.embedder import SEARCH, STARTUP, WRITE, BackgroundEmbedder, Dropped
from rerank_proxy.scoring.providers.base import RerankError, RerankResult
from rerank_proxy.scoring.providers.errors import (
    RerankConnectionError,
    RerankDeadlineExceeded,
    RerankSaturated,
    RerankVectorsCold,
    reason_of,
)
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from tests.fixtures.proxy import run_proxy
from tests.support_wait import wait_until

DIM = 384


class DictStore:
    """The store protocol over a dict (the SQLite store has its own tests)."""

    def __init__(self) -> None:
        self.data: dict[bytes, np.ndarray] = {}

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        return {k: self.data[k] for k in keys if k in self.data}

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> int:
        items = list(items)
        self.data.update(items)
        return len(items)

    def as_stored(self, vectors: np.ndarray) -> np.ndarray:
        return vectors

    def count(self) -> int:
        return len(self.data)


class GatedModel:
    """Embeds after `gate` is set; records each call's texts and the calling thread's niceness."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[list[str]] = []
        self.niceness: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.started.set()
        assert self.gate.wait(30)
        self.calls.append(list(texts))
        self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return np.ones((len(texts), DIM), dtype=np.float32)


def k(name: str) -> bytes:
    return name.encode()


def test_search_documents_go_first_and_duplicates_are_embedded_once():
    model = GatedModel()
    embedder = BackgroundEmbedder(model, DictStore(), threads=1, chunk=1)
    try:
        first = embedder.submit([(k("w0"), "w0")], WRITE)      # taken by the worker, blocks on the gate
        assert model.started.wait(30)
        later = embedder.submit([(k("s0"), "w0-dup-key")], STARTUP)
        later |= embedder.submit([(k("w1"), "w1"), (k("w2"), "w2")], WRITE)
        later |= embedder.submit([(k("s1"), "s1"), (k("w2"), "w2")], SEARCH)   # w2 promoted
        again = embedder.submit([(k("w1"), "w1")], WRITE)
        assert again[k("w1")] is later[k("w1")]               # deduplicated: the same future
        assert embedder.status()["queue_depth"] == 4
        model.gate.set()
        _, pending = wait([*first.values(), *later.values()], timeout=30)
        assert not pending
    finally:
        embedder.close()
    order = [texts[0] for texts in model.calls]
    assert order == ["w0", "s1", "w2", "w1", "w0-dup-key"]   # search, then write, then start-up
    assert embedder.stats.embedded == 5
    assert embedder.store.count() == 5
    assert all(n >= 5 for n in model.niceness)                # worker threads run at nice +5


def test_a_full_queue_drops_work_and_searches_evict_lower_priority():
    model = GatedModel()
    embedder = BackgroundEmbedder(model, DictStore(), threads=1, chunk=1, max_queue=2)
    try:
        embedder.submit([(k("busy"), "busy")], WRITE)
        assert model.started.wait(30)
        queued = embedder.submit([(k("w1"), "w1"), (k("w2"), "w2"), (k("w3"), "w3")], STARTUP)
        assert set(queued) == {k("w1"), k("w2")}
        assert embedder.stats.dropped == 1
        taken = embedder.submit([(k("s1"), "s1")], SEARCH)
        assert k("s1") in taken
        assert embedder.stats.dropped == 2
        with pytest.raises(Dropped):
            queued[k("w2")].result(timeout=30)
        status = embedder.status()
        assert status["queue_depth"] == 2
        assert status["dropped"] == 2
        model.gate.set()
        assert taken[k("s1")].result(timeout=30).shape == (DIM,)
    finally:
        embedder.close()


def test_documents_already_stored_are_not_embedded_again():
    store = DictStore()
    store.put_many([(k("a"), np.zeros(DIM, dtype=np.float32))])
    model = GatedModel()
    model.gate.set()
    embedder = BackgroundEmbedder(model, store, threads=1)
    try:
        futures = embedder.submit([(k("a"), "a"), (k("b"), "b")], WRITE)
        wait(futures.values(), timeout=30)
    finally:
        embedder.close()
    assert model.calls == [["b"]]
    assert embedder.stats.already_stored == 1


# --- the breaker sees provider failures only --------------------------------------------------


class ScriptedProvider:
    name, model, pointwise = "scripted", "m", True

    def __init__(self, error: RerankError | None = None, gate: asyncio.Event | None = None) -> None:
        self.error = error
        self.gate = gate
        self.queries: list[str] = []

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.queries.append(query)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return RerankResult(scores=[1.0] * len(documents))

    async def aclose(self) -> None:
        pass


def resilience_settings(**overrides) -> Settings:
    base = Settings(rerank_deadline_ms=1000, rerank_attempt_timeout_ms=1000, rerank_breaker_failures=1)
    return base.with_overrides(**overrides)


async def test_cold_vectors_never_open_the_breaker_but_a_failing_provider_does():
    cold = ResilientReranker(ScriptedProvider(RerankVectorsCold("cold")), resilience_settings())
    for _ in range(20):
        with pytest.raises(RerankVectorsCold) as info:
            await cold.rerank("q", ["a"])
    assert cold.breaker.state == "closed"
    assert cold.stats.capacity == 20
    assert cold.stats.attempts == 20                           # never retried either
    assert reason_of(info.value) == "vectors_cold"
    broken = ResilientReranker(ScriptedProvider(RerankConnectionError("refused")),
                               resilience_settings(rerank_max_retries=0))
    with pytest.raises(RerankConnectionError):
        await broken.rerank("q", ["a"])
    assert broken.breaker.state == "open"


async def test_searches_queued_behind_busy_slots_are_capacity_not_failures():
    gate = asyncio.Event()
    reranker = ResilientReranker(ScriptedProvider(gate=gate),
                                 resilience_settings(rerank_max_concurrency=1, rerank_deadline_ms=200,
                                                     rerank_breaker_failures=2, rerank_max_retries=0))
    slow = asyncio.create_task(reranker.rerank("slow", ["a"]))
    queued = asyncio.create_task(reranker.rerank("queued", ["a"]))
    results = await asyncio.gather(slow, queued, return_exceptions=True)
    gate.set()
    assert type(results[0]) is RerankDeadlineExceeded          # the provider itself was slow: counts
    assert isinstance(results[1], RerankSaturated)             # only waited for a slot: does not
    assert reranker.breaker.consecutive_failures == 1
    assert reranker.breaker.state == "closed"


async def test_query_text_is_cut_to_rerank_max_query_chars():
    provider = ScriptedProvider()
    reranker = ResilientReranker(provider, resilience_settings(rerank_max_query_chars=50))
    await reranker.rerank("x" * 2_000_000, ["a"])
    await reranker.rerank("short", ["a"])
    assert provider.queries == ["x" * 50, "short"]
    assert reranker.stats.queries_truncated == 1


# --- the user's first minute -----------------------------------------------------------------

WORDS = ["wing", "flutter", "engine", "noise", "jet", "inlet", "shock", "wave", "boundary", "layer", "transition",
         "heat", "transfer", "rotor", "blade", "propeller", "panel", "supersonic", "hypersonic", "subsonic",
         "laminar", "turbulent", "pressure", "drag", "lift", "nozzle", "exhaust", "mixing", "vortex", "wake",
         "cylinder", "plate", "cone", "body", "flow", "stall"]


def synthetic_corpus(n: int) -> list[dict[str, str]]:
    rng = random.Random(15)
    return [{"title": " ".join(rng.sample(WORDS, 3)), "body": " ".join(rng.choices(WORDS, k=25))}
            for _ in range(n)]


def bulk_load(url: str, index: str, docs: list[dict[str, str]]) -> None:
    lines = []
    for i, doc in enumerate(docs):
        lines += [json.dumps({"index": {"_index": index, "_id": str(i)}}), json.dumps(doc)]
    with httpx.Client(base_url=url, timeout=120) as client:
        created = client.put(f"/{index}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
        assert created.status_code == 200, created.text
        bulk = client.post("/_bulk?refresh=true", content="\n".join(lines) + "\n",
                           headers={"content-type": "application/x-ndjson"})
        assert bulk.status_code == 200
        assert not bulk.json()["errors"]


def search(client: httpx.Client, index: str, text: str, rerank: dict | None = None) -> httpx.Response:
    body: dict = {"query": {"multi_match": {"query": text, "fields": ["title", "body"]}}, "size": 10}
    if rerank:
        body["rerank"] = rerank
    response = client.post(f"/{index}/_search", json=body)
    assert response.status_code == 200, response.text
    return response


def reranked(response: httpx.Response) -> bool:
    return response.headers.get("x-rerank") in ("reranked", "cached")


@pytest.mark.slow  # embeds a fresh 1,000-document index from traffic: 15-25 s
def test_a_fresh_proxy_on_defaults_warms_from_traffic_alone(es_engine, index_name: str, tmp_path: Path):
    """Defaults, fresh store, fresh 1,000-document index, no warm command: the reranked share of
    searches rises to >= 95%; a cold index and one client's 2 MB query turn nothing off elsewhere."""
    warm_index, cold_index = index_name, f"{index_name}-cold"
    bulk_load(es_engine.url, warm_index, synthetic_corpus(1000))
    bulk_load(es_engine.url, cold_index, synthetic_corpus(1500)[500:])
    rng = random.Random(7)
    queries = [" ".join(rng.sample(WORDS, 2)) for _ in range(40)]
    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOG_LEVEL": "warning",
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    assert settings.rerank_provider == "local"                 # the shipped default
    shares: list[float] = []
    with run_proxy(settings) as proxy, httpx.Client(base_url=proxy.url, timeout=60) as client:

        def a_pass_is_reranked() -> bool:
            responses = [search(client, warm_index, q) for q in queries]
            shares.append(sum(map(reranked, responses)) / len(responses))
            cold_reasons = {r.headers.get("x-rerank-reason") for r in responses if not reranked(r)}
            assert cold_reasons <= {"vectors_cold"}, cold_reasons
            return shares[-1] >= 0.95

        wait_until(a_pass_is_reranked, lambda: f"a pass with >= 95% reranked (share per pass: {shares})",
                   timeout_s=300, interval_s=0)
        print(f"reranked share per pass: {shares}")
        assert shares[0] < shares[-1], shares                  # it rose: the first pass met a cold store

        # Another index, all cold, searched many times over (more than RERANK_BREAKER_FAILURES),
        # and one client's 2 MB query text: the warm index keeps being reranked.
        for q in queries[:12]:
            search(client, cold_index, f"{q} cylinder")
        huge = search(client, warm_index, queries[0], rerank={"query": "noise " * 350_000})
        assert huge.headers.get("x-rerank-reason", "") not in ("RerankDeadlineExceeded", "RerankTimeout")
        after = [search(client, warm_index, q) for q in queries[:10]]
        assert all(map(reranked, after)), [r.headers.get("x-rerank-reason") for r in after]
        assert proxy.runtime.reranker.breaker.state == "closed"
        ready = client.get("/_rerank/ready").json()
        assert "open" not in json.dumps(ready.get("reranker", {}))
