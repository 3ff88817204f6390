"""Fair share at the edge: one client's requests, however many and however slow, cannot take the
engine connections or the next request of a kept-alive connection from the others.

Raw sockets against a counting upstream (what the engine received, exactly) and a real
Elasticsearch (what it wrote); "others" are plain clients on fresh connections, timed against the
issue's 3 s bound, which is a starvation bound, not a speed target.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack

import httptools
import httpx
import orjson
import pytest

from rerank_proxy.edge.relay_observers import CopyBudget
from tests.fixtures.proxy import RunningProxy, proxy_settings, run_proxy
from tests.support_loopback import RecordingUpstream
from tests.support_rerankers import OverlapReranker

H = "Host: x\r\n"
UPGRADE = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
STARVATION_BOUND_S = 3.0


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def json(self) -> dict:
        return orjson.loads(self.body)


class RawClient:
    """One raw connection that reads answers one at a time (Content-Length or chunked)."""

    def __init__(self, proxy: RunningProxy, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
        self._responses: list[Response] = []
        self._current = Response()
        self._parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.on_header(name, value)

    def on_body(self, body: bytes) -> None:
        self._current.on_body(body)

    def on_message_complete(self) -> None:
        self._current.status = self._parser.get_status_code()
        self._current.complete = True
        self._responses.append(self._current)
        self._current = Response()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> Response:
        while not self._responses:
            data = self.sock.recv(65536)
            assert data, "the connection closed before a whole answer"
            self._parser.feed_data(data)
        return self._responses.pop(0)

    def closed_by_proxy(self) -> bool:
        """True when the proxy closes the connection with nothing more to say."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[RecordingUpstream, RunningProxy]]:
    upstream = RecordingUpstream()
    with run_proxy(proxy_settings(upstream.url), reranker=OverlapReranker()) as running:
        yield upstream, running
    upstream.close()


@pytest.fixture(scope="module")
def es_proxy(es_engine) -> Iterator[RunningProxy]:
    with run_proxy(proxy_settings(es_engine.url), reranker=OverlapReranker()) as running:
        yield running


def _others_are_served(proxy: RunningProxy, index: str) -> list[float]:
    """Another client's GET and search on fresh connections: each one's wait, all answered 200."""
    waits = []
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            started = time.monotonic()
            got = client.get(f"{proxy.url}/{index}/_doc/1")
            found = client.post(f"{proxy.url}/{index}/_search", json={"query": {"match": {"t": "fast"}}})
            waits.append(time.monotonic() - started)
            assert (got.status_code, found.status_code) == (200, 200), (got.text, found.text)
    return waits


# --- 1. Upgrade with a body ----------------------------------------------------------------------

