"""A misbehaving reranker never fails a search: each answers within the deadline, flagged fallback.

The proxy talks to a real loopback HTTP server through the real Cohere client and the resilience
wrapper; the server injects one fault per test.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from rerank_proxy.scoring.providers.cohere import CohereReranker
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_loopback import Captured, FaultServer, response_bytes, send_json
from tests.support_wait import async_wait_until

DEADLINE_MS = 600
MARGIN_S = 1.5  # engine time and scheduling on a loaded 2-core machine


def good_reply(request: Captured) -> dict:
    documents = request.json()["documents"]
    return {"results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))],
            "meta": {"billed_units": {"search_units": 1}}}


async def too_many(request, writer):
    await send_json(writer, 429, {"message": "rate limited"}, {"Retry-After": "30"})


async def unavailable(request, writer):
    await send_json(writer, 503, {"message": "overloaded"})


async def hangs(request, writer):
    await asyncio.sleep(30)


async def drips(request, writer):
    body = b'{"results": [' + b" " * 200 + b"]}"
    writer.write(response_bytes(200, b"", content_length=len(body)))
    for byte in body:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)


async def cuts_off(request, writer):
    writer.write(response_bytes(200, b'{"results": [{"index": 0, "rel', content_length=400))
    await writer.drain()
    return False  # close the connection mid-body


async def malformed(request, writer):
    writer.write(response_bytes(200, b"{this is not json"))
    await writer.drain()


async def wrong_indexes(request, writer):
    await send_json(writer, 200, {"results": [{"index": 999, "relevance_score": 0.5}]})


def make_settings(engine_url: str, server_url: str, **env: str):
    base = {"RERANK_DEADLINE_MS": str(DEADLINE_MS), "RERANK_ATTEMPT_TIMEOUT_MS": "300",
            "RERANK_MAX_RETRIES": "2", "RERANK_BREAKER_FAILURES": "100"}
    base.update(env)
    settings = proxy_settings(engine_url, **base)
    return settings.with_overrides(rerank_base_url=server_url, rerank_api_key="test-key")


def cohere(settings) -> ResilientReranker:
    inner = CohereReranker(base_url=settings.rerank_base_url, api_key=settings.rerank_api_key,
                           model="rerank-v3.5", timeout_s=settings.rerank_attempt_timeout_ms / 1000)
    return ResilientReranker(inner, settings)


@pytest.mark.parametrize("fault", [too_many, unavailable, hangs, drips, cuts_off, malformed, wrong_indexes],
                         ids=lambda f: f.__name__)
async def test_search_answers_in_lexical_order_within_the_deadline(engine, index_name, fault):
    load_corpus(engine.url, index_name)
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 5}
    async with FaultServer(fault) as server, httpx.AsyncClient(timeout=30) as client:
        settings = make_settings(engine.url, server.url)
        lexical = (await client.post(f"{engine.url}/{index_name}/_search", json=body)).json()
        with run_proxy(settings, reranker=cohere(settings)) as running:
            started = time.perf_counter()
            response = await client.post(f"{running.url}/{index_name}/_search", json=body)
            elapsed = time.perf_counter() - started
        assert response.status_code == 200
        assert response.headers["x-rerank"] == "fallback"
        assert response.headers["x-rerank-reason"]
        assert elapsed < DEADLINE_MS / 1000 + MARGIN_S
        assert [h["_id"] for h in response.json()["hits"]["hits"]] == [h["_id"] for h in lexical["hits"]["hits"]]
        assert server.requests, "the provider was never called"


async def test_fail_closed_answers_503(engine, index_name):
    load_corpus(engine.url, index_name)
    async with FaultServer(unavailable) as server, httpx.AsyncClient(timeout=30) as client:
        settings = make_settings(engine.url, server.url, RERANK_FAIL_MODE="closed")
        with run_proxy(settings, reranker=cohere(settings)) as running:
            response = await client.post(f"{running.url}/{index_name}/_search",
                                         json={"query": {"match": {"body": "jet"}}})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "rerank_unavailable_exception"


async def test_breaker_opens_then_recovers(engine, index_name):
    load_corpus(engine.url, index_name)
    healthy = {"now": False}

    async def flaky(request, writer):
        if healthy["now"]:
            await send_json(writer, 200, good_reply(request))
        else:
            await send_json(writer, 500, {"message": "boom"})

    async with FaultServer(flaky) as server, httpx.AsyncClient(timeout=30) as client:
        settings = make_settings(engine.url, server.url, RERANK_BREAKER_FAILURES="2",
                                 RERANK_BREAKER_COOLDOWN_S="0.5", RERANK_MAX_RETRIES="0")
        reranker = cohere(settings)
        with run_proxy(settings, reranker=reranker) as running:
            async def search(word: str) -> httpx.Response:
                return await client.post(f"{running.url}/{index_name}/_search",
                                         json={"query": {"match": {"body": word}}})

            for word in ("jet", "wing"):
                assert (await search(word)).headers["x-rerank"] == "fallback"
            assert reranker.breaker.state == "open"
            calls = len(server.requests)
            fast = await search("noise")
            assert fast.headers["x-rerank"] == "fallback"
            assert len(server.requests) == calls
            healthy["now"] = True
            # the cooldown (0.5 s) is the system's own timer
            await async_wait_until(lambda: reranker.breaker.state != "open", "the breaker's cooldown to end")
            assert (await search("flutter")).headers["x-rerank"] == "reranked"
            assert reranker.breaker.state == "closed"


async def test_server_timing_names_the_provider_wait(engine, index_name):
    """The provider's part of a search is what the proxy waited on its HTTP answer: at least the
    server's own delay, within the scoring time; a cache hit waits on no provider."""
    load_corpus(engine.url, index_name)
    delay_s = 0.2

    async def slow(request, writer):
        await asyncio.sleep(delay_s)
        await send_json(writer, 200, good_reply(request))

    async with FaultServer(slow) as server, httpx.AsyncClient(timeout=30) as client:
        settings = make_settings(engine.url, server.url, RERANK_DEADLINE_MS="5000", RERANK_ATTEMPT_TIMEOUT_MS="4000")
        with run_proxy(settings, reranker=cohere(settings)) as running:
            body = {"query": {"match": {"body": "jet engine noise"}}, "size": 5}
            first = await client.post(f"{running.url}/{index_name}/_search", json=body)
            again = await client.post(f"{running.url}/{index_name}/_search", json=body)
    timing = dict(part.strip().split(";dur=") for part in first.headers["server-timing"].split(","))
    assert first.headers["x-rerank"] == "reranked"
    assert len(server.requests) == 1
    assert delay_s * 1000 <= float(timing["provider"]) <= float(timing["rerank"]) <= float(timing["total"])
    assert again.headers["x-rerank"] == "cached"
    assert "provider;dur=0.0" in again.headers["server-timing"]
