"""The proxy's own HTTP/1.1 server, spoken to on raw sockets: framing, keep-alive, pipelining,
100-continue, bad requests, engine faults on the pass-through fast path, and `rerank-proxy serve`
with several workers stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import httpx
import orjson
import pytest

from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.support_loopback import FaultServer, response_bytes
from tests.support_rerankers import OverlapReranker
from tests.support_wait import async_wait_until, wait_until


def _exchange(url: str, raw: bytes, responses: int = 1, timeout: float = 30) -> bytes:
    """Send raw bytes, read until `responses` complete responses arrived (or the server closed)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while _complete_responses(data) < responses:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete_responses(data: bytes) -> int:
    """Complete responses in `data` (Content-Length or chunked framing)."""
    count, rest = 0, data
    while b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):
            continue
        if b"transfer-encoding: chunked" in head.lower():
            end = rest.find(b"0\r\n\r\n")
            while end > 0 and rest[end - 2:end] != b"\r\n":
                end = rest.find(b"0\r\n\r\n", end + 1)
            if end < 0:
                break
            rest = rest[end + 5:]
            count += 1
            continue
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if len(rest) < length:
            break
        rest = rest[length:]
        count += 1
    return count


def test_pipelined_requests_are_answered_in_order(engine, proxy, index_name):
    httpx.put(f"{engine.url}/{index_name}/_doc/1?refresh=true", json={"n": 1})
    httpx.put(f"{engine.url}/{index_name}/_doc/2?refresh=true", json={"n": 2})
    raw = b"".join(f"GET /{index_name}/_doc/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in (2, 1, 2))
    data = _exchange(proxy.url, raw, responses=3)
    bodies = [part for part in data.split(b"\r\n\r\n")[1:]]
    ids = [orjson.loads(body[:body.index(b"}}") + 2])["_id"] for body in bodies if body.startswith(b"{")]
    assert ids == ["2", "1", "2"]


def test_http10_client_gets_a_closed_connection(engine, proxy):
    data = _exchange(proxy.url, b"GET /_cluster/health HTTP/1.0\r\n\r\n")
    head = data.split(b"\r\n\r\n")[0].lower()
    assert data.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head


def test_expect_continue_and_chunked_upload(engine, proxy, index_name):
    body = b"".join(b'{"index":{"_id":"%d"}}\n{"n":%d}\n' % (i, i) for i in range(50))
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
    raw = (f"POST /{index_name}/_bulk?refresh=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
           "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    data = _exchange(proxy.url, raw)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), data[:80]
    assert httpx.get(f"{engine.url}/{index_name}/_count").json()["count"] == 50


def test_head_keeps_the_length_and_sends_no_body(engine, proxy, index_name):
    httpx.put(f"{engine.url}/{index_name}/_doc/1?refresh=true", json={"n": 1})
    raw = f"HEAD /{index_name}/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /{index_name}/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw.encode())
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
            data += sock.recv(65536)
    head_answer, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length" in head_answer.lower()
    assert rest.startswith(b"HTTP/1.1 200"), "the HEAD answer carried a body"


def test_malformed_request_gets_an_engine_style_400(proxy):
    data = _exchange(proxy.url, b"GET /_cluster/health HTTP/1.1\r\nHost x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert orjson.loads(body)["error"]["type"] == "illegal_argument_exception"


def test_many_requests_share_one_connection(engine, proxy):
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for _ in range(50):
            sock.sendall(b"GET /_cluster/health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while _complete_responses(data) < 1:
                chunk = sock.recv(65536)
                assert chunk, "the proxy closed a keep-alive connection"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")


async def test_engine_read_timeout_is_a_504():
    async def never_answer(request, writer):
        await asyncio.sleep(3600)

    async with FaultServer(never_answer) as server, httpx.AsyncClient(timeout=30) as client:
        settings = proxy_settings(server.url, UPSTREAM_TIMEOUT_S="0.5")
        with run_proxy(settings, reranker=OverlapReranker()) as running:
            response = await client.get(f"{running.url}/_cluster/health")
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "proxy_upstream_timeout_exception"


async def test_a_stale_pooled_connection_is_retried_for_reads_only():
    """The engine answers, then closes the kept-alive connection: the next GET is asked again on a
    new connection; a PUT that meets a dead connection is not resent."""
    async def answer_then_hang_up(request, writer):
        writer.write(response_bytes(200, b'{"ok":true}'))
        await writer.drain()
        return False

    async with FaultServer(answer_then_hang_up) as server, httpx.AsyncClient(timeout=30) as client:
        with run_proxy(proxy_settings(server.url), reranker=OverlapReranker()) as running:
            for _ in range(5):
                response = await client.get(f"{running.url}/_cluster/health")
                assert response.status_code == 200
            writes = 0
            for _ in range(5):
                before = len(server.requests)
                response = await client.put(f"{running.url}/idx/_doc/1", content=b'{"a":1}')
                assert response.status_code in (200, 502)
                assert len(server.requests) == before + (response.status_code == 200)
                writes += response.status_code == 200
            assert writes >= 1


async def test_a_client_hanging_up_mid_pass_through_leaks_nothing():
    arrived: asyncio.Queue[object] = asyncio.Queue()
    release = asyncio.Event()

    async def slow(request, writer):
        await arrived.put(request)
        await release.wait()  # the engine answers only after the client has gone
        writer.write(response_bytes(200, b'{"ok":true}'))
        await writer.drain()

    async with FaultServer(slow) as server, httpx.AsyncClient(timeout=30) as client:
        with run_proxy(proxy_settings(server.url), reranker=OverlapReranker()) as running:
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", running.port)) as sock:
                    sock.sendall(b"GET /_cluster/health HTTP/1.1\r\nHost: x\r\n\r\n")
                    await asyncio.wait_for(arrived.get(), 30)
            # the proxy notices each hang-up and lets go
            await async_wait_until(lambda: running.in_flight == 0, "the hung-up requests to end")
            release.set()
            assert running.engine_pool.idle_connections == 0
            response = await client.get(f"{running.url}/_cluster/health")
            assert response.status_code == 200


def test_serve_with_two_workers_answers_and_stops_on_sigterm(engine):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RERANK_", "UPSTREAM_"))}
    env.update({"UPSTREAM_URLS": engine.url, "RERANK_PROVIDER": "none", "PORT": str(port), "WORKERS": "2",
                "LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = proc.stderr
    assert stderr is not None  # stderr=PIPE

    def health() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/_cluster/health", timeout=5)
        except httpx.TransportError:
            assert proc.poll() is None, stderr.read().decode()
            return None

    try:
        response = wait_until(health, "the proxy to start", timeout_s=120, interval_s=0.1)
        assert response is not None  # wait_until returns only a truthy value
        assert response.status_code == 200
        with httpx.Client() as client:  # both workers answer (each request on a new connection)
            statuses = {client.get(f"http://127.0.0.1:{port}/_cluster/health",
                                   headers={"Connection": "close"}).status_code for _ in range(20)}
        assert statuses == {200}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, stderr.read().decode()


@pytest.mark.parametrize("target", ["http://elsewhere.example/_cluster/health", "*"])
def test_non_origin_targets_are_refused(proxy, target):
    data = _exchange(proxy.url, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 400")


def test_a_large_answer_to_a_stalled_client_arrives_whole(engine, proxy, index_name):
    """A 12 MB answer to a client that does not read at first: the relay pauses (its buffer to the
    client is full, so it stops reading the engine), then resumes, and every byte arrives in order."""
    for n in range(3):  # three 4 MB documents (one 12 MB document passes the engine's indexing limit)
        text = "".join(f"{n}{i:07d}" for i in range(500_000))
        httpx.put(f"{engine.url}/{index_name}/_doc/big{n}", json={"text": text}, timeout=120).raise_for_status()
    httpx.post(f"{engine.url}/{index_name}/_refresh")
    body = b'{"ids":["big0","big1","big2"]}'
    direct = httpx.post(f"{engine.url}/{index_name}/_mget", content=body,
                        headers={"Content-Type": "application/json"}, timeout=120).content
    assert len(direct) > 12_000_000
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"POST /{index_name}/_mget HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: _engine_reading_paused(proxy), "the relay to stop reading the engine", timeout_s=60)
        data = b""
        while _complete_responses(data) < 1:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection mid-answer"
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    assert body == direct
    # the engine connection went back to the pool reading again: the next request is answered
    for _ in range(3):
        assert httpx.get(f"{proxy.url}/_cluster/health", timeout=10).status_code == 200


def _engine_reading_paused(proxy) -> bool:
    """Some client's answer is held back at the engine: the relay stopped reading its engine
    connection (the public `reading_paused` of the pass-through's engine connection)."""
    for conn in list(proxy.server.server.connections):
        engine_conn = getattr(conn.active, "conn", None)
        if engine_conn is not None and engine_conn.reading_paused:
            return True
    return False


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2:]
