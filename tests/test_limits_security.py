"""Limits, inbound API keys, client disconnects: clear engine-style errors, nothing leaked."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import metric_samples, requests_by_outcome, wait_until


@pytest.fixture
def limited_proxy(engine):
    settings = proxy_settings(engine.url, MAX_BODY_BYTES="65536", MAX_SEARCH_BODY_BYTES="4096",
                              MAX_HEADER_BYTES="8192")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        yield running


def _count(engine, index: str) -> int:
    httpx.post(f"{engine.url}/{index}/_refresh")
    return httpx.get(f"{engine.url}/{index}/_count").json()["count"]


def test_oversized_headers_get_431(limited_proxy):
    response = httpx.get(f"{limited_proxy.url}/_cluster/health", headers={"X-Big": "a" * 20000})
    assert response.status_code == 431
    assert response.json()["error"]["type"] == "too_long_http_header_exception"


def test_body_over_the_limit_is_413_and_never_reaches_the_engine(engine, limited_proxy, index_name):
    httpx.put(f"{engine.url}/{index_name}", json={"settings": {"number_of_replicas": 0}})
    line = b'{"index":{}}\n{"t":"' + b"x" * 1000 + b'"}\n'
    declared = httpx.post(f"{limited_proxy.url}/{index_name}/_bulk", content=line * 100,
                          headers={"content-type": "application/x-ndjson"})
    assert declared.status_code == 413
    assert declared.json()["status"] == 413
    assert _count(engine, index_name) == 0

    def chunked():
        for _ in range(100):
            yield line

    streamed = httpx.post(f"{limited_proxy.url}/{index_name}/_bulk?refresh=true", content=chunked(),
                          headers={"content-type": "application/x-ndjson"})
    assert streamed.status_code in (413, 400, 502)  # cut mid-stream: never a 2xx for a partial body
    assert streamed.headers.get("content-type", "").startswith("application/json")


def test_search_body_over_the_limit(engine, limited_proxy, index_name):
    body = {"query": {"match": {"body": "x " * 4000}}}
    response = httpx.post(f"{limited_proxy.url}/{index_name}/_search", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["reason"]


def test_absurd_from_and_size(engine, limited_proxy, index_name):
    load_corpus(engine.url, index_name)
    for params in ({"from": "1000000000", "size": "10"}, {"size": "2147483647"}, {"from": "-1"}, {"size": "ten"}):
        response = httpx.get(f"{limited_proxy.url}/{index_name}/_search", params={"q": "engine", **params})
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["type"]


def test_inbound_api_keys(engine):
    settings = proxy_settings(engine.url, PROXY_API_KEYS="key-one-1234,key-two-5678")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        assert httpx.get(f"{running.url}/_cluster/health").status_code == 401
        assert httpx.get(f"{running.url}/_cluster/health", headers={"X-Proxy-Api-Key": "nope"}).status_code == 401
        ok = httpx.get(f"{running.url}/_cluster/health", headers={"X-Proxy-Api-Key": "key-two-5678"})
        assert ok.status_code == 200
        assert httpx.get(f"{running.url}/_rerank/health").status_code == 200  # probes need no key


def test_client_disconnect_leaks_nothing(engine, index_name):
    load_corpus(engine.url, index_name)
    reranker = OverlapReranker(delay_s=0.5)
    with run_proxy(proxy_settings(engine.url), reranker=reranker) as running:
        body = b'{"query":{"match":{"body":"jet"}}}'
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", running.port))
            sock.sendall(b"POST /" + index_name.encode() + b"/_search HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)
            sock.close()  # hang up while the proxy waits on the reranker
        # The proxy finishes the abandoned work: all five searches are counted, one provider call
        # served them all, and nothing is in flight but the scrape that reads the gauge.
        def settled():
            samples = metric_samples(running.url)
            done = sum(requests_by_outcome(samples).values()) == 5
            return samples if done and samples[("rerank_proxy_in_flight_requests", ())] == 1 else None

        samples = wait_until(settled, "the five abandoned searches to finish")
        counted = {outcome: n for outcome, n in requests_by_outcome(samples).items() if n}
        assert counted == {"reranked": 1, "cached": 4}
        assert reranker.calls == 1
        # every engine connection is back in the pool (the searches' reads use the relay's pool)
        pool = running.engine_pool
        assert pool.open_connections == pool.idle_connections >= 1
        assert httpx.get(f"{running.url}/_cluster/health").status_code == 200


async def test_a_write_is_never_resent_when_the_connection_drops():
    """The upstream reads the write and hangs up without answering: one attempt, then a 502."""
    from tests.support_loopback import FaultServer

    async def hang_up(request, writer):
        return False

    async with FaultServer(hang_up) as server, httpx.AsyncClient(timeout=30) as client:
        with run_proxy(proxy_settings(server.url), reranker=OverlapReranker()) as running:
            for method, body in (("PUT", {"a": 1}), ("POST", {"a": 1}), ("DELETE", None), ("PUT", None)):
                before = len(server.requests)
                response = await client.request(method, f"{running.url}/idx/_doc/1",
                                                content=None if body is None else b'{"a": 1}')
                assert response.status_code == 502, method
                assert len(server.requests) == before + 1, f"{method} was sent more than once"
