"""Warming without a warm command: from relayed writes, and from LOCAL_WARM_ON_START at start-up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from rerank_proxy.config import IndexRule, Settings, load_settings
from rerank_proxy.engine import EnginePool
from rerank_proxy.local.warmer import Warmer
from rerank_proxy.local.warming import queue_written, warm_on_start, written_texts
from rerank_proxy.local.write_docs import WrittenDoc, written_docs
from rerank_proxy.search.text.hit_text import hit_text
from rerank_proxy.search.text.text_fields import TextFieldCache
from tests.support_data import CORPUS, default_text, load_corpus


def ndjson(*items: dict) -> bytes:
    return ("\n".join(json.dumps(i) for i in items) + "\n").encode()


def test_bulk_yields_index_create_and_update_docs_with_the_right_index():
    body = ndjson({"index": {"_id": "1"}}, {"title": "a"},
                  {"create": {"_index": "other", "_id": "2"}}, {"title": "b"},
                  {"delete": {"_id": "3"}},
                  {"update": {"_id": "4"}}, {"doc": {"title": "d"}},
                  {"update": {"_id": "5"}}, {"script": {"source": "ctx._source.n++"}},
                  {"index": {"_index": ".system"}}, {"title": "hidden"},
                  {"index": {}}, {"title": "auto id"})
    assert list(written_docs("POST", "/books/_bulk", body)) == [
        WrittenDoc("books", "1", {"title": "a"}), WrittenDoc("other", "2", {"title": "b"}),
        WrittenDoc("books", "4", {"title": "d"}), WrittenDoc("books", None, {"title": "auto id"})]


def test_bulk_without_a_default_index_and_broken_lines():
    body = ndjson({"index": {"_index": "x", "_id": "1"}}, {"t": 1}, {"index": {"_id": "2"}}, {"t": 2})
    assert list(written_docs("POST", "/_bulk?refresh=true", body)) == [WrittenDoc("x", "1", {"t": 1})]
    assert list(written_docs("POST", "/_bulk", b'{"index": {"_index": "x"}}\nnot json\n')) == []
    assert list(written_docs("POST", "/_bulk", b"garbage\n{}\n")) == []


@pytest.mark.parametrize(("method", "path", "body", "expected"), [
    ("PUT", "/books/_doc/7", {"title": "t"}, [WrittenDoc("books", "7", {"title": "t"})]),
    ("POST", "/books/_doc", {"title": "t"}, [WrittenDoc("books", None, {"title": "t"})]),
    ("PUT", "/books/_create/7", {"title": "t"}, [WrittenDoc("books", "7", {"title": "t"})]),
    ("POST", "/books/_update/7", {"doc": {"title": "t"}}, [WrittenDoc("books", "7", {"title": "t"})]),
    ("POST", "/books/_update/7", {"script": "x"}, []),
    ("GET", "/books/_doc/7", {"title": "t"}, []),
    ("POST", "/books/_search", {"query": {}}, []),
    ("PUT", "/books", {"mappings": {}}, []),
    ("PUT", "/_cluster/settings", {"persistent": {}}, []),
    ("PUT", "/my%20books/_doc/1", {"t": "x"}, [WrittenDoc("my books", "1", {"t": "x"})]),
])
def test_single_document_endpoints(method: str, path: str, body: dict, expected: list[WrittenDoc]):
    assert list(written_docs(method, path, json.dumps(body).encode())) == expected


def test_texts_follow_each_index_rule_and_skip_indices_not_reranked():
    settings = Settings(rerank_indices=("books*",), rerank_fields=("title",))
    body = ndjson({"index": {"_index": "books", "_id": "1"}}, {"title": "Wing flutter", "year": 1950},
                  {"index": {"_index": "logs", "_id": "2"}}, {"title": "not reranked"})
    assert written_texts(settings, "POST", "/_bulk", body) == [
        hit_text({"title": "Wing flutter", "year": 1950}, IndexRule(pattern="*", fields=("title",)))]


class Collecting:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def submit_texts(self, texts: Iterable[str], *, startup: bool = False) -> int:
        before = len(self.texts)
        self.texts += texts
        return len(self.texts) - before


def as_warmer(sink: Collecting) -> Warmer:
    """The sink where a Warmer is asked for: queue_written calls only submit_texts (the protocol's
    embedder and status are what metrics and readiness read)."""
    return sink  # type: ignore[return-value]  # no embedder or status: queue_written uses neither


async def test_queue_written_never_raises_and_skips_huge_bodies():
    settings = Settings(max_search_body_bytes=1024)
    collected = Collecting()
    sink = as_warmer(collected)
    assert await queue_written(sink, settings, "PUT", "/b/_doc/1", b'{"title": "x"}') == 1
    assert await queue_written(sink, settings, "PUT", "/b/_doc/1", b'{"t": "' + b"x" * 2000 + b'"}') == 0
    assert await queue_written(sink, settings, "PUT", "/b/_doc/1", b"\xff\xfe not json") == 0
    assert collected.texts == ["x"]


async def test_written_documents_are_warm_for_the_next_search(tmp_path: Path):
    """Real model and store: a bulk through queue_written makes its documents searchable warm."""
    from rerank_proxy.local.reranker import LocalReranker

    settings = Settings(local_vector_store=str(tmp_path / "v.sqlite"), local_cold_wait_ms=0)
    reranker = LocalReranker(settings)
    docs = [{"title": f"Panel flutter test {i}", "body": "supersonic wind tunnel"} for i in range(12)]
    body = ndjson(*[line for i, d in enumerate(docs) for line in ({"index": {"_id": str(i)}}, d)])
    try:
        assert await queue_written(reranker, settings, "POST", "/papers/_bulk", body) == 12
        assert await asyncio.to_thread(reranker.embedder.wait_idle, 120), reranker.status()
        assert reranker.status()["embedded"] == 12
        assert reranker.status()["store_entries"] == 12
        texts = [hit_text(d, settings.default_rule()) for d in docs]
        result = await reranker.rerank("panel flutter", texts)   # no wait allowed: all stored
        assert result.meta["stored"] == 12
        assert result.meta["embedded"] == 0
    finally:
        await reranker.aclose()


async def test_start_up_warm_queues_the_configured_index(es_engine, index_name: str, tmp_path: Path):
    from rerank_proxy.local.reranker import LocalReranker

    load_corpus(es_engine.url, index_name)
    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOCAL_WARM_ON_START": index_name,
                              "LOCAL_VECTOR_STORE": str(tmp_path / "v.sqlite"), "LOCAL_COLD_WAIT_MS": "0"})
    reranker = LocalReranker(settings)
    engine = EnginePool(settings)
    try:
        fields = TextFieldCache(engine)
        assert await warm_on_start(reranker, settings, engine, fields) == len(CORPUS)
        assert await asyncio.to_thread(reranker.embedder.wait_idle, 120), reranker.status()
        texts = [default_text(doc) for doc in CORPUS]  # the mapping's text fields, as a search sends
        result = await reranker.rerank("jet engine noise", texts)     # the texts a search would build
        assert result.meta["stored"] == len(CORPUS)
        assert reranker.status()["queued"] == len(CORPUS)               # the search queued nothing more
    finally:
        engine.close()
        await reranker.aclose()
    assert await warm_on_start(reranker, Settings(), engine) == 0       # off by default


def test_a_write_through_the_proxy_warms_the_store(es_engine, index_name: str, tmp_path: Path):
    """Defaults and a fresh store: documents bulk-written through the proxy are embedded from the
    relayed request (no warm command, no search first), so the first search on them is reranked."""
    import httpx

    from tests.fixtures.proxy import run_proxy
    from tests.support_wait import wait_until

    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOG_LEVEL": "warning",
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    docs = [{"title": f"Panel flutter at Mach {i}", "body": "supersonic wind tunnel tests"} for i in range(12)]
    body = ndjson(*[line for i, d in enumerate(docs) for line in ({"index": {"_id": str(i)}}, d)])
    with run_proxy(settings) as proxy, httpx.Client(base_url=proxy.url, timeout=60) as client:
        written = client.post(f"/{index_name}/_bulk?refresh=true", content=body,
                              headers={"content-type": "application/x-ndjson"})
        assert written.status_code == 200
        assert not written.json()["errors"]

        def stored() -> int:
            vectors = client.get("/_rerank/ready").json()["reranker"]["vectors"]
            return int(vectors["store_entries"] or 0) if vectors["queue_depth"] == 0 else 0

        wait_until(lambda: stored() >= 12, "the written documents were never embedded", timeout_s=180)
        response = client.post(f"/{index_name}/_search", json={"query": {"match": {"body": "supersonic"}}})
        assert response.status_code == 200, response.headers
        assert response.headers["x-rerank"] == "reranked", response.headers


def test_concurrent_bulks_queue_a_bounded_amount_of_warming(es_engine, index_name: str, tmp_path: Path):
    """Defaults: 8 concurrent bulks of 5,000 new documents each (40,000 texts) through the proxy.
    Every write succeeds, and write warming queues at most its share of the embedder's queue (a
    tenth: 10,000 documents, minutes of work, not hours); the rest is dropped and counted."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.fixtures.proxy import run_proxy
    from tests.support_wait import wait_until

    settings = load_settings({"UPSTREAM_URLS": es_engine.url,
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    per_bulk, bulks = 5000, 8

    def bulk(n: int) -> int:
        lines = [line for i in range(per_bulk) for line in (
            {"index": {"_id": f"{n}-{i}"}},
            {"title": f"report {n}-{i}", "body": f"wind tunnel run {n * per_bulk + i}"})]
        with httpx.Client(base_url=proxy.url, timeout=120) as client:
            answer = client.post(f"/{index_name}/_bulk", content=ndjson(*lines),
                                 headers={"content-type": "application/x-ndjson"})
        assert answer.status_code == 200, answer.text[:300]
        assert not answer.json()["errors"], answer.text[:300]
        return per_bulk

    with run_proxy(settings) as proxy, httpx.Client(base_url=proxy.url, timeout=60) as client:
        with ThreadPoolExecutor(bulks) as pool:
            assert sum(pool.map(bulk, range(bulks))) == per_bulk * bulks

        def vectors() -> dict:
            return client.get("/_rerank/ready").json()["reranker"]["vectors"]

        # Every written text was either queued or dropped once the warming tasks have read the bodies.
        wait_until(lambda: vectors()["queued"] + vectors()["dropped"] >= per_bulk * bulks,
                   "the written bodies were never read for warming", timeout_s=120)
        status = vectors()
        assert status["write_queue_max"] == 10_000
        assert status["queue_by_priority"]["write"] <= status["write_queue_max"], status
        assert status["queued"] <= status["write_queue_max"] + status["embedded"] + status["in_flight"], status
        assert status["dropped"] >= per_bulk * bulks - status["queued"] > 0, status
