"""The pass-through fast path: one request relayed to a pooled engine connection, bytes as they are.

Most requests an app sends are not searches (document reads, writes, bulks, cluster calls), and the
proxy must cost next to nothing on them. This module handles them below the ASGI layer: the client's
request head is rebuilt from the parsed headers (hop-by-hop ones dropped, Host set to the engine's),
bodies go through chunk by chunk in the framing they came in, and the engine's response is parsed
only as far as framing needs and written back in one write per read. No task, future or timer per
request: read timeouts are checked by the server's periodic tick.

Retry rules are those of `rerank_proxy.upstream` (the ASGI path's client): a request may go to the next
engine only when no connection could be opened (nothing was sent), or when it is an idempotent
method whose pooled connection died before any response byte; a write is never sent twice.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httptools

from rerank_proxy.config import Settings
from rerank_proxy.errors import AnswerTooLarge, ProxyError
from rerank_proxy.server.connection import BODY_HIGH_WATER, error_response
from rerank_proxy.upstream import HOP_BY_HOP, tls_context

if TYPE_CHECKING:
    from rerank_proxy.server.connection import HttpConnection

_DOWN_FOR_S = 2.0
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_NO_BODY_STATUS = frozenset({204, 304})
# Dropped from requests besides the hop-by-hop ones: Host is the engine's; Expect is answered by the
# proxy itself (it sends 100 Continue when it starts reading the body); the proxy's own key stays here.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"expect", b"x-proxy-api-key"}
# A header named in `Connection` is hop-by-hop and dropped, except these: the proxy frames every
# message it forwards itself, so no client (nor engine) can make it drop or change the framing.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class Target:
    """One configured engine: where to connect and what to put in Host (and Authorization)."""

    def __init__(self, configured: str, settings: Settings) -> None:
        parts = urlsplit(configured)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        if parts.port and parts.port != default_port:
            netloc += f":{parts.port}"
        self.host_header = netloc.encode("ascii")
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        self.authorization: bytes | None = None
        if parts.username is not None:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode("ascii")
            self.authorization = f"Basic {token}".encode("ascii")
        self.ssl: ssl.SSLContext | None = None
        if self.tls:
            context = tls_context(settings)
            self.ssl = context if isinstance(context, ssl.SSLContext) else _insecure_context()
        self.down_until = 0.0
        self.idle: list[UpstreamConnection] = []


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RelayPool:
    """Idle keep-alive connections per engine, round robin, passive health like the ASGI client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.targets = [Target(url, settings) for url in settings.upstream_urls]
        self.max_idle = settings.upstream_max_connections
        self._turn = 0
        self.open_connections = 0   # all open engine connections, idle or in use

    def order(self) -> list[Target]:
        """Engines to try for one request: round robin start, healthy ones first."""
        targets = self.targets
        if len(targets) == 1:
            return targets
        self._turn = (self._turn + 1) % len(targets)
        rotated = targets[self._turn:] + targets[:self._turn]
        now = time.monotonic()
        return [t for t in rotated if t.down_until <= now] + [t for t in rotated if t.down_until > now]

    async def connect(self, target: Target) -> UpstreamConnection | None:
        """A new connection to `target`, or None (then the engine is skipped for a while)."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self, target), target.host, target.port,
                                       ssl=target.ssl, server_hostname=target.host if target.ssl else None),
                self.settings.upstream_connect_timeout_s)
        except (TimeoutError, OSError, ssl.SSLError):
            target.down_until = time.monotonic() + _DOWN_FOR_S
            return None
        return conn

    def take_idle(self, target: Target) -> UpstreamConnection | None:
        while target.idle:
            conn = target.idle.pop()
            if not conn.closed:
                return conn
        return None

    async def fetch(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                    body: bytes | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A read the proxy makes itself (a search's candidates, a health probe), answer read whole."""
        return await FetchExchange(self, method.encode("ascii"), target.encode("latin-1"), headers, body).run()

    def release(self, conn: UpstreamConnection) -> None:
        target = conn.target
        if conn.closed or len(target.idle) >= self.max_idle:
            conn.close()
            return
        # The last bytes of an answer can complete it while the client's buffer is full: a pooled
        # connection must be reading again, or the next request on it would never see its answer.
        conn.resume_reading()
        target.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            conn.target.idle.remove(conn)
        except ValueError:
            pass

    @property
    def idle_connections(self) -> int:
        return sum(len(target.idle) for target in self.targets)

    def close(self) -> None:
        for target in self.targets:
            while target.idle:
                target.idle.pop().close()


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an engine; answers one exchange at a time."""

    def __init__(self, pool: RelayPool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: RelayExchange | FetchExchange | None = None
        self.closed = False
        self._skip = False          # rest of a HEAD response: its body never comes
        self._complete = False
        self.reading_paused = False
        self.writing_paused = False

    # --- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a TCP client's is always a Transport
        self.pool.open_connections += 1

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nothing was asked: the connection is out of step, drop it
            self.close()
            return
        exchange.last_read = exchange.loop.time()
        exchange.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            exchange.upstream_broken("the engine sent a malformed response")
            return
        exchange.flush()
        if self._complete:
            self._complete = False
            if self._skip:
                self._skip = False
                self.parser = httptools.HttpResponseParser(self)
            exchange.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open_connections -= 1
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.exchange is not None:
            self.exchange.pause_source()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchange is not None:
            self.exchange.last_read = self.exchange.loop.time()  # the engine took more of the body
            self.exchange.resume_source()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        """The client is not taking the answer as fast as the engine sends it."""
        if not self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- response parser callbacks -------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        if not self._skip:
            self.exchange.reason += status  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._skip:
            self.exchange.response_headers.append((name, value))  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set

    def on_headers_complete(self) -> None:
        if self._skip:
            return
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            exchange.reason = b""
            exchange.response_headers = []
            return
        exchange.response_head(status, self.parser.should_keep_alive())
        if exchange.head_only:
            self._skip = True
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if not self._skip:
            self.exchange.response_body(body)  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set

    def on_message_complete(self) -> None:
        if self.exchange is not None and self.exchange.status >= 200:
            self._complete = True


class RelayExchange:
    """One pass-through request: client -> engine, response -> client."""

    __slots__ = ("client", "loop", "pool", "method", "path", "request_headers", "body_framing", "keep_alive",
                 "expect_continue", "head_only", "on_done", "body_queue", "body_complete", "body_started",
                 "body_bytes", "conn", "from_pool", "status", "reason", "response_headers", "response_started",
                 "response_chunked", "until_close", "upstream_keep_alive", "answered", "out", "finished",
                 "last_read", "_tried", "started_at", "log_path", "log_headers", "rejected", "body_copy",
                 "body_copy_limit")

    def __init__(self, client: HttpConnection, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 body_framing: bytes | None, keep_alive: bool, expect_continue: bool,
                 on_done: Callable[[RelayExchange], None]) -> None:
        self.client = client
        self.loop = client.loop
        self.pool: RelayPool = client.server.relay_pool
        self.method = method
        self.path = target
        self.request_headers = headers
        self.body_framing = body_framing     # b"length", b"chunked" or None (no body)
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = method == b"HEAD"
        self.on_done = on_done
        # request side
        self.body_queue: deque[bytes] = deque()
        self.body_complete = body_framing is None
        self.body_started = False
        self.body_bytes = 0
        # Set by the edge for its access log and metrics.
        self.started_at = 0.0
        self.log_path = ""
        self.log_headers: list[tuple[bytes, bytes]] = []
        # Set by the edge for writes the built-in model can warm from: the body, kept up to
        # `body_copy_limit` (past it the copy is dropped, never the write).
        self.body_copy: list[bytes] | None = None
        self.body_copy_limit = 0
        self.conn: UpstreamConnection | None = None
        self.from_pool = False
        # response side
        self.status = 0
        self.reason = b""
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.response_started = False
        self.response_chunked = False
        self.until_close = False
        self.upstream_keep_alive = True
        self.answered = False
        self.out: list[bytes] = []
        self.finished = False
        self.last_read = 0.0            # loop time of the last byte from the engine (read timeout)
        self._tried: list[Target] = []
        self.rejected: tuple[int, str, str] | None = None

    # --- start: pick a connection ----------------------------------------------------------------

    def start(self) -> None:
        if self.rejected is not None:
            self.fail(*self.rejected)
            return
        if self.expect_continue:
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        for target in self.pool.order():
            conn = self.pool.take_idle(target) if target.down_until <= time.monotonic() else None
            if conn is not None:
                self._tried.append(target)
                self.from_pool = True
                self._attach(conn)
                return
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        for target in self.pool.order():
            if target in self._tried and self.answered:
                continue
            conn = await self.pool.connect(target)
            if conn is None:
                continue
            if self.finished:  # the client went away while connecting
                conn.close()
                return
            self._tried.append(target)
            self.from_pool = False
            self._attach(conn)
            return
        self.fail(502, "proxy_upstream_unavailable_exception", "no engine could be reached (ClientConnectorError)")

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.exchange = self
        head = request_head(conn.target, self.method, self.path, self.request_headers, self.body_framing)
        self.last_read = self.loop.time()
        self.body_started = bool(self.body_queue)
        if self.body_queue:
            head += self.body_queue
            self.body_queue.clear()
            self.client.resume_reading("buffer")
        conn.transport.write(b"".join(head))  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set

    def pause_source(self) -> None:
        """The engine is not taking the body as fast as the client sends it."""
        self.client.pause_reading("upstream")

    def resume_source(self) -> None:
        self.client.resume_reading("upstream")

    # --- request body from the client -----------------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        self.body_bytes += len(chunk)
        if self.body_bytes > self.pool.settings.max_body_bytes:
            self._body_too_large()
            return
        if self.body_copy is not None:
            if self.body_bytes <= self.body_copy_limit:
                self.body_copy.append(chunk)
            else:
                self.body_copy = None
        if self.body_framing == b"chunked":
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self.conn is None:
            self.body_queue.append(chunk)
            if sum(map(len, self.body_queue)) > BODY_HIGH_WATER:
                self.client.pause_reading("buffer")
            return
        self.body_started = True
        self.conn.transport.write(chunk)  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set

    def request_done(self) -> None:
        self.body_complete = True
        if self.body_framing == b"chunked":
            self.request_body_raw(b"0\r\n\r\n")
        # UPSTREAM_TIMEOUT_S is the engine's time to answer: it runs from the last byte sent,
        # so an upload slower than it is not cut (the client's own timeouts bound the upload).
        self.last_read = self.loop.time()

    def reject_body(self, status: int, error_type: str, reason: str) -> None:
        """The client's body broke off (bad framing, too slow): the engine's connection is dropped
        before the request is complete, so the engine never acts on it; the client gets the error."""
        if self.client.active is not self:  # still queued behind another request: answer in turn
            self.rejected = (status, error_type, reason)
            return
        self._give_up(status, error_type, reason)

    def request_body_raw(self, data: bytes) -> None:
        if self.finished:
            return
        if self.conn is None:
            self.body_queue.append(data)
        else:
            self.conn.transport.write(data)  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set

    # --- response from the engine ---------------------------------------------------------------

    def response_head(self, status: int, upstream_keep_alive: bool) -> None:
        self.status = status
        self.upstream_keep_alive = upstream_keep_alive
        head = [b"HTTP/1.1 %d %b\r\n" % (status, self.reason or b"OK")]
        named: set[bytes] = set()
        length_at = -1
        chunked = False
        for name, value in self.response_headers:
            lowered = name.lower()
            if lowered in HOP_BY_HOP:
                if lowered == b"transfer-encoding":
                    chunked = True
                elif lowered == b"connection":
                    named.update(token.strip().lower() for token in value.split(b","))
                continue
            if lowered == b"content-length":
                if length_at >= 0:  # said twice: keep one (the parser accepts only equal values)
                    continue
                length_at = len(head)
            head += (name, b": ", value, b"\r\n")
        if chunked and length_at >= 0:  # both framings given: the length cannot be trusted
            del head[length_at:length_at + 4]
            length_at = -1
        named -= _FRAMING
        if named:
            head = head[:1] + [part for i in range(1, len(head), 4) if head[i].lower() not in named
                               for part in head[i:i + 4]]
        bodiless = self.head_only or status in _NO_BODY_STATUS
        if not bodiless and length_at < 0:
            self.until_close = not chunked  # the engine's body ends when its connection does
            if self.client.http11:
                self.response_chunked = True
                head.append(b"Transfer-Encoding: chunked\r\n")
            else:  # an HTTP/1.0 client: the body ends when the proxy closes the connection
                self.keep_alive = False
        if not self.keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.out += head
        self.response_started = True

    def response_body(self, chunk: bytes) -> None:
        if self.response_chunked:
            self.out.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self.out.append(chunk)

    def flush(self) -> None:
        if self.out:
            self.client.write(b"".join(self.out))
            self.out.clear()

    def response_done(self) -> None:
        if self.finished:
            return
        if self.response_chunked:
            self.client.write(b"0\r\n\r\n")
        conn = self.conn
        self._finish()
        if conn is not None:
            conn.exchange = None
            if self.upstream_keep_alive and self.body_complete:
                self.pool.release(conn)
            else:
                conn.close()
        self.on_done(self)

    # --- failures --------------------------------------------------------------------------------

    def upstream_lost(self) -> None:
        """The engine's connection closed while this exchange used it."""
        if self.finished:
            return
        self.conn = None
        if self.until_close and self.response_started:
            self.flush()
            self.response_done()
            return
        if (not self.answered and self.from_pool and self.method in _IDEMPOTENT and not self.body_started):
            self.loop.create_task(self._connect())  # a stale pooled connection: safe to ask again
            return
        if self.response_started:
            self.abort_client()
            return
        self.fail(502, "proxy_upstream_unavailable_exception",
                  "no engine could be reached (ServerDisconnectedError)")

    def upstream_broken(self, reason: str) -> None:
        self._give_up(502, "proxy_upstream_unavailable_exception", reason)

    def _body_too_large(self) -> None:
        """A streamed body passed MAX_BODY_BYTES: the engine's connection is dropped mid-body, so
        it never sees a complete request, and the client gets 413 (or a cut connection)."""
        limit = self.pool.settings.max_body_bytes
        self._give_up(413, "content_too_long_exception", f"request body is larger than the limit of {limit} bytes")

    def check_timeout(self, now: float) -> None:
        """Called by the server's periodic tick: no timer is armed per request. While the client is
        still uploading, the engine is waited for only when it stopped taking the body."""
        if self.finished or self.conn is None or now - self.last_read < self.pool.settings.upstream_timeout_s:
            return
        if not self.body_complete and not self.answered and not self.conn.writing_paused:
            return
        self._give_up(504, "proxy_upstream_timeout_exception", "the engine did not answer within UPSTREAM_TIMEOUT_S")

    def _give_up(self, status: int, error_type: str, reason: str) -> None:
        """Drop the engine connection; the client gets the error, or a cut connection if its
        answer had already started."""
        self._drop_engine_connection()
        if self.response_started:
            self.abort_client()
        else:
            self.fail(status, error_type, reason)

    def _drop_engine_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.close()

    def fail(self, status: int, error_type: str, reason: str) -> None:
        """Answer the client with an engine-style error (nothing was relayed yet)."""
        if self.finished:
            return
        self.status = status
        self.client.write(error_response(status, error_type, reason,
                                         close=not (self.keep_alive and self.body_complete)))
        if not self.body_complete:
            self.keep_alive = False
        self._finish()
        self.on_done(self)

    def abort_client(self) -> None:
        """The response was cut mid-way: the client must see a broken connection, not a short body."""
        self.flush()
        self.keep_alive = False
        self._finish()
        self.client.abort()
        self.on_done(self)

    def client_gone(self) -> None:
        """The client disconnected: drop the engine connection unless the exchange is over."""
        if self.finished:
            return
        self._drop_engine_connection()
        self._finish()
        self.on_done(self)

    def _finish(self) -> None:
        self.finished = True


