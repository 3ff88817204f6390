"""The UBI request extension (`ext.ubi`) through the proxy, against both engines.

The extension is taken out before the engine sees it (Elasticsearch, and an OpenSearch without the
UBI plugin, refuse it: checked directly on the engine), the query id is answered back (given or
generated), and the search's record lands in the UBI queries index. A refusing engine drops the
records, counted, and never slows a search.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from rerank_proxy.engine.transport import EngineAnswer
from rerank_proxy.experiments.query_log import QueryLog
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import CORPUS, expected_order
from tests.support_loopback import Captured, FaultServer, RecordingUpstream, response_bytes
from tests.support_rerankers import OverlapReranker
from tests.support_wait import async_wait_until, metric_samples, wait_until

QUERY = {"match": {"body": "jet engine noise"}}


@pytest.fixture
def ubi_index(index_name):
    return f"{index_name}-ubi"  # under the test's prefix: deleted with its other indices


@pytest.fixture
def ubi_proxy(engine, ubi_index):
    with run_proxy(proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index), reranker=OverlapReranker()) as running:
        yield running


def _record(engine_url: str, index: str, query_id: str) -> dict[str, Any]:
    """The record of `query_id` in the UBI index ({} until it is there: refreshed, then searched)."""
    with httpx.Client(base_url=engine_url, timeout=30) as client:
        if client.post(f"/{index}/_refresh").status_code != 200:
            return {}  # not created yet
        found = client.post(f"/{index}/_search", json={"query": {"term": {"query_id": query_id}}}).json()
    hits = found.get("hits", {}).get("hits", [])
    return hits[0]["_source"] if hits else {}


def _ubi_samples(proxy_url: str) -> dict[str, float]:
    samples = metric_samples(proxy_url)
    out = {"written": samples.get(("rerank_proxy_ubi_records_written_total", ()), 0.0)}
    for reason in ("queue_full", "engine_error", "refused"):
        out[reason] = samples.get(("rerank_proxy_ubi_records_dropped_total", (("reason", reason),)), 0.0)
    return out


def test_the_engine_itself_refuses_the_extension(engine, corpus_index):
    """What the proxy protects apps from: neither session engine takes `ext.ubi` (no UBI plugin)."""
    body = {"query": QUERY, "ext": {"ubi": {"query_id": "q-1"}}}
    answer = httpx.post(f"{engine.url}/{corpus_index}/_search", json=body, timeout=30)
    assert answer.status_code == 400, answer.text


def test_a_ubi_search_is_reranked_answered_with_its_query_id_and_recorded(engine, ubi_proxy, corpus_index,
                                                                         ubi_index):
    query_id = f"q-{uuid.uuid4()}"
    ubi = {"query_id": query_id, "client_id": "client-7", "user_query": "jet engine noise",
           "application": "shop", "query_attributes": {"page": "1", "experiment": "none"}}
    answer = httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", json={"query": QUERY, "ext": {"ubi": ubi}},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-rerank"] in ("reranked", "cached")
    assert answer.headers["x-ubi-query-id"] == query_id
    data = answer.json()
    assert data["ext"] == {"ubi": {"query_id": query_id}}
    ids = [hit["_id"] for hit in data["hits"]["hits"]]
    direct = httpx.post(f"{engine.url}/{corpus_index}/_search", json={"query": QUERY}, timeout=30).json()
    assert ids == expected_order("jet engine noise", [h["_id"] for h in direct["hits"]["hits"]])[:10]

    record = wait_until(lambda: _record(engine.url, ubi_index, query_id), f"the record of {query_id} in {ubi_index}")
    assert record["client_id"] == "client-7"
    assert record["user_query"] == "jet engine noise"
    assert record["application"] == "shop"
    assert record["query_attributes"] == {"page": "1", "experiment": "none"}
    assert record["query_response_object_ids"] == ids
    assert record["arm"] == "off"
    assert record["timestamp"].endswith("Z")
    mapping = httpx.get(f"{engine.url}/{ubi_index}/_mapping", timeout=30).json()[ubi_index]["mappings"]
    assert mapping["properties"]["query_id"]["type"] == "keyword"
    assert mapping["properties"]["timestamp"]["type"] == "date"
    assert _ubi_samples(ubi_proxy.url)["written"] >= 1


def test_a_query_id_is_generated_when_absent_and_object_ids_read_from_the_source(engine, ubi_proxy, corpus_index,
                                                                                ubi_index):
    body = {"query": QUERY, "size": 5, "ext": {"ubi": {"object_id_field": "year"}}}
    answer = httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    query_id = answer.json()["ext"]["ubi"]["query_id"]
    assert uuid.UUID(query_id).version == 4
    assert answer.headers["x-ubi-query-id"] == query_id
    again = httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", json=body, timeout=30)
    assert again.json()["ext"]["ubi"]["query_id"] != query_id  # each search its own id, never a remembered one
    years = [str(CORPUS[int(hit["_id"])]["year"]) for hit in answer.json()["hits"]["hits"]]
    record = wait_until(lambda: _record(engine.url, ubi_index, query_id), f"the record of {query_id}")
    assert record["query_response_object_ids"] == years
    assert record["object_id_field"] == "year"


def test_a_bypassed_search_loses_the_extension_too_and_is_answered_and_recorded(engine, ubi_proxy, corpus_index,
                                                                                 ubi_index):
    """Searches the proxy does not rerank (here sorted by a field, and reranking switched off) reach
    the engine without `ext.ubi` (it would refuse it; `ext` goes when ubi was its only key), and are
    answered with the query id and recorded all the same."""
    bodies: list[dict[str, Any]] = [
        {"query": QUERY, "sort": [{"year": "asc"}], "ext": {"ubi": {"query_id": f"q-sorted-{uuid.uuid4()}"}}},
        {"query": QUERY, "rerank": False, "ext": {"ubi": {"query_id": f"q-off-{uuid.uuid4()}"}}}]
    for body in bodies:
        query_id = body["ext"]["ubi"]["query_id"]
        answer = httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-rerank"] == "bypass"
        assert answer.headers["x-ubi-query-id"] == query_id
        data = answer.json()
        assert data["ext"] == {"ubi": {"query_id": query_id}}
        ids = [hit["_id"] for hit in data["hits"]["hits"]]
        assert ids
        record = wait_until(functools.partial(_record, engine.url, ubi_index, query_id), f"the record of {query_id}")
        assert record["query_response_object_ids"] == ids
    sorted_ids = [hit["_id"] for hit in httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", timeout=30,
                                                   json=bodies[0]).json()["hits"]["hits"]]
    assert sorted_ids == sorted(sorted_ids, key=lambda i: CORPUS[int(i)]["year"])  # the engine's own order


def test_a_filtered_answer_keeps_its_shape_and_the_header_has_the_id(engine, ubi_proxy, corpus_index):
    """With filter_path the engine's filter would have applied to the plugin's ext: the header says it."""
    for extra in ({}, {"sort": [{"year": "asc"}]}):
        body = {"query": QUERY, **extra, "ext": {"ubi": {"query_id": "q-filtered"}}}
        answer = httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", params={"filter_path": "hits.hits._id"},
                            json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert list(answer.json()) == ["hits"]
        assert answer.headers["x-ubi-query-id"] == "q-filtered"


def test_an_engine_error_is_the_engines_own(engine, ubi_proxy, index_name):
    """A bypassed search the engine refuses (a missing index) is the engine's answer, with the header."""
    body = {"query": QUERY, "sort": [{"year": "asc"}], "ext": {"ubi": {"query_id": "q-missing"}}}
    answer = httpx.post(f"{ubi_proxy.url}/{index_name}-missing/_search", json=body, timeout=30)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["type"] == "index_not_found_exception"
    assert answer.headers["x-ubi-query-id"] == "q-missing"


