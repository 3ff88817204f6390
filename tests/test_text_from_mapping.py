"""What is sent to the reranker by default: the index's text-typed fields, read from its mapping.

Against both real engines: a product index with prose (`text`) and exact values (`keyword` SKUs,
brand and category codes) sends only the prose; explicit RERANK_FIELDS, templates and rules still
win; a mapping the proxy cannot read (an index metadata block: the engine's own 403) means every
string, as before; a field added to the mapping is seen after the TTL, and a failed read is retried
after its back-off. The cache's own rules (single flight, bounds) are unit-tested in
test_text_fields.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from rerank_proxy.config import load_settings
from rerank_proxy.engine import EnginePool
from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.search.pipeline import Finished, SearchPipeline
from rerank_proxy.search.text.text_fields import TextFieldCache
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_loopback import Captured, FaultServer, response_bytes, send_json
from tests.support_rerankers import RecordingReranker
from tests.support_wait import async_wait_until, wait_until

MAPPING = {"properties": {
    "sku": {"type": "keyword"},
    "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
    "brand": {"type": "keyword"},
    "price": {"type": "float"},
    "specs": {"properties": {"material": {"type": "text"}, "code": {"type": "keyword"}}},
    "reviews": {"type": "nested", "properties": {"body": {"type": "text"}, "rating": {"type": "byte"}}},
    "category": {"type": "keyword"},
}}
DOCS = [
    {"sku": "TS-0042", "title": "Trail running shoe", "brand": "ACME", "price": 89.5,
     "specs": {"material": "breathable mesh upper", "code": "M-77"},
     "reviews": [{"body": "light and grippy on trails", "rating": 5}], "category": "CAT-1043"},
    {"sku": "RJ-0007", "title": "Rain jacket for trail running", "brand": "NORTHCO", "price": 120.0,
     "specs": {"material": "waterproof shell", "code": "W-12"},
     "reviews": [{"body": "kept me dry", "rating": 4}], "category": "CAT-2001"},
]
# In document order, the keyword and number fields left out.
TEXT_ONLY = {"Trail running shoe\nbreathable mesh upper\nlight and grippy on trails",
             "Rain jacket for trail running\nwaterproof shell\nkept me dry"}
ALL_STRINGS = {"TS-0042\nTrail running shoe\nACME\nbreathable mesh upper\nM-77\nlight and grippy on trails\nCAT-1043",
               "RJ-0007\nRain jacket for trail running\nNORTHCO\nwaterproof shell\nW-12\nkept me dry\nCAT-2001"}
QUERY = {"query": {"multi_match": {"query": "trail running", "fields": ["title", "specs.material"]}}}


def load_products(url: str, index: str, docs: list[dict[str, Any]] = DOCS) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        created = client.put(f"/{index}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                                "mappings": MAPPING})
        assert created.status_code == 200, created.text
        lines = [orjson.dumps(line).decode() for i, doc in enumerate(docs)
                 for line in ({"index": {"_id": str(i)}}, doc)]
        bulk = client.post(f"/{index}/_bulk?refresh=true", content="\n".join(lines) + "\n",
                           headers={"content-type": "application/x-ndjson"})
        assert bulk.status_code == 200, bulk.text
        assert not bulk.json()["errors"], bulk.text


@contextmanager
def metadata_blocked(url: str, index: str) -> Iterator[None]:
    """The index refuses metadata reads (`GET _mapping` is a 403) and still answers searches."""
    def block(on: bool) -> None:
        reply = httpx.put(f"{url}/{index}/_settings", json={"index.blocks.metadata": on}, timeout=30)
        assert reply.status_code == 200, reply.text
    block(True)
    try:
        assert httpx.get(f"{url}/{index}/_mapping", timeout=30).status_code == 403
        yield
    finally:
        block(False)


def search_texts(url: str, index: str, reranker: RecordingReranker, **env: str) -> set[str]:
    """The texts a fresh proxy (with `env`) sends the reranker for one search on `index`."""
    with run_proxy(proxy_settings(url, **env), reranker=reranker) as proxy:
        response = httpx.post(f"{proxy.url}/{index}/_search", json=QUERY, timeout=30)
    assert response.status_code == 200, response.headers
    assert response.headers["x-rerank"] == "reranked", response.headers
    assert len(reranker.sent) == 1
    return set(reranker.sent[0])


def test_only_the_text_fields_are_sent_by_default(engine, index_name: str):
    load_products(engine.url, index_name)
    reranker = RecordingReranker()
    assert search_texts(engine.url, index_name, reranker) == TEXT_ONLY


def test_an_msearch_sends_the_text_fields_too(engine, index_name: str):
    load_products(engine.url, index_name)
    reranker = RecordingReranker()
    lines = [{"index": index_name}, QUERY, {"index": index_name}, {"query": {"match": {"title": "jacket"}}}]
    with run_proxy(proxy_settings(engine.url), reranker=reranker) as proxy:
        response = httpx.post(f"{proxy.url}/_msearch", content=b"\n".join(map(orjson.dumps, lines)) + b"\n",
                              headers={"content-type": "application/x-ndjson"}, timeout=30)
    assert response.status_code == 200, response.text
    assert reranker.texts() == TEXT_ONLY


@pytest.mark.parametrize(("env", "expected"), [
    ({"RERANK_FIELDS": "sku,title"}, {"TS-0042\nTrail running shoe", "RJ-0007\nRain jacket for trail running"}),
    ({"RERANK_TEMPLATE": "{brand}: {title}"}, {"ACME: Trail running shoe", "NORTHCO: Rain jacket for trail running"}),
    ({"RERANK_TEXT_FROM_MAPPING": "false"}, ALL_STRINGS),
    ({"RERANK_RULES": '[{"index": "t-*", "fields": ["brand"]}]'}, {"ACME", "NORTHCO"}),
    ({"RERANK_RULES": '[{"index": "t-*", "fields": []}]'}, ALL_STRINGS),       # chosen: every string
    ({"RERANK_RULES": '[{"index": "t-*", "window": 50}]'}, TEXT_ONLY),         # no text chosen: the default
], ids=["fields", "template", "off", "rule-fields", "rule-every-string", "rule-window-only"])
def test_explicit_settings_win_over_the_mapping(engine, index_name: str, env: dict[str, str], expected: set[str]):
    load_products(engine.url, index_name)
    assert search_texts(engine.url, index_name, RecordingReranker(), **env) == expected


def test_a_mapping_that_cannot_be_read_means_every_string(engine, index_name: str):
    load_products(engine.url, index_name)
    with metadata_blocked(engine.url, index_name):
        assert search_texts(engine.url, index_name, RecordingReranker()) == ALL_STRINGS


def test_an_alias_is_read_as_the_concrete_index_behind_it(engine, index_name: str):
    load_products(engine.url, index_name)
    reply = httpx.post(f"{engine.url}/_aliases", timeout=30,
                       json={"actions": [{"add": {"index": index_name, "alias": f"{index_name}-shop"}}]})
    assert reply.status_code == 200, reply.text
    assert search_texts(engine.url, f"{index_name}-shop", RecordingReranker()) == TEXT_ONLY


# --- the cache's timing, on a pipeline of the test's own (a TTL and back-off of a fraction of a second)

async def run_search(pipeline: SearchPipeline, index: str) -> Finished:
    body = orjson.dumps(QUERY)
    headers = {"content-type": "application/json"}
    result = await pipeline.search("POST", index, {}, headers, [(b"content-type", b"application/json")], body)
    assert isinstance(result, Finished), result
    assert result.status == 200, result
    return result


@contextmanager
def own_pipeline(url: str, text_fields: Any = None) -> Iterator[tuple[SearchPipeline, RecordingReranker, Any]]:
    settings = proxy_settings(url)
    engine = EnginePool(settings)
    reranker = RecordingReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=600)
    try:
        yield SearchPipeline(settings, engine, cache, text_fields(engine) if text_fields else None), reranker, engine
    finally:
        engine.close()


def text_fields_of(pipeline: SearchPipeline) -> TextFieldCache:
    """The pipeline's cache of text fields (each pipeline here reads the mapping: it has one)."""
    assert pipeline.text_fields is not None
    return pipeline.text_fields


