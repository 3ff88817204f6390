"""Vectors shared across replicas through Redis: embedded once, warm everywhere, even after a rollout."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from rerank_proxy.config import load_settings
from rerank_proxy.local.shared_vectors import RedisVectors, TieredVectorStore, build_store
from rerank_proxy.local.vector_store import VectorStore
from tests.fixtures.proxy import free_port, run_proxy
from tests.support_data import load_corpus
from tests.support_wait import wait_until


def test_tiered_store_reads_through_and_copies_into_the_pod_file(redis_server, tmp_path: Path):
    one = TieredVectorStore(VectorStore(tmp_path / "a.sqlite"), RedisVectors(redis_server.url, 1.0, 60))
    other = TieredVectorStore(VectorStore(tmp_path / "b.sqlite"), RedisVectors(redis_server.url, 1.0, 60))
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    one.put_many([(b"k" * 32, vector)])
    found = other.get_many([b"k" * 32, b"x" * 32])
    assert list(found) == [b"k" * 32]
    assert other.shared_hits == 1
    np.testing.assert_array_equal(found[b"k" * 32], one.get_many([b"k" * 32])[b"k" * 32])  # same float16
    assert other.local.count() == 1                               # copied into the pod's own file
    one.close()
    other.close()


def test_a_dead_redis_is_a_miss_and_the_pod_file_keeps_working(tmp_path: Path):
    dead = RedisVectors(f"redis://127.0.0.1:{free_port()}/0", 0.2, 60)
    store = TieredVectorStore(VectorStore(tmp_path / "a.sqlite"), dead)
    store.put_many([(b"k" * 32, np.ones(384, dtype=np.float32))])
    assert list(store.get_many([b"k" * 32])) == [b"k" * 32]
    assert store.missing([b"m" * 32]) == [b"m" * 32]
    assert store.shared_errors >= 2
    store.close()


def test_build_store_uses_redis_only_when_configured(tmp_path: Path):
    plain = load_settings({"LOCAL_VECTOR_STORE": str(tmp_path / "a.sqlite")})
    assert isinstance(build_store(plain), VectorStore)
    shared = load_settings({"LOCAL_VECTOR_STORE": str(tmp_path / "a.sqlite"), "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert isinstance(build_store(shared), TieredVectorStore)
    off = load_settings({"LOCAL_VECTOR_STORE": str(tmp_path / "a.sqlite"), "REDIS_URL": "redis://127.0.0.1:1/0",
                         "LOCAL_VECTOR_SHARED_TTL_S": "0"})
    assert isinstance(build_store(off), VectorStore)


def search(url: str, index: str, text: str) -> httpx.Response:
    body = {"query": {"match": {"body": "engine noise"}}, "size": 12, "rerank": {"query": text}}
    response = httpx.post(f"{url}/{index}/_search", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_two_replicas_share_vectors_and_a_rolled_pod_starts_warm(es_engine, index_name: str, redis_server,
                                                                  tmp_path: Path):
    """Replica A embeds through traffic; replica B and a pod rolled later, each with an empty file
    of its own and no time to wait for the model (LOCAL_COLD_WAIT_MS=0), rerank their first search.
    Each uses a query of its own, so the shared score cache (also in REDIS_URL) cannot answer it."""
    load_corpus(es_engine.url, index_name)

    def settings(name: str, **extra: str):
        return load_settings({"UPSTREAM_URLS": es_engine.url, "LOG_LEVEL": "warning", "REDIS_URL": redis_server.url,
                              "LOCAL_VECTOR_STORE": str(tmp_path / f"{name}.sqlite"), **extra})

    with run_proxy(settings("a")) as a:

        def reranked_on_a() -> bool:
            if search(a.url, index_name, "engine noise").headers["x-rerank"] == "reranked":
                return True
            a.runtime.reranker.inner.embedder.wait_idle(5)  # what it queued is embedded before the next try
            return False

        wait_until(reranked_on_a, "replica A to rerank", timeout_s=120)
        with run_proxy(settings("b", LOCAL_COLD_WAIT_MS="0")) as b:
            first_on_b = search(b.url, index_name, "engine jet noise")
            assert first_on_b.headers["x-rerank"] == "reranked", first_on_b.headers.get("x-rerank-reason")
            assert b.runtime.reranker.inner.embedder.stats.queued == 0     # B embedded nothing
    with run_proxy(settings("rolled", LOCAL_COLD_WAIT_MS="0")) as rolled:
        assert search(rolled.url, index_name, "noise of a jet engine").headers["x-rerank"] == "reranked"