def test_msearch_sub_searches_lose_the_extension_and_are_answered_and_recorded(engine, ubi_proxy, corpus_index,
                                                                               ubi_index):
    """Each sub-search with `ext.ubi` (a reranked one, a sorted one) gets its query id in its own
    response and its record, when at least one sub-search is reranked (else the _msearch is relayed)."""
    reranked, sorted_id = f"q-m1-{uuid.uuid4()}", f"q-m2-{uuid.uuid4()}"
    lines = [{"index": corpus_index}, {"query": QUERY, "ext": {"ubi": {"query_id": reranked}}},
             {"index": corpus_index},
             {"query": QUERY, "sort": [{"year": "asc"}], "ext": {"ubi": {"query_id": sorted_id}}},
             {"index": corpus_index}, {"query": QUERY}]
    payload = "".join(httpx.Response(200, json=line).text + "\n" for line in lines)
    answer = httpx.post(f"{ubi_proxy.url}/_msearch", content=payload,
                        headers={"content-type": "application/x-ndjson"}, timeout=30)
    assert answer.status_code == 200, answer.text
    responses = answer.json()["responses"]
    assert [r.get("ext") for r in responses] == [{"ubi": {"query_id": reranked}}, {"ubi": {"query_id": sorted_id}},
                                                 None]
    for query_id, response in zip((reranked, sorted_id), responses):
        record = wait_until(functools.partial(_record, engine.url, ubi_index, query_id), f"the record of {query_id}")
        assert record["query_response_object_ids"] == [hit["_id"] for hit in response["hits"]["hits"]]