def test_an_upgrade_request_body_is_read_and_relayed_whole(counted):
    upstream, proxy = counted
    before = len(upstream.requests)
    client = RawClient(proxy)
    client.send(f"PUT /u0 HTTP/1.1\r\n{H}{UPGRADE}Content-Length: 7\r\n\r\n".encode() + b'{"a":1}'
                + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = client.response()
    assert answer.status == 200
    assert answer.json()["body_bytes"] == 7
    assert client.closed_by_proxy()  # the upgrade is ignored, the connection ends after its answer
    new = upstream.requests[before:]
    assert [(method, path, body) for method, path, _, body in new] == [("PUT", "/u0", b'{"a":1}')]
    assert not {name.lower() for name, _ in new[0][2]} & {b"upgrade", b"connection", b"http2-settings"}


def test_an_upgrade_request_with_a_chunked_body_is_read_whole(counted):
    upstream, proxy = counted
    before = len(upstream.requests)
    client = RawClient(proxy)
    client.send(f"POST /u1 HTTP/1.1\r\n{H}{UPGRADE}Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert client.response().json()["body_bytes"] == 7
    assert [body for _, _, _, body in upstream.requests[before:]] == [b"abcdefg"]


def test_an_upgrade_write_and_search_reach_a_real_engine_with_their_bodies(es_engine, es_proxy, index_name):
    doc = orjson.dumps({"t": "upgraded write"})
    client = RawClient(es_proxy)
    client.send(f"PUT /{index_name}/_doc/u0?refresh=true HTTP/1.1\r\n{H}{UPGRADE}Content-Type: application/json\r\n"
                f"Content-Length: {len(doc)}\r\n\r\n".encode() + doc)
    assert client.response().status == 201
    assert httpx.get(f"{es_engine.url}/{index_name}/_doc/u0").json()["_source"] == {"t": "upgraded write"}
    for i in range(5):
        httpx.put(f"{es_engine.url}/{index_name}/_doc/{i}", json={"t": f"upgraded doc {i}"})
    httpx.post(f"{es_engine.url}/{index_name}/_refresh")
    search = orjson.dumps({"size": 2, "query": {"match": {"t": "doc"}}})
    client = RawClient(es_proxy)
    client.send(f"POST /{index_name}/_search HTTP/1.1\r\n{H}{UPGRADE}Content-Type: application/json\r\n"
                f"Content-Length: {len(search)}\r\n\r\n".encode() + search)
    answer = client.response()
    assert answer.status == 200
    hits = answer.json()["hits"]["hits"]
    assert len(hits) == 2
    assert all(hit["_id"] != "u0" for hit in hits)


def test_held_upgrade_requests_take_no_engine_connection_and_time_out(es_engine, index_name):
    httpx.put(f"{es_engine.url}/{index_name}/_doc/1?refresh=true", json={"t": "fast search"}).raise_for_status()
    settings = proxy_settings(es_engine.url, UPSTREAM_MAX_CONNECTIONS="16", CLIENT_BODY_TIMEOUT_S="3",
                              CLIENT_BODY_MIN_RATE="0")
    with run_proxy(settings, reranker=OverlapReranker()) as proxy, ExitStack() as held:
        clients = []
        for n in range(24):
            client = RawClient(proxy)
            held.callback(client.close)
            client.send(f"PUT /{index_name}/_doc/h{n} HTTP/1.1\r\n{H}{UPGRADE}Content-Type: application/json\r\n"
                        "Content-Length: 7\r\n\r\n{\"a\"".encode())
            clients.append(client)
        assert max(_others_are_served(proxy, index_name)) < STARVATION_BOUND_S
        for client in clients:  # never completed: each gets the client body timeout, nothing is written
            assert client.response().status == 408
        assert httpx.get(f"{es_engine.url}/{index_name}/_count").json()["count"] == 1


# --- 2. Slow uploads --------------------------------------------------------------------------

def test_slow_uploads_pin_no_engine_connection(es_engine, index_name):
    """24 uploads declaring 10 MB, at about 2 KB/s: received before any engine connection is taken."""
    httpx.put(f"{es_engine.url}/{index_name}/_doc/1?refresh=true", json={"t": "fast search"}).raise_for_status()
    settings = proxy_settings(es_engine.url, UPSTREAM_MAX_CONNECTIONS="16")
    with run_proxy(settings, reranker=OverlapReranker()) as proxy, ExitStack() as held:
        uploads = []
        for n in range(24):
            client = RawClient(proxy)
            held.callback(client.close)
            client.send(f"PUT /{index_name}/_doc/s{n} HTTP/1.1\r\n{H}Content-Type: application/json\r\n"
                        f"Content-Length: {10_000_000}\r\n\r\n".encode() + b'{"t":"' + b"x" * 2000)
            uploads.append(client)
        waits = []
        for _ in range(3):  # still uploading, at 2 KB a second each
            for client in uploads:
                client.send(b"x" * 2000)
            waits += _others_are_served(proxy, index_name)
        assert max(waits) < STARVATION_BOUND_S


def test_uploads_past_the_buffer_hold_at_most_their_share_of_engine_connections(es_engine, index_name):
    """Bodies larger than the buffer stream to the engine, on a quarter of the connections at most:
    the rest wait for an upload slot and get the engine-style 429; reads and searches go on."""
    httpx.put(f"{es_engine.url}/{index_name}/_doc/1?refresh=true", json={"t": "fast search"}).raise_for_status()
    settings = proxy_settings(es_engine.url, UPSTREAM_MAX_CONNECTIONS="16", UPSTREAM_CONNECT_TIMEOUT_S="2")
    with run_proxy(settings, reranker=OverlapReranker()) as proxy, ExitStack() as held:
        uploads = []
        for n in range(24):
            client = RawClient(proxy)
            held.callback(client.close)
            client.send(f"PUT /{index_name}/_doc/b{n} HTTP/1.1\r\n{H}Content-Type: application/json\r\n"
                        f"Content-Length: {10_000_000}\r\n\r\n".encode() + b'{"t":"' + b"x" * 400_000)
            uploads.append(client)
        assert max(_others_are_served(proxy, index_name)) < STARVATION_BOUND_S
        refused = []
        for client in uploads[4:]:  # the first four streamed on the upload slots; these waited for one
            answer = client.response()
            refused.append((answer.status, answer.json()["error"]["type"]))
        assert refused == [(429, "rejected_execution_exception")] * 20
        assert max(_others_are_served(proxy, index_name)) < STARVATION_BOUND_S


# --- 4. An engine that answers before the body -----------------------------------------------------

@pytest.mark.parametrize("body_size", [13, 600_000], ids=["small", "streamed"])
def test_an_early_engine_answer_keeps_the_connection(es_proxy, body_size):
    """Elasticsearch answers "no handler" from the head alone; the next request on the same
    connection is still answered, as it is by the engine directly."""
    body = b'{"a":"' + b"b" * (body_size - 8) + b'"}'
    client = RawClient(es_proxy)
    client.send(f"PUT /_cluster/no_such_handler HTTP/1.1\r\n{H}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
    if body_size > 1000:  # streamed: the engine's answer comes before the rest of the body
        assert client.response().status == 400
        client.send(body[len(body) // 2:])
    else:
        time.sleep(0.2)  # the client's own pacing (the defect's reproduction), not a synchronisation
        client.send(body[len(body) // 2:])
        assert client.response().status == 400
    client.send(f"GET /_cluster/health HTTP/1.1\r\n{H}\r\n".encode())
    assert client.response().status == 200


def test_an_early_answer_with_much_body_left_announces_the_close(es_proxy):
    """Past what is worth reading and dropping, the client is told in the answer's head."""
    client = RawClient(es_proxy)
    client.send(f"PUT /_cluster/no_such_handler HTTP/1.1\r\n{H}Content-Type: application/json\r\n"
                f"Content-Length: {5_000_000}\r\n\r\n".encode() + b"x" * 400_000)
    answer = client.response()
    assert answer.status == 400
    assert answer.headers[b"connection"].lower() == b"close"
    assert client.closed_by_proxy()


# --- 5. Pipelined requests before a refused one ------------------------------------------------------

def test_requests_pipelined_before_a_refused_one_are_answered_in_turn(counted):
    upstream, proxy = counted
    before = len(upstream.requests)
    client = RawClient(proxy)
    client.send(f"GET /a HTTP/1.1\r\n{H}\r\nGET /b HTTP/1.1\r\n{H}\r\nGET /c HTTP/1.1\r\nContent-Length: x\r\n\r\n"
                .encode())
    answers = [client.response() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 400]
    assert [a.json()["path"] for a in answers[:2]] == ["/a", "/b"]
    assert client.closed_by_proxy()
    assert upstream.paths()[before:] == ["/a", "/b"]


# --- 7. Smaller ones --------------------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_oversized_search_body_gets_a_readable_413(counted, framing):
    """The client is still sending when the proxy refuses: the answer must arrive, not a reset."""
    _, proxy = counted
    client = RawClient(proxy)
    size = 12 * 1024 * 1024  # past MAX_SEARCH_BODY_BYTES (10 MiB)
    framing_header = f"Content-Length: {size}" if framing == "length" else "Transfer-Encoding: chunked"
    client.send(f"POST /i/_search HTTP/1.1\r\n{H}Content-Type: application/json\r\n{framing_header}\r\n\r\n".encode())

    send_errors: list[OSError] = []

    def upload() -> None:  # as an HTTP client library does: the whole body, then the answer
        piece = b"x" * 65536
        if framing == "chunked":
            piece = b"%x\r\n%b\r\n" % (len(piece), piece)
        try:
            for _ in range(size // 65536):
                client.sock.sendall(piece)
        except OSError as exc:  # a reset: the client library raises and never reads the answer
            send_errors.append(exc)

    sender = threading.Thread(target=upload)
    sender.start()
    sender.join()
    assert send_errors == []
    answer = client.response()
    assert answer.status == 413
    assert answer.json()["error"]["type"] == "content_too_long_exception"


def _direct_and_proxied_ids(engine_url: str, proxy_url: str, index: str, head: bytes, body: bytes) -> tuple:
    def ids(base: str) -> list[str]:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head + body)
            reader = Response()
            parser = httptools.HttpResponseParser(reader)
            while not reader.complete:
                data = sock.recv(65536)
                assert data
                parser.feed_data(data)
        assert parser.get_status_code() == 200, reader.body
        return [hit["_id"] for hit in reader.json()["hits"]["hits"]]
    return ids(engine_url), ids(proxy_url)


def test_transfer_and_content_codings_are_read_as_the_engine_reads_them(engine, index_name):
    for i, text in enumerate(["alpha", "beta", "beta gamma"]):
        httpx.put(f"{engine.url}/{index_name}/_doc/{i}", json={"t": text})
    httpx.post(f"{engine.url}/{index_name}/_refresh")
    query = orjson.dumps({"query": {"match": {"t": "beta"}}})
    zipped = gzip.compress(query)
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = deflater.compress(query) + deflater.flush()
    cases = {
        "gzip, chunked": (b"Transfer-Encoding: gzip, chunked\r\n", b"%x\r\n%b\r\n0\r\n\r\n" % (len(zipped), zipped)),
        "raw deflate": (b"Content-Encoding: deflate\r\nContent-Length: %d\r\n" % len(raw_deflate), raw_deflate),
        "zlib deflate": (b"Content-Encoding: deflate\r\nContent-Length: %d\r\n" % len(zlib.compress(query)),
                         zlib.compress(query)),
    }
    with run_proxy(proxy_settings(engine.url), reranker=OverlapReranker()) as proxy:
        for name, (framing, body) in cases.items():
            head = (b"POST /%b/_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%b\r\n"
                    % (index_name.encode(), framing))
            direct, proxied = _direct_and_proxied_ids(engine.url, proxy.url, index_name, head, body)
            assert sorted(direct) == sorted(proxied) == ["1", "2"], name
        doc = gzip.compress(b'{"t":"written gzipped"}')
        client = RawClient(proxy)
        client.send(f"PUT /{index_name}/_doc/z?refresh=true HTTP/1.1\r\n{H}Content-Type: application/json\r\n"
                    "Transfer-Encoding: gzip, chunked\r\n\r\n".encode() + b"%x\r\n%b\r\n0\r\n\r\n" % (len(doc), doc))
        assert client.response().status == 201
    assert httpx.get(f"{engine.url}/{index_name}/_doc/z").json()["_source"] == {"t": "written gzipped"}


def test_the_body_copy_budget_is_shared_by_every_request():
    budget = CopyBudget(100)
    assert budget.take(60)
    assert not budget.take(50)
    assert budget.take(40)
    budget.give_back(60)
    assert budget.held == 40
    assert budget.take(60)
    assert not budget.take(1)
