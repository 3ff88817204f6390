"""The HTTP edge probed as an attacker would: raw bytes on sockets.

Each probe checks three things: what the client got (an engine-style error, or its own answer),
what the engine received (a counting upstream records every complete request exactly as it
arrived, or a real engine's state), and that a second client on a fresh connection still gets its
own answer (no response left on a pooled engine connection for someone else).
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.fixtures.proxy import RunningProxy, proxy_settings, run_proxy
from tests.support_loopback import RecordingUpstream
from tests.support_rerankers import OverlapReranker

KEY = "edge-key"
HEADER_LIMIT = 16384


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[RecordingUpstream, RunningProxy]]:
    upstream = RecordingUpstream()
    settings = proxy_settings(upstream.url, PROXY_API_KEYS=KEY, MAX_HEADER_BYTES=str(HEADER_LIMIT),
                              UPSTREAM_TIMEOUT_S="1", CLIENT_HEADER_TIMEOUT_S="1", CLIENT_BODY_TIMEOUT_S="2",
                              CLIENT_BODY_MIN_RATE="0")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        yield upstream, running
    upstream.close()


def _connect(proxy: RunningProxy, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the proxy closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _one_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length framed response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = _header_values(head, b"content-length")
    assert len(length) == 1, head
    while len(body) < int(length[0]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def _header_values(head: bytes, name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].strip().lower() == name]


def _second_client_gets_its_own(proxy: RunningProxy, upstream: RecordingUpstream) -> None:
    """A fresh client, most likely on the same pooled engine connection, gets its own answer."""
    for _ in range(3):
        marker = f"/second-{uuid.uuid4().hex[:8]}"
        with _connect(proxy) as sock:
            sock.sendall(f"GET {marker} HTTP/1.1\r\nHost: x\r\nX-Proxy-Api-Key: {KEY}\r\n\r\n".encode())
            head, body = _one_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert orjson.loads(body)["path"] == marker


def _assert_engine_error(data: bytes, status: int) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), data[:200]
    error = orjson.loads(body)
    assert error["status"] == status
    assert error["error"]["root_cause"][0]["type"] == error["error"]["type"]


# --- 1. Connection: Content-Length ----------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("connection", ["Content-Length", "content-length", "keep-alive, Content-Length",
                                        "CONTENT-LENGTH , keep-alive", "Transfer-Encoding"])
def test_connection_header_cannot_remove_framing(counted, connection):
    upstream, proxy = counted
    before = len(upstream.requests)
    path = f"/idx/_doc/{uuid.uuid4().hex[:8]}"
    with _connect(proxy) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Proxy-Api-Key: {KEY}\r\nConnection: {connection}\r\n"
                     f"Content-Length: {len(SMUGGLED)}\r\n\r\n".encode() + SMUGGLED)
        head, body = _one_response(sock)
    assert head.startswith(b"HTTP/1.1 200")
    assert orjson.loads(body)["path"] == path
    assert upstream.requests[before:]
    assert upstream.requests[before][1] == path
    assert upstream.requests[before][3] == SMUGGLED  # the body arrived as a body
    _second_client_gets_its_own(proxy, upstream)
    assert "/smuggled" not in upstream.paths()


def test_a_smuggled_request_never_skips_the_api_key(counted):
    """The outer request carries the key; the one hidden in its body (no key) never reaches the engine."""
    upstream, proxy = counted
    hidden = b"DELETE /everything HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(proxy) as sock:
        sock.sendall(f"POST /idx/_doc HTTP/1.1\r\nHost: x\r\nX-Proxy-Api-Key: {KEY}\r\n"
                     f"Connection: keep-alive, Content-Length\r\nContent-Length: {len(hidden)}\r\n\r\n".encode()
                     + hidden)
        _one_response(sock)
        sock.sendall(hidden)  # and on the client's own connection, without the key: refused
        head, _ = _one_response(sock)
    assert head.startswith(b"HTTP/1.1 401")
    _second_client_gets_its_own(proxy, upstream)
    assert "/everything" not in upstream.paths()


# --- the classic smuggling set, framing errors, non-origin targets -------------------------------

H = f"Host: x\r\nX-Proxy-Api-Key: {KEY}\r\n"
REFUSED = {
    "cl_then_te": f"POST /a HTTP/1.1\r\n{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_then_cl": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two_lengths": f"POST /a HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "length_list": f"POST /a HTTP/1.1\r\n{H}Content-Length: 3, 3\r\n\r\nabc",
    "te_chunked_identity": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_identity_body": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: identity\r\n\r\nabc",
    "te_twice": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
    "obs_fold": f"GET /a HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n",
    "obs_fold_te": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bare_lf": f"GET /a HTTP/1.1\n{H}\n",
    "bare_cr": "GET /a HTTP/1.1\rHost: x\r\r",
    "lf_in_header": f"GET /a HTTP/1.1\r\n{H}X-A: a\nX-B: b\r\n\r\n",
    "nul_in_header": f"GET /a HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n",
    "space_before_colon": f"POST /a HTTP/1.1\r\n{H}Content-Length : 3\r\n\r\nabc",
    "chunk_size_0x": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n0x7\r\nabcdefg\r\n0\r\n\r\n",
    "chunk_size_huge": f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{'f' * 19}\r\nabc\r\n0\r\n\r\n",
    "absolute_uri": f"GET http://elsewhere.example/a HTTP/1.1\r\n{H}\r\n",
    "double_slash": f"GET //elsewhere.example/a HTTP/1.1\r\n{H}\r\n",
    "connect": f"CONNECT elsewhere.example:443 HTTP/1.1\r\n{H}\r\n",
    "options_star": f"OPTIONS * HTTP/1.1\r\n{H}\r\n",
    "h2_preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "http_0_9": "GET /a\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_or_ambiguous_requests_get_a_400_and_reach_nothing(counted, case):
    upstream, proxy = counted
    before = len(upstream.requests)
    with _connect(proxy) as sock:
        sock.sendall(REFUSED[case].encode("latin-1") + b"GET /after HTTP/1.1\r\n" + H.encode() + b"\r\n")
        data = _read_all(sock)  # answered, then closed
    _assert_engine_error(data, 400)
    assert data.count(b"HTTP/1.1 ") == 1, "nothing after the refused request was answered"
    assert upstream.paths()[before:] == []
    _second_client_gets_its_own(proxy, upstream)


@pytest.mark.parametrize("upgrade", [
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n",
])
def test_upgrades_are_answered_as_plain_http_and_nothing_after_is_forwarded(counted, upgrade):
    upstream, proxy = counted
    before = len(upstream.requests)
    with _connect(proxy) as sock:
        sock.sendall(f"GET /up HTTP/1.1\r\n{H}{upgrade}\r\n".encode() + b"PRI * HTTP/2.0\r\n\r\n" + SMUGGLED)
        data = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert data.count(b"HTTP/1.1 ") == 1
    new = upstream.requests[before:]
    assert [path for _, path, _, _ in new] == ["/up"]
    names = {name.lower() for name, _ in new[0][2]}
    assert not names & {b"upgrade", b"connection", b"http2-settings"}
    _second_client_gets_its_own(proxy, upstream)


def test_trailers_are_not_headers(counted):
    upstream, proxy = counted
    before = len(upstream.requests)
    with _connect(proxy) as sock:
        sock.sendall(f"POST /t HTTP/1.1\r\n{H}X-Opaque-Id: from-header\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + b"3\r\nabc\r\n0\r\nX-Opaque-Id: from-trailer\r\nX-Injected: 1\r\n\r\n")
        head, _ = _one_response(sock)
    assert head.startswith(b"HTTP/1.1 200")
    _, _, headers, body = upstream.requests[before]
    assert body == b"abc"
    assert [v for k, v in headers if k.lower() == b"x-opaque-id"] == [b"from-header"]
    assert not any(k.lower() == b"x-injected" for k, _ in headers)
    assert b"from-trailer" not in b"".join(bytes(raw) for raw in upstream.raw)


# --- 2. header size enforced while parsing ----------------------------------------------------------

@pytest.mark.parametrize("start", [b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: ", b"GET /"])
def test_an_endless_head_gets_431_before_it_ends(counted, start):
    """Header (or URL) bytes keep coming and never end: the 431 arrives after a bounded amount."""
    upstream, proxy = counted
    before = len(upstream.requests)
    with _connect(proxy) as sock:
        sock.sendall(start)
        sent, answer = 0, b""
        sock.settimeout(0.05)
        deadline = time.monotonic() + 60
        while not answer and time.monotonic() < deadline:
            try:
                sock.sendall(b"a" * 65536)
                sent += 65536
            except OSError:
                pass
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            answer += _read_all(sock)
    _assert_engine_error(answer, 431)
    assert sent < 64 * HEADER_LIMIT, f"the proxy read {sent} bytes of one head before refusing"
    assert upstream.requests[before:] == []


def test_the_url_counts_toward_the_header_limit(counted):
    _, proxy = counted
    with _connect(proxy) as sock:
        sock.sendall(f"GET /{'u' * 9000} HTTP/1.1\r\n{H}X-Pad: {'p' * 8000}\r\n\r\n".encode())
        head, body = _one_response(sock)
    _assert_engine_error(head + b"\r\n\r\n" + body, 431)


# --- 3/4. slow heads, slow bodies, slow uploads --------------------------------------------------------

def test_a_head_that_never_ends_gets_408(counted):
    _, proxy = counted
    with _connect(proxy) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        data = _read_all(sock)
    _assert_engine_error(data, 408)


def test_a_stalled_body_gets_408_and_the_engine_never_acts_on_it(counted):
    upstream, proxy = counted
    before = len(upstream.requests)
    with _connect(proxy) as sock:
        sock.sendall(f"PUT /stall/_doc/1 HTTP/1.1\r\n{H}Content-Length: 100\r\n\r\n".encode() + b"x" * 10)
        data = _read_all(sock)
    _assert_engine_error(data, 408)
    assert "/stall/_doc/1" not in upstream.paths()[before:]
    _second_client_gets_its_own(proxy, upstream)


def test_an_upload_slower_than_the_engine_timeout_is_not_cut(counted):
    """UPSTREAM_TIMEOUT_S (1 s here) runs from the last byte sent, not from the first."""
    _, proxy = counted
    parts = [b"a" * 1000] * 4
    with _connect(proxy) as sock:
        sock.sendall(f"PUT /upload/_doc/1 HTTP/1.1\r\n{H}Content-Length: 4000\r\n\r\n".encode())
        for part in parts:  # the client is slow on purpose: 4 x 0.6 s, more than the engine timeout
            time.sleep(0.6)
            sock.sendall(part)
        head, body = _one_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert orjson.loads(body)["body_bytes"] == 4000


# --- real engines ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def es_proxy(es_engine) -> Iterator[RunningProxy]:
    with run_proxy(proxy_settings(es_engine.url), reranker=OverlapReranker()) as running:
        yield running


def _raw(proxy: RunningProxy, raw: bytes) -> bytes:
    with _connect(proxy) as sock:
        sock.sendall(raw)
        head, body = _one_response(sock)
    return head + b"\r\n\r\n" + body


def test_smuggled_write_never_lands_in_a_real_engine(es_engine, es_proxy, index_name):
    httpx.put(f"{es_engine.url}/{index_name}", json={"settings": {"number_of_replicas": 0}}).raise_for_status()
    inner = (f'PUT /{index_name}/_doc/evil?refresh=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
             f'Content-Length: 2\r\n\r\n{{}}').encode()
    head = (f"POST /{index_name}/_doc/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Connection: keep-alive, Content-Length\r\nContent-Length: {len(inner)}\r\n\r\n").encode()
    answer = _raw(es_proxy, head + inner)
    assert answer.startswith(b"HTTP/1.1 400")  # the engine read the bytes as a (bad) JSON body
    for _ in range(3):  # later clients get their own answers
        health = httpx.get(f"{es_proxy.url}/_cluster/health", timeout=30)
        assert health.status_code == 200
        assert "cluster_name" in health.json()
    httpx.post(f"{es_engine.url}/{index_name}/_refresh")
    assert httpx.get(f"{es_engine.url}/{index_name}/_doc/evil").status_code == 404


def test_a_bad_chunk_size_is_a_400_and_writes_nothing(es_engine, es_proxy, index_name):
    httpx.put(f"{es_engine.url}/{index_name}", json={"settings": {"number_of_replicas": 0}}).raise_for_status()
    raw = (f"PUT /{index_name}/_doc/1?refresh=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           "Transfer-Encoding: chunked\r\n\r\n").encode() + b"0x7\r\n{\"a\":1}\r\n0\r\n\r\n"
    with _connect(es_proxy) as sock:
        sock.sendall(raw)
        data = _read_all(sock)
    _assert_engine_error(data, 400)
    assert httpx.get(f"{es_engine.url}/{index_name}/_doc/1").status_code == 404


def test_an_engine_error_on_a_reranked_search_has_one_content_length(es_proxy):
    body = b'{"query":{"match":{"t":"anything"}}}'
    answer = _raw(es_proxy, f"POST /missing-{uuid.uuid4().hex[:8]}/_search HTTP/1.1\r\nHost: x\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = answer.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 404")
    assert len(_header_values(head, b"content-length")) == 1
    assert len(_header_values(head, b"content-type")) == 1


def test_targets_are_decoded_once_as_the_engine_does(es_engine, es_proxy, index_name):
    for suffix in ("a", "b"):
        httpx.put(f"{es_engine.url}/{index_name}{suffix}/_doc/1?refresh=true", json={"t": "word"}).raise_for_status()
    body = b'{"query":{"match":{"t":"word"}}}'
    request = (f"POST /{index_name}a%252C{index_name}b/_search HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    direct = socket.create_connection(("127.0.0.1", int(es_engine.url.rsplit(":", 1)[1])), timeout=30)
    with direct:
        direct.sendall(request)
        engine_head, _ = _one_response(direct)
    proxied = _raw(es_proxy, request)
    assert proxied.split(b" ", 2)[1] == engine_head.split(b" ", 2)[1]  # same status as the engine
    assert not proxied.startswith(b"HTTP/1.1 200")
    # the same index pair written once-encoded is one search over both, reranked
    once = _raw(es_proxy, request.replace(b"%252C", b"%2C"))
    assert once.startswith(b"HTTP/1.1 200")
    assert orjson.loads(once.partition(b"\r\n\r\n")[2])["hits"]["total"]["value"] == 2


# --- slow clients cannot hold search slots ---------------------------------------------------------

def test_searches_keep_answering_under_a_thousand_slow_uploads(es_engine, index_name):
    """1,000 connections each start a search and send its body one byte at a time; slots are taken
    only by complete searches, so other clients' searches keep answering (never 429)."""
    httpx.put(f"{es_engine.url}/{index_name}/_doc/1?refresh=true", json={"t": "fast search"}).raise_for_status()
    settings = proxy_settings(es_engine.url, MAX_CONCURRENT_REQUESTS="50", CLIENT_BODY_TIMEOUT_S="120",
                              CLIENT_BODY_MIN_RATE="0")
    body = b'{"query":{"match":{"t":"fast"}}}'
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        slow = []
        try:
            for _ in range(1000):
                sock = _connect(proxy)
                sock.sendall(f"POST /{index_name}/_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1])
                slow.append(sock)
            for sock in slow:  # a second byte each: they are alive and still uploading
                sock.sendall(body[1:2])
            with httpx.Client(timeout=30) as client:
                statuses = [client.post(f"{proxy.url}/{index_name}/_search", content=body,
                                        headers={"Content-Type": "application/json"}).status_code
                            for _ in range(20)]
            assert statuses == [200] * 20
            assert proxy.in_flight == 0  # none of the 1,000 holds a slot
        finally:
            for sock in slow:
                sock.close()


def test_a_body_slower_than_the_minimum_rate_gets_408(es_engine):
    settings = proxy_settings(es_engine.url, CLIENT_BODY_TIMEOUT_S="1", CLIENT_BODY_MIN_RATE="1000")
    with run_proxy(settings, reranker=OverlapReranker()) as proxy, _connect(proxy) as sock:
        sock.sendall(b"POST /any/_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        sock.settimeout(0.3)
        data = b""
        deadline = time.monotonic() + 60
        while not data and time.monotonic() < deadline:  # a byte every 0.3 s: never idle, far too slow
            try:
                sock.sendall(b" ")
                data = sock.recv(65536)
            except TimeoutError:
                continue
        sock.settimeout(30)
        data += _read_all(sock)
    _assert_engine_error(data, 408)


# --- what one request can cost ---------------------------------------------------------------------

def test_an_msearch_past_the_cap_is_refused_with_bounded_memory(es_proxy):
    """5,000 sub-searches (MAX_MSEARCH_SEARCHES is 1,000): an engine-style 400, nothing parsed."""
    import tracemalloc

    line = b'{"index":"docs"}\n{"query":{"match":{"t":"word"}}}\n'
    body = line * 5000
    tracemalloc.start()
    try:
        response = httpx.post(f"{es_proxy.url}/_msearch", content=body,
                              headers={"Content-Type": "application/x-ndjson"}, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "illegal_argument_exception"
    assert "MAX_MSEARCH_SEARCHES" in response.json()["error"]["reason"]
    print(f"msearch of 5000 sub-searches ({len(body)} bytes): traced peak {peak} bytes")
    assert peak < 16 * len(body) + 8_000_000, f"peak {peak} bytes"  # body copies, never a parsed tree


def test_candidates_past_the_byte_bound_are_never_held(es_engine, index_name):
    """A window of large documents bigger than MAX_CANDIDATE_BYTES: the search is answered by the
    engine as is (lexical order, flagged), and the proxy never held the whole window."""
    import tracemalloc

    text = "word " + "x" * 40_000
    bulk = b"".join(b'{"index":{"_id":"%d"}}\n{"t":"%b"}\n' % (i, text.encode()) for i in range(400))
    httpx.post(f"{es_engine.url}/{index_name}/_bulk?refresh=true", content=bulk,
               headers={"Content-Type": "application/x-ndjson"}, timeout=120).raise_for_status()
    settings = proxy_settings(es_engine.url, MAX_CANDIDATE_BYTES="1048576", RERANK_WINDOW="400")
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        tracemalloc.start()
        try:
            response = httpx.post(f"{proxy.url}/{index_name}/_search", json={"query": {"match": {"t": "word"}},
                                                                          "size": 5}, timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200
    assert len(response.json()["hits"]["hits"]) == 5
    assert response.headers["x-rerank"] == "bypass"
    assert response.headers["x-rerank-reason"] == "candidates_too_large"
    print(f"window of 400 x 40 KB documents, MAX_CANDIDATE_BYTES=1 MiB: traced peak {peak} bytes")
    assert peak < 8_000_000, f"peak {peak} bytes for a 16 MB window"
    # The same with the window asked in the search itself: the engine gets the search without the
    # proxy's `rerank` extension (it would refuse the unknown key).
    with run_proxy(proxy_settings(es_engine.url, MAX_CANDIDATE_BYTES="1048576"), reranker=OverlapReranker()) as proxy:
        asked = httpx.post(f"{proxy.url}/{index_name}/_search", json={"query": {"match": {"t": "word"}}, "size": 5,
                                                                      "rerank": {"window": 400}}, timeout=60)
    assert asked.status_code == 200
    assert len(asked.json()["hits"]["hits"]) == 5
    assert asked.headers["x-rerank-reason"] == "candidates_too_large"