def request_head(target: Target, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                 framing: bytes | None) -> list[bytes]:
    """The request line and headers for `target`: its Host, and its credentials if the client
    sent no Authorization of its own."""
    head = [method, b" ", target.base_path, path, b" HTTP/1.1\r\nHost: ", target.host_header, b"\r\n"]
    has_auth = False
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
        if not has_auth and len(name) == 13 and name.lower() == b"authorization":
            has_auth = True
    if target.authorization is not None and not has_auth:
        head += (b"Authorization: ", target.authorization, b"\r\n")
    if framing == b"chunked":
        head.append(b"Transfer-Encoding: chunked\r\n")
    head.append(b"\r\n")
    return head


class FetchExchange:
    """A read the proxy makes on its own behalf; the whole answer is collected.

    Only reads come here, so any failure may be asked again: a dead pooled connection on a new
    connection to the same engine, anything else on the next engine (as the ASGI path's client does
    for idempotent requests)."""

    def __init__(self, pool: RelayPool, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes | None) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.method = method
        self.path = path
        self.head_only = method == b"HEAD"
        kept = [(k, v) for k, v in headers if k.lower() not in _REQUEST_DROP and k.lower() != b"content-length"]
        if body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            kept.append((b"Content-Length", b"%d" % len(body or b"")))
        self.headers = kept
        self.body = body or b""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.answered = False
        self.last_read = 0.0
        self.keep_alive = True
        self.outcome: asyncio.Future[str] = self.loop.create_future()
        self.conn: UpstreamConnection | None = None

    async def run(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        failure = "no upstream"
        for target in self.pool.order():
            conn = self.pool.take_idle(target) if target.down_until <= time.monotonic() else None
            pooled = conn is not None
            while True:
                if conn is None:
                    conn = await self.pool.connect(target)
                    if conn is None:
                        failure = "ClientConnectorError"
                        break
                result = await self._ask(conn)
                if result == "ok":
                    return self.status, self.response_headers, b"".join(self.chunks)
                if result == "too large":  # asking another engine would give the same answer
                    raise AnswerTooLarge(self.pool.settings.max_candidate_bytes)
                failure = result
                if pooled and result == "ServerDisconnectedError" and not self.answered:
                    conn, pooled = None, False  # a stale pooled connection: once more on a new one
                    continue
                break
        raise ProxyError(502, "proxy_upstream_unavailable_exception", f"no engine could be reached ({failure})")

    async def _ask(self, conn: UpstreamConnection) -> str:
        self._reset()
        self.conn = conn
        conn.exchange = self
        head = request_head(conn.target, self.method, self.path, self.headers, None)
        head.append(self.body)
        self.last_read = self.loop.time()
        conn.transport.write(b"".join(head))  # type: ignore[union-attr]  # only called while attached: the connection and its exchange are set
        try:
            return await asyncio.wait_for(self.outcome, self.pool.settings.upstream_timeout_s)
        except TimeoutError:
            conn.exchange = None
            conn.close()
            return "TimeoutError"
        except asyncio.CancelledError:
            conn.exchange = None
            conn.close()
            raise

    # --- called by UpstreamConnection ----------------------------------------------------------

    def response_head(self, status: int, upstream_keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = upstream_keep_alive

    def response_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.pool.settings.max_candidate_bytes:
            self.chunks.clear()
            self.upstream_broken("too large")
            return
        self.chunks.append(chunk)

    def flush(self) -> None:
        pass

    def response_done(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            if self.keep_alive:
                self.pool.release(conn)
            else:
                conn.close()
        if not self.outcome.done():
            self.outcome.set_result("ok")

    def upstream_lost(self) -> None:
        self.conn = None
        if not self.outcome.done():
            self.outcome.set_result("ServerDisconnectedError")

    def upstream_broken(self, reason: str) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.close()
        if not self.outcome.done():
            self.outcome.set_result("too large" if reason == "too large" else "malformed response")

    def pause_source(self) -> None:
        pass

    def resume_source(self) -> None:
        pass


def forward_request_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """Client headers to send on, the body framing they declare, and whether they ask 100-continue."""
    kept: list[tuple[bytes, bytes]] = []
    chunked = has_length = seen_length = expect = False
    named: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in _REQUEST_DROP:
            if lowered == b"transfer-encoding":
                chunked = True
            elif lowered == b"expect":
                expect = value.strip().lower() == b"100-continue"
            elif lowered == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
            continue
        if lowered == b"content-length":
            # One Content-Length, re-written by the proxy: the parser accepted only digits (and
            # equal repeats), so the engine reads exactly the body the proxy parsed.
            if not seen_length:
                seen_length = True
                length = value.strip()
                has_length = length.lstrip(b"0") != b""
                kept.append((b"Content-Length", length))
            continue
        kept.append((name, value))
    if chunked:  # re-chunked by the relay; a length next to it is never trusted
        kept = [(k, v) for k, v in kept if k.lower() != b"content-length"]
    named -= _FRAMING
    if named:
        kept = [(k, v) for k, v in kept if k.lower() not in named]
    framing = b"chunked" if chunked else b"length" if has_length else None
    return kept, framing, expect