async def test_a_field_added_to_the_mapping_is_sent_after_the_ttl(engine, index_name: str):
    load_products(engine.url, index_name)
    with own_pipeline(engine.url, lambda e: TextFieldCache(e, ttl_s=0.2)) as (pipeline, reranker, _):
        await run_search(pipeline, index_name)
        assert reranker.texts() == TEXT_ONLY
        async with httpx.AsyncClient(base_url=engine.url, timeout=30) as client:
            added = await client.put(f"/{index_name}/_mapping", json={"properties": {"care": {"type": "text"}}})
            assert added.status_code == 200, added.text
            updated = await client.post(f"/{index_name}/_update/0?refresh=true",
                                        json={"doc": {"care": "machine washable"}})
            assert updated.status_code == 200, updated.text

        async def sent_with_the_new_field() -> bool:
            await run_search(pipeline, index_name)
            return any(text.endswith("\nmachine washable") for text in reranker.texts())

        await async_wait_until(sent_with_the_new_field, "the new text field in the reranked texts")
        await text_fields_of(pipeline).aclose()


async def test_a_failed_read_is_retried_after_the_back_off(engine, index_name: str):
    load_products(engine.url, index_name)
    with own_pipeline(engine.url, lambda e: TextFieldCache(e, retry_s=0.2)) as (pipeline, reranker, _):
        with metadata_blocked(engine.url, index_name):
            await run_search(pipeline, index_name)
            await run_search(pipeline, index_name)
            assert reranker.texts() == ALL_STRINGS
            assert text_fields_of(pipeline).reads == 1

        async def text_only_sent() -> bool:
            await run_search(pipeline, index_name)
            return reranker.texts() >= TEXT_ONLY

        await async_wait_until(text_only_sent, "the mapping read again once the block is gone")
        await text_fields_of(pipeline).aclose()


