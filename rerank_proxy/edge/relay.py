"""A relayed request: the client's bytes to a pooled engine connection, the answer back as it comes.

Most requests an app sends are not searches (document reads, writes, bulks, cluster calls), and the
proxy must cost next to nothing on them: the request head is rebuilt from the parsed headers
(hop-by-hop ones dropped, Host set to the engine's), bodies go through chunk by chunk in the framing
they came in, and the engine's answer is parsed only as far as framing needs and written back in
one write per read. No task, future or timer per request: read timeouts are checked by the edge's
periodic tick. Bypassed searches come here too, with the body the edge already read.

A body is received before an engine connection is taken, as nginx's `proxy_request_buffering`
does, up to BODY_HIGH_WATER in memory: a slow client then costs a socket and a buffer, never an
engine connection. A larger body streams to the engine, but only on one of the pool's upload slots
(a quarter of UPSTREAM_MAX_CONNECTIONS), so uploads still arriving never hold more than that share.
An engine that answers before the body ended (no handler, wrong method) is relayed at once; the
rest of the body is then read and dropped as the engine does, or the connection closes.

Retry rules are `retry_policy.py`'s: a request may go to the next engine only when no connection
could be opened (nothing was sent), or when it is a read (an idempotent method, or a search read
whole) whose pooled connection died before any answer byte; a write is never sent twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rerank_proxy.engine.headers import FRAMING, HOP_BY_HOP, request_head
from rerank_proxy.engine.response_core import Framing
from rerank_proxy.engine.retry_policy import Failure, Next, give_up, next_step, relay_resend
from rerank_proxy.errors import ProxyError, error_response

if TYPE_CHECKING:
    import asyncio

    from rerank_proxy.edge.observers import Observers, RelayRecord
    from rerank_proxy.engine.connection import EngineConnection
    from rerank_proxy.engine.pool import EnginePool
    from rerank_proxy.engine.response_core import ResponseHead

# Request body buffered before an engine connection is ready; past this, reading the client pauses.
BODY_HIGH_WATER = 256 * 1024
# After an early answer, the rest of a body up to this size is read and dropped (the connection
# stays); past it the answer says `Connection: close`.
DRAIN_MAX_BYTES = 1024 * 1024


class ClientSide(Protocol):
    """The client connection a relay answers (the edge's `HttpConnection`)."""

    loop: asyncio.AbstractEventLoop
    http11: bool
    client_addr: tuple[str, int] | None

    @property
    def active(self) -> object: ...
    def write(self, data: bytes) -> None: ...
    def exchange_done(self, exchange: Any) -> None: ...
    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...
    def abort(self) -> None: ...


class RelayExchange:
    """One pass-through request: client -> engine, response -> client."""

    __slots__ = ("_active", "_connecting", "_streaming", "_task", "_upload_slot", "answered", "body_bytes",
                 "body_complete", "body_framing", "body_queue", "body_started", "client", "conn", "expect_continue",
                 "extra_headers", "finished", "from_pool", "head_only", "keep_alive", "last_read", "loop", "method",
                 "observers", "out", "path", "pool", "preloaded", "record", "rejected", "request_headers",
                 "response_chunked", "response_started", "sent_bytes", "served_by", "status", "upstream_keep_alive")

    def __init__(self, client: ClientSide, pool: EnginePool, method: bytes, target: bytes,
                 headers: list[tuple[bytes, bytes]], body_framing: bytes | None, keep_alive: bool,
                 expect_continue: bool, observers: Observers, record: RelayRecord, *,
                 preloaded: bytes | None = None, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.client = client
        self.loop = client.loop
        self.pool = pool
        self.method = method
        self.path = target
        self.request_headers = headers
        self.body_framing = body_framing     # b"length", b"chunked" or None (no body)
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = method == b"HEAD"
        self.observers = observers      # told of the body and of the end (metrics, access log, warming)
        self.record = record            # how they name this relay
        # request side
        self.body_queue: deque[bytes] = deque()
        # A body the edge read whole (a bypassed search): sent with the head, and replayable.
        self.preloaded = preloaded
        self.body_complete = body_framing is None or preloaded is not None
        self.body_started = False
        self.body_bytes = len(preloaded or b"")
        # Added to the engine's answer (a bypassed search's X-Rerank flags).
        self.extra_headers = extra_headers
        self.sent_bytes = 0
        self.served_by = ""
        self.conn: EngineConnection | None = None
        self.from_pool = False
        # response side
        self.status = 0
        self.response_started = False
        self.response_chunked = False
        self.upstream_keep_alive = True
        self.answered = False
        self.out: list[bytes] = []
        self.finished = False
        self.last_read = 0.0            # loop time of the last byte from the engine (read timeout)
        self.rejected: ProxyError | None = None
        self._task: asyncio.Task[None] | None = None   # held: the loop keeps only a weak reference
        self._active = False            # its turn on the client connection has come
        self._streaming = False         # the body outgrew the buffer: it streams on an upload slot
        self._upload_slot = False
        self._connecting = False

    # --- start: pick a connection ----------------------------------------------------------------

    def start(self) -> None:
        self._active = True
        if self.rejected is not None:
            self.fail(self.rejected)
            return
        if self.expect_continue and not self.body_complete:
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.body_complete:
            self._take_connection()
        elif self._buffered() > BODY_HIGH_WATER:  # arrived while it waited for its turn
            self._stream()

    def _buffered(self) -> int:
        return sum(map(len, self.body_queue))

    def _take_connection(self) -> None:
        self._connecting = True
        for target in self.pool.order():
            conn = self.pool.take_idle(target) if target.healthy else None
            if conn is not None:
                self.from_pool = True
                self._attach(conn)
                return
        self._task = self.loop.create_task(self._connect())

    def _stream(self) -> None:
        """The body is larger than the buffer: send it as it comes, on one of the upload slots."""
        self._streaming = True
        if self.pool.take_upload_slot():
            self._upload_slot = True
            self._take_connection()
        else:
            self._task = self.loop.create_task(self._wait_for_upload_slot())

    async def _wait_for_upload_slot(self) -> None:
        try:
            await self.pool.wait_upload_slot()
        except ProxyError as exc:
            self.fail(exc)
            return
        if self.finished:
            self.pool.give_upload_slot()
            return
        self._upload_slot = True
        self._take_connection()

    def _end_upload(self) -> None:
        if self._upload_slot:
            self._upload_slot = False
            self.pool.give_upload_slot()

    async def _connect(self) -> None:
        """A new connection, to the engines in turn: nothing is sent until one is open."""
        for target in self.pool.order():
            try:
                conn = await self.pool.connect(target)
            except ProxyError as exc:  # no connection came free (UPSTREAM_MAX_CONNECTIONS)
                self.fail(exc)
                return
            if conn is None:
                continue  # Failure.UNREACHABLE: the next engine, whatever the request
            if self.finished:  # the client went away while connecting
                conn.close()
                return
            self.from_pool = False
            self._attach(conn)
            return
        self.fail(give_up(Failure.UNREACHABLE, every_engine=True))

    def _attach(self, conn: EngineConnection) -> None:
        self.conn = conn
        conn.attach(self, head_only=self.head_only)
        self.served_by = conn.target.name
        head = request_head(conn.target, self.method, self.path, self.request_headers, self.body_framing)
        self.last_read = self.loop.time()
        if self.preloaded:
            head.append(self.preloaded)
        self.body_started = bool(self.body_queue)
        if self.body_queue:
            head += self.body_queue
            self.body_queue.clear()
            self.client.resume_reading("buffer")
        conn.send(b"".join(head))

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
        for hook in self.observers.request_body:
            hook(self, chunk)
        if self.body_framing == b"chunked":
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self.conn is None:
            self.body_queue.append(chunk)
            if self._buffered() > BODY_HIGH_WATER:
                self.client.pause_reading("buffer")
                if self._active and not self._streaming:
                    self._stream()
            return
        self.body_started = True
        self.conn.send(chunk)

    def request_done(self) -> None:
        self.body_complete = True
        if self.body_framing == b"chunked":
            self.request_body_raw(b"0\r\n\r\n")
        self._end_upload()
        # UPSTREAM_TIMEOUT_S is the engine's time to answer: it runs from the last byte sent,
        # so an upload slower than it is not cut (the client's own timeouts bound the upload).
        self.last_read = self.loop.time()
        if self._active and not self._connecting and not self.finished:
            self._take_connection()

    def reject_body(self, status: int, error_type: str, reason: str) -> None:
        """The client's body broke off (bad framing, too slow): the engine's connection is dropped
        before the request is complete, so the engine never acts on it; the client gets the error."""
        error = ProxyError(status, error_type, reason)
        if self.client.active is not self:  # still queued behind another request: answer in turn
            self.rejected = error
            return
        self._give_up(error)

    def request_body_raw(self, data: bytes) -> None:
        if self.finished:
            return
        if self.conn is None:
            self.body_queue.append(data)
        else:
            self.conn.send(data)

    # --- response from the engine ---------------------------------------------------------------

    def response_head(self, answer: ResponseHead) -> None:
        status = self.status = answer.status
        self.upstream_keep_alive = answer.keep_alive
        if not self.body_complete and not self._drainable():
            self.keep_alive = False  # announced in the head; the rest of the body is not read
        head = [b"HTTP/1.1 %d %b\r\n" % (status, answer.reason or b"OK")]
        named: set[bytes] = set()
        length_at = -1
        chunked = False
        for name, value in answer.headers:
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
        named -= FRAMING
        if named:
            head = head[:1] + [part for i in range(1, len(head), 4) if head[i].lower() not in named
                               for part in head[i:i + 4]]
        self._end_head(head, answer.framing is not Framing.NONE and length_at < 0)

    def _end_head(self, head: list[bytes], unknown_length: bool) -> None:
        """The rest of the client's head after the engine's headers (framing of a body of unknown
        length, the proxy's own headers, Connection: close), then queued for the client."""
        if unknown_length:  # chunked, or until the engine closes
            if self.client.http11:
                self.response_chunked = True
                head.append(b"Transfer-Encoding: chunked\r\n")
            else:  # an HTTP/1.0 client: the body ends when the proxy closes the connection
                self.keep_alive = False
        for name, value in self.extra_headers:
            head += (name, b": ", value, b"\r\n")
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
            data = b"".join(self.out)
            self.sent_bytes += len(data)
            self.client.write(data)
            self.out.clear()

    def response_done(self) -> None:
        if self.finished:
            return
        if self.response_chunked:
            self.out.append(b"0\r\n\r\n")
        self.flush()  # the rest of the answer and its last chunk: one write, one packet
        conn = self.conn
        self._finish()
        if conn is not None:
            conn.exchange = None
            if self.upstream_keep_alive and self.body_complete:
                self.pool.release(conn)
            else:
                conn.close()
        self._done()

    def _drainable(self) -> bool:
        """An early answer: is the rest of the body small enough to read and drop, as the engine does?"""
        if self.body_framing != b"length" or self.expect_continue:
            return False
        declared = next((int(v) for k, v in self.request_headers if k.lower() == b"content-length"), 0)
        return declared - self.body_bytes <= DRAIN_MAX_BYTES

    # --- failures --------------------------------------------------------------------------------

    def upstream_lost(self) -> None:
        """The engine's connection closed while this exchange used it."""
        if self.finished:
            return
        self.conn = None
        if self._next_after(Failure.CLOSED) is Next.NEW_CONNECTION:
            self._task = self.loop.create_task(self._connect())  # a stale pooled connection: the engine never saw it
            return
        if self.response_started:
            self.abort_client()
            return
        self.fail(give_up(Failure.CLOSED, every_engine=False))

    def upstream_broken(self, failure: Failure) -> None:
        """A malformed answer: the engine got the request, so (`next_step`) it is not sent again."""
        self._give_up(give_up(failure, every_engine=False))

    def _next_after(self, failure: Failure) -> Next:
        resend = relay_resend(self.method, whole_body=self.preloaded is not None, body_started=self.body_started)
        return next_step(failure, resend, pooled=self.from_pool, answered=self.answered)

    def _body_too_large(self) -> None:
        """A streamed body passed MAX_BODY_BYTES: the engine's connection is dropped mid-body, so
        it never sees a complete request, and the client gets 413 (or a cut connection)."""
        limit = self.pool.settings.max_body_bytes
        self._give_up(ProxyError(413, "content_too_long_exception",
                                 f"request body is larger than the limit of {limit} bytes"))

    def check_timeout(self, now: float) -> None:
        """Called by the server's periodic tick: no timer is armed per request. While the client is
        still uploading, the engine is waited for only when it stopped taking the body."""
        if self.finished or self.conn is None or now - self.last_read < self.pool.settings.upstream_timeout_s:
            return
        if not self.body_complete and not self.answered and not self.conn.writing_paused:
            return
        self._give_up(give_up(Failure.TIMED_OUT, every_engine=False))

    def _give_up(self, error: ProxyError) -> None:
        """Drop the engine connection; the client gets the error, or a cut connection if its
        answer had already started."""
        self._drop_engine_connection()
        if self.response_started:
            self.abort_client()
        else:
            self.fail(error)

    def _drop_engine_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.close()

    def fail(self, error: ProxyError) -> None:
        """Answer the client with an engine-style error (nothing was relayed yet)."""
        if self.finished:
            return
        self.status = error.status
        answer = error_response(error.status, error.error_type, error.reason,
                                close=not (self.keep_alive and self.body_complete))
        self.sent_bytes += len(answer)
        self.client.write(answer)
        if not self.body_complete:
            self.keep_alive = False
        self._finish()
        self._done()

    def abort_client(self) -> None:
        """The response was cut mid-way: the client must see a broken connection, not a short body."""
        self.flush()
        self.keep_alive = False
        self._finish()
        self.client.abort()
        self._done()

    def client_gone(self) -> None:
        """The client disconnected: drop the engine connection unless the exchange is over."""
        if self.finished:
            return
        self._drop_engine_connection()
        self._finish()
        self._done()

    @property
    def final_status(self) -> int:
        """The status the client got; 499 when it went away before any (as nginx logs it)."""
        return self.status or 499

    def _done(self) -> None:
        """Over: the observers are told, in their order, then the client connection goes on."""
        for hook in self.observers.response_done:
            hook(self)
        self.client.exchange_done(self)

    def _finish(self) -> None:
        self.finished = True
        self._end_upload()
        # What is left of the body is the connection's to drop: reading it must not stay paused.
        self.client.resume_reading("buffer")
        self.client.resume_reading("upstream")