@pytest.mark.parametrize("ubi", ["q-1", {"query_id": 5}, {"client_id": ["a"]}, {"query_attributes": "x"},
                                 {"unknown_field": "x"}])
def test_a_malformed_extension_is_the_plugins_400(engine, ubi_proxy, corpus_index, ubi):
    answer = httpx.post(f"{ubi_proxy.url}/{corpus_index}/_search", json={"query": QUERY, "ext": {"ubi": ubi}},
                        timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["status"] == 400
    assert error["error"]["type"] == "x_content_parse_exception"
    assert error["error"]["reason"].startswith("[ubi]")


def _median_ms(url: str, body: dict[str, Any], count: int) -> float:
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            answer = client.post(url, json=body)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
    return statistics.median(times)


@pytest.mark.parametrize("refusal", ["write_block", "closed"])
def test_a_refusing_engine_drops_records_counted_and_never_slows_a_search(engine, ubi_proxy, corpus_index,
                                                                          ubi_index, refusal):
    created = httpx.put(f"{engine.url}/{ubi_index}", json={"settings": {"number_of_replicas": 0}}, timeout=30)
    assert created.status_code == 200, created.text
    if refusal == "write_block":
        refused = httpx.put(f"{engine.url}/{ubi_index}/_settings", json={"index.blocks.write": True}, timeout=30)
    else:
        refused = httpx.post(f"{engine.url}/{ubi_index}/_close", timeout=30)
    assert refused.status_code == 200, refused.text
    url = f"{ubi_proxy.url}/{corpus_index}/_search"
    count = 20
    _median_ms(url, {"query": QUERY}, 3)  # warm: the texts scored, the connections open
    baseline = _median_ms(url, {"query": QUERY}, count)
    with_ubi = _median_ms(url, {"query": QUERY, "ext": {"ubi": {"user_query": "jet engine noise"}}}, count)
    assert with_ubi < baseline * 3 + 50, (baseline, with_ubi)
    wait_until(lambda: _ubi_samples(ubi_proxy.url)["refused"] >= count,
               lambda: f"{count} records counted as refused ({_ubi_samples(ubi_proxy.url)})")
    assert _ubi_samples(ubi_proxy.url)["written"] == 0
    assert httpx.post(f"{url}", json={"query": QUERY, "ext": {"ubi": {}}}, timeout=30).status_code == 200


def test_what_the_engine_receives_never_holds_the_extension():
    """A recording upstream stands in for the engine: every search it receives (reranked, bypassed,
    an _msearch's) is without `ext.ubi`, and the record reaches it as a bulk write after the index."""
    upstream = RecordingUpstream()
    try:
        with run_proxy(proxy_settings(upstream.url, UBI_QUERIES_INDEX="ubi-recorded"),
                       reranker=OverlapReranker()) as proxy:
            ubi = {"query_id": "q-rec", "user_query": "jet"}
            for body in ({"query": QUERY, "ext": {"ubi": ubi}},
                         {"query": QUERY, "sort": [{"year": "asc"}], "ext": {"ubi": ubi, "other": {"kept": 1}}}):
                assert httpx.post(f"{proxy.url}/docs/_search", json=body, timeout=30).status_code == 200
            lines = [{"index": "docs"}, {"query": QUERY, "ext": {"ubi": ubi}}]
            payload = "".join(httpx.Response(200, json=line).text + "\n" for line in lines)
            # The stand-in's answer is no _msearch answer (the proxy says so, a 502): what it received counts.
            httpx.post(f"{proxy.url}/_msearch", content=payload, timeout=30,
                       headers={"content-type": "application/x-ndjson"})
            wait_until(lambda: any(path.startswith("/ubi-recorded/_bulk") for path in upstream.paths()),
                       lambda: f"the bulk write of the record (requests: {upstream.paths()})")
        searches = [(path, body) for _, path, _, body in upstream.requests if "_search" in path]
        assert len(searches) == 2, upstream.paths()
        bodies = [orjson.loads(body) for _, body in searches]
        assert [b.get("ext") for b in bodies] == [None, {"other": {"kept": 1}}]  # `ext` goes with ubi alone
        msearch = [body for _, path, _, body in upstream.requests if "_msearch" in path]
        assert len(msearch) == 1
        assert b"ubi" not in msearch[0]
        paths = upstream.paths()
        first_bulk = next(n for n, path in enumerate(paths) if path.startswith("/ubi-recorded/_bulk"))
        assert paths.index("/ubi-recorded") < first_bulk  # the index (its mapping) first
    finally:
        upstream.close()


def test_with_ubi_off_the_extension_is_still_removed_and_answered_but_nothing_recorded(engine, corpus_index,
                                                                                       ubi_index):
    settings = proxy_settings(engine.url, UBI="false", UBI_QUERIES_INDEX=ubi_index)
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        answer = httpx.post(f"{proxy.url}/{corpus_index}/_search", timeout=30,
                            json={"query": QUERY, "ext": {"ubi": {"query_id": "q-unrecorded"}}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["ext"] == {"ubi": {"query_id": "q-unrecorded"}}
        samples = metric_samples(proxy.url)
    assert not any(name.startswith("rerank_proxy_ubi_") for name, _ in samples)  # no query log at all
    assert httpx.head(f"{engine.url}/{ubi_index}", timeout=30).status_code == 404


async def _median_ms_async(client: httpx.AsyncClient, url: str, body: dict[str, Any], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = await client.post(url, json=body)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    return statistics.median(times)


async def test_a_stalled_bulk_write_drops_records_and_never_slows_a_search(engine, corpus_index):
    """The engine takes searches but never answers the bulk writes (a real engine behind a loopback
    server that holds `_bulk`): searches keep their speed, the queue fills, the rest are dropped."""
    stall = asyncio.Event()
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as to_engine:
        async def handler(request: Captured, writer: asyncio.StreamWriter) -> None:
            if "/_bulk" in request.path:
                await stall.wait()  # never set: the write hangs until the proxy gives up on it
            answer = await to_engine.request(request.method, request.path, content=request.body,
                                             headers={"content-type": request.headers.get("content-type",
                                                                                          "application/json")})
            writer.write(response_bytes(answer.status_code, answer.content))
            await writer.drain()

        async with FaultServer(handler) as front:
            settings = proxy_settings(front.url, UBI_QUEUE_MAX="2", UBI_QUERIES_INDEX=f"{corpus_index}-ubi")
            with run_proxy(settings, reranker=OverlapReranker()) as proxy:
                url = f"{proxy.url}/{corpus_index}/_search"
                count = 20
                async with httpx.AsyncClient(timeout=30) as client:
                    await _median_ms_async(client, url, {"query": QUERY}, 3)  # warm
                    baseline = await _median_ms_async(client, url, {"query": QUERY}, count)
                    ubi = {"query": QUERY, "ext": {"ubi": {"user_query": "jet engine noise"}}}
                    with_ubi = await _median_ms_async(client, url, ubi, count)
                assert with_ubi < baseline * 3 + 50, (baseline, with_ubi)
                await async_wait_until(lambda: any("/_bulk" in r.path for r in front.requests), "a bulk write")
                log = proxy.runtime.pipeline.query_log
                assert log.dropped["queue_full"] >= count - 3  # one in the hung write, two queued
                assert log.written == 0


class _StalledEngine:
    """An engine that takes requests and never answers (a stalled bulk write)."""

    def __init__(self) -> None:
        self.requests = 0

    async def fetch(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                    body: bytes | None) -> EngineAnswer:
        self.requests += 1
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def test_a_stalled_engine_fills_the_queue_and_drops_the_rest():
    """While a write hangs, records queue up to the bound and the rest are dropped at once; the hung
    write itself ends at its time limit and its records are counted as dropped."""
    engine = _StalledEngine()
    log = QueryLog(engine, "ubi_queries", max_queued=3, flush_records=1, flush_ms=1, write_timeout_s=0.2)
    try:
        log.offer({"query_id": "a"})
        await async_wait_until(lambda: engine.requests == 1, "the first write to start")
        for name in "bcdef":
            log.offer({"query_id": name})
        assert log.queued == 3
        assert log.dropped["queue_full"] == 2
        await async_wait_until(lambda: log.dropped["engine_error"] >= 1, "the hung write to time out")
    finally:
        await log.aclose()
    assert log.written == 0


class _AnsweringEngine:
    """An engine stand-in that creates the index and writes every bulk item."""

    def __init__(self) -> None:
        self.bulk_ids: list[str] = []

    async def fetch(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                    body: bytes | None) -> EngineAnswer:
        if not target.endswith("/_bulk"):
            return EngineAnswer(200, [], b'{"acknowledged":true}')
        actions = [orjson.loads(line) for line in (body or b"").splitlines()[::2]]
        self.bulk_ids += [action["index"]["_id"] for action in actions]
        items = [{"index": {"_id": action["index"]["_id"], "status": 201}} for action in actions]
        return EngineAnswer(200, [], orjson.dumps({"errors": False, "items": items}))


async def test_shutdown_flushes_what_is_queued():
    """Records still waiting for their flush at shutdown are written by one last flush."""
    engine = _AnsweringEngine()
    log = QueryLog(engine, "ubi_queries", max_queued=100, flush_records=50, flush_ms=600_000)
    for name in "abc":
        log.offer({"query_id": name})
    await log.aclose()
    assert engine.bulk_ids == ["a", "b", "c"]
    assert log.written == 3
    assert log.dropped["shutdown"] == 0