async def test_concurrent_searches_on_a_cold_index_read_the_mapping_once(engine, index_name: str):
    load_products(engine.url, index_name)
    with own_pipeline(engine.url) as (pipeline, reranker, _):
        await asyncio.gather(*(run_search(pipeline, index_name) for _ in range(8)))
        assert text_fields_of(pipeline).reads == 1
        assert reranker.texts() == TEXT_ONLY
        await text_fields_of(pipeline).aclose()


def test_writes_through_the_proxy_warm_the_texts_searches_send(es_engine, index_name: str, tmp_path: Path):
    """Defaults, built-in model: documents bulk-written through the proxy are embedded under the
    mapping's text fields, so the first search on them finds every vector stored."""
    with httpx.Client(base_url=es_engine.url, timeout=30) as client:
        created = client.put(f"/{index_name}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                                     "mappings": MAPPING})
        assert created.status_code == 200, created.text
    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOG_LEVEL": "warning",
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    body = b"\n".join(orjson.dumps(line) for i, doc in enumerate(DOCS)
                      for line in ({"index": {"_id": str(i)}}, doc)) + b"\n"
    with run_proxy(settings) as proxy, httpx.Client(base_url=proxy.url, timeout=60) as client:
        written = client.post(f"/{index_name}/_bulk?refresh=true", content=body,
                              headers={"content-type": "application/x-ndjson"})
        assert written.status_code == 200, written.text
        assert not written.json()["errors"], written.text

        def stored() -> int:
            vectors = client.get("/_rerank/ready").json()["reranker"]["vectors"]
            return int(vectors["store_entries"] or 0) if vectors["queue_depth"] == 0 else 0

        wait_until(lambda: stored() >= len(DOCS), "the written documents to be embedded", timeout_s=180)
        response = client.post(f"/{index_name}/_search", json=QUERY)
        assert response.status_code == 200, response.headers
        assert response.headers["x-rerank"] == "reranked", response.headers
        assert stored() == len(DOCS)  # the search embedded nothing new: its texts were the written ones


async def test_the_warm_command_embeds_the_texts_searches_send(es_engine, index_name: str, tmp_path: Path):
    from rerank_proxy.local.reranker import LocalReranker
    from rerank_proxy.warm import rule_from, warm

    load_products(es_engine.url, index_name)
    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOG_LEVEL": "warning",
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite"), "LOCAL_COLD_WAIT_MS": "0"})
    assert await warm(settings, index_name, rule_from(settings, index_name), 256) == 0
    reranker = LocalReranker(settings)
    try:
        result = await reranker.rerank("trail running", sorted(TEXT_ONLY))
        assert result.meta["stored"] == len(TEXT_ONLY)
        assert result.meta["embedded"] == 0
    finally:
        await reranker.aclose()



ALICE, BOB = "Basic YWxpY2U6YQ==", "Basic Ym9iOmI="


def refusing_bob(engine_url: str) -> FaultServer:
    """A loopback server in front of the engine that answers Bob's `_mapping` reads with the
    engine's 403 and relays everything else (the engine's security is off: this is its role)."""
    async def handler(request: Captured, writer: asyncio.StreamWriter) -> None:
        if "/_mapping" in request.path and request.headers.get("authorization") == BOB:
            await send_json(writer, 403, {"error": {"type": "security_exception", "reason": "action "
                            "[indices:admin/mappings/get] is unauthorized for user [bob]"}, "status": 403})
            return
        async with httpx.AsyncClient(base_url=engine_url, timeout=30) as engine:
            answer = await engine.request(request.method, request.path, content=request.body or None,
                                          headers={"content-type": request.headers.get("content-type",
                                                                                       "application/json")})
        writer.write(response_bytes(answer.status_code, answer.content))
        await writer.drain()

    return FaultServer(handler)


@pytest.mark.parametrize("first", [BOB, ALICE], ids=["refused-first", "allowed-first"])
async def test_one_users_mapping_read_never_chooses_anothers_fields(es_engine, index_name: str, first: str):
    """Bob may not read the mapping, Alice may: each gets the texts of their own read, whoever came first."""
    load_products(es_engine.url, index_name)
    expected = {ALICE: TEXT_ONLY, BOB: ALL_STRINGS}
    async with refusing_bob(es_engine.url) as gate:
        reranker = RecordingReranker()
        with run_proxy(proxy_settings(gate.url), reranker=reranker) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
                for step, user in enumerate((first, ALICE if first == BOB else BOB, first)):
                    # A query of its own each time, so the texts reach the reranker (no cached score).
                    query = {"query": {"multi_match": {"query": f"trail running step{step}",
                                                       "fields": ["title", "specs.material"]}}}
                    response = await client.post(f"/{index_name}/_search", json=query,
                                                 headers={"authorization": user})
                    assert response.status_code == 200, response.text
                    assert response.headers["x-rerank"] == "reranked", response.headers
                    assert set(reranker.sent[-1]) == expected[user], user
    mapping_reads = [r.headers.get("authorization", "") for r in gate.requests if "/_mapping" in r.path]
    assert sorted(mapping_reads) == sorted([ALICE, BOB])   # one read per user, kept for that user
