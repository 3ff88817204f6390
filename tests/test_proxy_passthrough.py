"""Everything that is not a reranked search passes through byte for byte (both engines)."""

from __future__ import annotations

import gzip
import socket
from types import ModuleType

import httpx
import pytest

from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.support_data import load_corpus, official_client
from tests.support_rerankers import OverlapReranker


def _body(response):
    return getattr(response, "body", response)


def test_crud_with_the_official_client(engine, proxy, index_name):
    client = official_client(engine.kind, proxy.url)
    client.indices.create(index=index_name, body={"settings": {"number_of_replicas": 0}})
    assert client.indices.exists(index=index_name)  # HEAD
    created = _body(client.index(index=index_name, id="a", body={"title": "first"}, refresh=True))
    assert created["result"] == "created"
    assert _body(client.get(index=index_name, id="a"))["_source"] == {"title": "first"}
    client.update(index=index_name, id="a", body={"doc": {"title": "second"}}, refresh=True)
    assert _body(client.get(index=index_name, id="a"))["_source"] == {"title": "second"}
    assert _body(client.delete(index=index_name, id="a", refresh=True))["result"] == "deleted"
    assert not client.exists(index=index_name, id="a")
    client.close()


def test_bulk_and_scan_helpers(engine, proxy, index_name):
    from elasticsearch import helpers as es_helpers
    from opensearchpy import helpers as os_helpers

    # the two clients' helpers have the same bulk and scan
    helpers: ModuleType = es_helpers if engine.kind == "elasticsearch" else os_helpers
    client = official_client(engine.kind, proxy.url)
    actions = ({"_index": index_name, "_id": str(i), "_source": {"n": i, "text": f"doc {i}"}} for i in range(2500))
    ok, errors = helpers.bulk(client, actions, chunk_size=500, refresh=True)
    assert ok == 2500
    assert not errors
    seen = {hit["_id"] for hit in helpers.scan(client, index=index_name,
                                               query={"query": {"match": {"text": "doc"}}}, size=300)}
    assert seen == {str(i) for i in range(2500)}
    client.close()


def test_responses_are_byte_identical(engine, proxy, index_name):
    load_corpus(engine.url, index_name)
    for target in (f"/{index_name}/_doc/3", f"/_cat/indices/{index_name}?h=index,docs.count",
                   f"/{index_name}/_mapping", f"/{index_name}/_doc/missing"):
        mine = httpx.get(proxy.url + target)
        theirs = httpx.get(engine.url + target)
        assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content), target
        assert mine.headers.get("content-type") == theirs.headers.get("content-type")


def test_headers_reach_the_engine(engine, proxy):
    response = httpx.get(f"{proxy.url}/_cluster/health", headers={"X-Opaque-Id": "req-42"})
    assert response.status_code == 200
    assert response.headers.get("x-opaque-id") == "req-42"  # the engines echo it back


def test_compressed_bodies(engine, proxy, index_name):
    client = official_client(engine.kind, proxy.url, http_compress=True)
    client.indices.create(index=index_name, body={"settings": {"number_of_replicas": 0}})
    client.index(index=index_name, id="z", body={"body": "compressed jet engine"}, refresh=True)
    result = _body(client.search(index=index_name, body={"query": {"match": {"body": "engine"}}}))
    assert [h["_id"] for h in result["hits"]["hits"]] == ["z"]
    raw = httpx.post(f"{proxy.url}/{index_name}/_search", content=gzip.compress(b'{"query":{"match":{"body":"jet"}}}'),
                     headers={"content-type": "application/json", "content-encoding": "gzip",
                              "accept-encoding": "gzip"})
    assert raw.status_code == 200
    assert raw.json()["hits"]["hits"][0]["_id"] == "z"
    client.close()


def test_large_bulk_is_streamed(engine, proxy, index_name):
    line = b'{"index":{}}\n{"text":"' + b"x" * 2000 + b'"}\n'
    payload = line * 5000  # about 10 MB

    def chunks():
        for start in range(0, len(payload), 65536):
            yield payload[start:start + 65536]

    response = httpx.post(f"{proxy.url}/{index_name}/_bulk?refresh=true", content=chunks(),
                          headers={"content-type": "application/x-ndjson"}, timeout=120)
    assert response.status_code == 200
    assert response.json()["errors"] is False
    assert httpx.get(f"{engine.url}/{index_name}/_count").json()["count"] == 5000


def test_failover_skips_a_dead_upstream_and_never_duplicates_writes(engine, index_name):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = proxy_settings(f"{dead},{engine.url}")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        client = httpx.Client(base_url=running.url, timeout=30)
        client.put(f"/{index_name}", json={"settings": {"number_of_replicas": 0}})
        for i in range(20):
            response = client.put(f"/{index_name}/_create/{i}", json={"n": i})
            assert response.status_code == 201, response.text
            assert client.get(f"/{index_name}/_doc/{i}").status_code == 200
        client.post(f"/{index_name}/_refresh")
        assert client.get(f"/{index_name}/_count").json()["count"] == 20


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), None)
                if length is not None and len(rest) >= length:
                    break
        return b"".join(chunks)


def test_requests_cannot_be_steered_elsewhere(engine, proxy):
    """A listener stands in for 'elsewhere': it must never see a connection."""
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.2)
    trap_port = trap.getsockname()[1]
    attempts = [
        f"GET http://127.0.0.1:{trap_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{trap_port}\r\nConnection: close\r\n\r\n",
        f"GET //127.0.0.1:{trap_port}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        f"GET /_cluster/health HTTP/1.1\r\nHost: 127.0.0.1:{trap_port}\r\nConnection: close\r\n\r\n",
        f"CONNECT 127.0.0.1:{trap_port} HTTP/1.1\r\nHost: 127.0.0.1:{trap_port}\r\n\r\n",
        f"GET /../../127.0.0.1:{trap_port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    for attempt in attempts:
        reply = _raw_request(proxy.port, attempt.encode())
        assert reply.startswith(b"HTTP/1.1 "), reply[:100]
        with pytest.raises(TimeoutError):  # nothing connected within the trap's 0.2 s
            trap.accept()[0].close()
    trap.close()


async def test_upstream_credentials_are_used_only_when_the_client_sends_none():
    from tests.support_loopback import FaultServer, send_json

    async def echo_auth(request, writer):
        await send_json(writer, 200, {"authorization": request.headers.get("authorization")})

    async with FaultServer(echo_auth) as server, httpx.AsyncClient() as client:
        url = server.url.replace("http://", "http://svc:s3cr3t@")
        with run_proxy(proxy_settings(url), reranker=OverlapReranker()) as running:
            own = await client.get(f"{running.url}/_cluster/health")
            assert own.json() == {"authorization": "Basic c3ZjOnMzY3IzdA=="}
            theirs = await client.get(f"{running.url}/_cluster/health", headers={"Authorization": "ApiKey abc"})
            assert theirs.json() == {"authorization": "ApiKey abc"}
