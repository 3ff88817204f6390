"""The one engine transport: a cap on open engine connections, and bypassed searches relayed on it.

The upstream is a loopback server that holds each request until the test lets it go and counts how
many it holds at once: what the engine would see.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson

from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_loopback import Captured, FaultServer, send_json
from tests.support_rerankers import OverlapReranker
from tests.support_wait import async_wait_until


class HeldUpstream:
    """Answers every request once `gate` opens; records the most requests held at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.held = 0
        self.most_held = 0

    async def __call__(self, request: Captured, writer: asyncio.StreamWriter) -> None:
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.gate.wait()
            await send_json(writer, 200, {"path": request.path})
        finally:
            self.held -= 1


async def test_open_engine_connections_are_capped_and_the_excess_gets_429():
    upstream = HeldUpstream()
    async with FaultServer(upstream) as server, httpx.AsyncClient(timeout=30) as client:
        settings = proxy_settings(server.url, UPSTREAM_MAX_CONNECTIONS="2", UPSTREAM_CONNECT_TIMEOUT_S="1")
        with run_proxy(settings, reranker=OverlapReranker()) as running:
            calls = [asyncio.ensure_future(client.get(f"{running.url}/doc/_doc/{n}")) for n in range(5)]
            # Three of the five find no connection within UPSTREAM_CONNECT_TIMEOUT_S while the
            # engine holds two: they are refused, as a full engine thread pool would refuse them.
            refused: list[asyncio.Future[httpx.Response]] = []
            while len(refused) < 3:
                done, _ = await asyncio.wait([c for c in calls if c not in refused],
                                             return_when=asyncio.FIRST_COMPLETED)
                refused += done
            upstream.gate.set()
            responses = await asyncio.gather(*calls)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    assert upstream.most_held == 2
    assert len(server.requests) == 2
    busy = next(r for r in responses if r.status_code == 429).json()
    assert busy["error"]["type"] == "rejected_execution_exception"
    assert busy["status"] == 429


async def test_requests_past_the_cap_wait_for_a_free_connection():
    upstream = HeldUpstream()
    async with FaultServer(upstream) as server, httpx.AsyncClient(timeout=30) as client:
        settings = proxy_settings(server.url, UPSTREAM_MAX_CONNECTIONS="1", UPSTREAM_CONNECT_TIMEOUT_S="30")
        with run_proxy(settings, reranker=OverlapReranker()) as running:
            calls = [asyncio.ensure_future(client.get(f"{running.url}/doc/_doc/{n}")) for n in range(3)]
            await async_wait_until(lambda: running.in_flight == 3 and upstream.held == 1,
                                   "three requests at the proxy, one at the engine")
            upstream.gate.set()
            responses = await asyncio.gather(*calls)
            pool = running.engine_pool
            assert pool.open_connections <= 1
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(r.json()["path"] for r in responses) == [f"/doc/_doc/{n}" for n in range(3)]
    assert upstream.most_held == 1


async def test_a_bypassed_search_is_relayed_with_the_clients_body_and_flagged():
    async def answer(request: Captured, writer: asyncio.StreamWriter) -> None:
        await send_json(writer, 200, {"took": 1, "hits": {"total": {"value": 0, "relation": "eq"}, "hits": []},
                                      "seen": orjson.loads(request.body)},
                        headers={"X-Elastic-Product": "Elasticsearch"})

    body = b'{"query": {"match": {"title": "jet"}}, "sort": [{"year": "desc"}]}'
    async with FaultServer(answer) as server, httpx.AsyncClient(timeout=30) as client:
        with run_proxy(proxy_settings(server.url), reranker=OverlapReranker()) as running:
            response = await client.post(f"{running.url}/papers/_search?pretty=false", content=body,
                                         headers={"Content-Type": "application/json", "X-Opaque-Id": "r-1"})
    assert response.status_code == 200
    assert response.headers["x-rerank"] == "bypass"
    assert response.headers["x-rerank-reason"] == "sort"
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    [seen] = server.requests   # one request reached the engine: the client's own, byte for byte
    assert seen.method == "POST"
    assert seen.path == "/papers/_search?pretty=false"
    assert seen.body == body
    assert seen.headers["x-opaque-id"] == "r-1"
    assert response.json()["seen"] == orjson.loads(body)
