"""One client connection: HTTP/1.1 parsing, keep-alive, pipelining, flow control and client limits.

Each request becomes an exchange, chosen once by the server's `route`: pass-through requests become
`RelayExchange`s (`rerank_proxy/engine/relay.py`), searches `SearchExchange`s (`search.py`), the
proxy's own endpoints `AsgiExchange`s, and refusals `ErrorExchange`s. Exchanges on one connection
answer strictly in order: while one is active the next waits, and reading from the client pauses.

Limits are enforced while bytes arrive, not when a message ends: a request head larger than
MAX_HEADER_BYTES is refused as soon as that many bytes came without its end (httptools would
otherwise buffer a 100 MB header whole), and the server's tick closes heads and bodies that arrive
too slowly (408), so idle sockets cannot pile up holding memory or slots.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from rerank_proxy.errors import error_response

if TYPE_CHECKING:
    from rerank_proxy.edge.server import ProxyServer

# Raw head bytes may exceed the measured size (url + name + value + 4 per header) by the request
# line's method and version, spaces and the final CRLF; past this slack the head is surely too large.
_HEAD_SLACK = 1024
# How long a refused client's remaining bytes are read and dropped before the connection closes.
_LINGER_S = 2.0
class Exchange(Protocol):
    keep_alive: bool
    body_complete: bool
    finished: bool

    def start(self) -> None: ...
    def request_body(self, chunk: bytes) -> None: ...
    def request_done(self) -> None: ...
    def client_gone(self) -> None: ...
    def reject_body(self, status: int, error_type: str, reason: str) -> None: ...


class ErrorExchange:
    """A request the edge refuses: one engine-style error, in its turn among pipelined requests.

    A small body still to come is read and dropped first, so the connection can stay open;
    otherwise the connection closes after the answer (its framing can no longer be trusted)."""

    def __init__(self, client: HttpConnection, status: int, error_type: str, reason: str, *,
                 keep_alive: bool, body_expected: bool, drain_body: bool = False,
                 on_done: Callable[[ErrorExchange], None] | None = None) -> None:
        self.client = client
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.keep_alive = keep_alive and (not body_expected or drain_body)
        self.body_complete = not body_expected
        self.finished = False
        self.on_done = on_done
        self._started = False

    def start(self) -> None:
        self._started = True
        if self.body_complete or not self.keep_alive:
            self._answer()

    def request_body(self, chunk: bytes) -> None:
        pass  # a refused request's body goes nowhere

    def request_done(self) -> None:
        self.body_complete = True
        if self._started:
            self._answer()

    def client_gone(self) -> None:
        self.finished = True

    def reject_body(self, status: int, error_type: str, reason: str) -> None:
        self.keep_alive = False
        if self._started:
            self._answer()

    def _answer(self) -> None:
        if self.finished:
            return
        self.finished = True
        if not self.body_complete:
            self.keep_alive = False
        self.client.write(error_response(self.status, self.error_type, self.reason, close=not self.keep_alive))
        if self.on_done is not None:
            self.on_done(self)
        self.client.exchange_done(self)


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.active: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.http11 = True
        self.last_active = self.loop.time()
        self.closed = False
        self.client_addr: tuple[str, int] | None = None
        self.server_addr: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_head = False           # between a message's first byte and the end of its head
        self._head_raw = 0              # raw bytes received for the head being parsed
        self._head_started = 0.0        # loop time the head began (CLIENT_HEADER_TIMEOUT_S)
        self._messages_done = 0
        self._body_last = 0.0           # loop time of the last body byte (CLIENT_BODY_TIMEOUT_S)
        self._body_started = 0.0
        self._body_bytes = 0
        self._stopped = False           # parsing abandoned: a refusal is answered, then the end
        self._eof_sent = False
        self._read_paused: set[str] = set()
        self._write_paused = False
        self._paused_engine: Any = None   # the engine connection paused while this client caught up
        self._upgrade_body: bytes | None = None   # an upgrade request's framing header, body unread
        self._priming = False           # feeding a fresh parser the framing of a body already routed
        self._last_message = False      # nothing after the message being parsed is read
        self._draining: Exchange | None = None   # answered early; its body is read and dropped
        self._drained: asyncio.Future[None] | None = None

    # --- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a TCP server's is always a Transport
        self.server.connections.add(self)
        self.client_addr = _address(transport.get_extra_info("peername"))
        self.server_addr = _address(transport.get_extra_info("sockname"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for exchange in (self.active, self.parsing, *self.pending):
            if exchange is not None:
                exchange.client_gone()
        self.pending.clear()
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self.closed or self._stopped:
            return
        done_before = self._messages_done
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Engines speak no upgraded protocol, so the upgrade is ignored (RFC 9110 7.8 allows it):
            # the request is answered as plain HTTP, then the connection closes; what follows the
            # request (the other protocol's bytes) is never parsed nor forwarded.
            last = self.pending[-1] if self.pending else self.active
            if last is not None:
                last.keep_alive = False
            if self._upgrade_body is None:
                self._stopped = True
                return
            # llhttp ends an upgrade request at its head; its declared body is read as any other.
            self._read_upgrade_body(data[upgrade.args[0]:] if upgrade.args else b"")
            return
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Stop) or self._stopped:  # a refusal already answers this connection
                return
            if isinstance(cause, _Refused):
                self._refuse(*cause.args)
            else:
                self._refuse(400, "illegal_argument_exception", f"invalid HTTP request: {exc or type(exc).__name__}")
            return
        if self._in_head:
            if self._messages_done == done_before:  # else part of this data was the previous message
                self._head_raw += len(data)
            limit = self.server.settings.max_header_bytes
            if self._head_raw > limit + _HEAD_SLACK:
                self._refuse(431, "too_long_http_header_exception", f"request headers are larger than {limit} bytes")
        elif self.parsing is not None:
            self._body_last = self.loop.time()

    def _read_upgrade_body(self, rest: bytes) -> None:
        """Parse the body an upgrade request declared with a fresh parser primed with its framing
        alone: the head was routed already, so the primer's callbacks are ignored."""
        primer, self._upgrade_body = self._upgrade_body, None
        assert primer is not None
        self.parser = httptools.HttpRequestParser(self)
        self._priming = True
        self._last_message = True
        self.data_received(b"PUT / HTTP/1.1\r\n" + primer + b"\r\n" + rest)

    def eof_received(self) -> bool | None:
        return None  # half-closed clients are closed (an answer could not be read reliably)

    def pause_writing(self) -> None:
        self._write_paused = True
        engine_conn = getattr(self.active, "conn", None)
        if engine_conn is not None:
            engine_conn.pause_reading()
            self._paused_engine = engine_conn

    def resume_writing(self) -> None:
        self._write_paused = False
        engine_conn, self._paused_engine = self._paused_engine, None
        if engine_conn is not None and engine_conn.exchange is self.active:  # else the pool resumed it
            engine_conn.resume_reading()
        self._wake_writer()

    # --- request parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._priming:
            return
        if self._stopped:  # bytes after a refused request: never parsed, never forwarded
            raise _Stop
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_head = True
        self._head_raw = 0
        self._head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        if self._priming:
            return
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._priming:
            return
        limit = self.server.settings.max_header_bytes
        self._header_bytes += len(name) + len(value) + 4
        if not self._in_head:
            # A chunked body's trailer: never trusted as a header (it would be the logged request
            # id, or anything else), and bounded like a head.
            if self._header_bytes > 2 * limit:
                raise _Refused(431, "too_long_http_header_exception", f"request trailers are larger than {limit} bytes")
            return
        if self._header_bytes <= limit:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._priming:
            self._priming = False
            return
        self._in_head = False
        parser = self.parser
        if parser.should_upgrade():
            self._upgrade_body = _declared_framing(self._headers)
        self.http11 = parser.get_http_version() == "1.1"
        now = self.loop.time()
        self._body_started = self._body_last = now
        self._body_bytes = 0
        exchange = self.server.route(self, parser.get_method(), self._url, self._headers,
                                     parser.should_keep_alive(), self._header_bytes)
        self.parsing = exchange
        self.enqueue(exchange)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        if self._upgrade_body is not None:  # llhttp's end of an upgrade head: the body is still to come
            return
        self._messages_done += 1
        exchange, self.parsing = self.parsing, None
        if self._last_message:
            self._stopped = True
        if exchange is not None:
            exchange.request_done()
        if exchange is not None and exchange is self._draining:
            self._draining = None
            self.exchange_done(exchange)

    # --- used by exchanges -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and not self._eof_sent:
            self.transport.write(data)  # type: ignore[union-attr]  # only called between connection_made and connection_lost

    async def drain(self) -> None:
        """Wait until the client has taken what was written (flow control for ASGI responses)."""
        if self._write_paused and not self.closed:
            self._drained = self.loop.create_future()
            await self._drained

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def pause_reading(self, reason: str) -> None:
        if not self._read_paused and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]  # only called between connection_made and connection_lost
        self._read_paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._read_paused:
            return
        self._read_paused.discard(reason)
        if not self._read_paused and not self.closed:
            self.transport.resume_reading()  # type: ignore[union-attr]  # only called between connection_made and connection_lost

    def exchange_done(self, exchange: Exchange) -> None:
        """The response is complete: close, or start the next pipelined request."""
        if exchange is not self.active:
            return
        if not exchange.body_complete and exchange.keep_alive and not self.server.stopping \
                and exchange is self.parsing and not self._stopped:
            # Answered before its body ended (the engine answers some requests from the head):
            # the rest is read and dropped, as the engine does, and the connection carries on.
            self._draining = exchange
            return
        self.active = None
        self.last_active = self.loop.time()
        if not exchange.body_complete:
            # The client may still be sending: a close with its bytes unread would reset the
            # connection and could destroy the answer before the client reads it.
            self._linger_close()
            return
        if not exchange.keep_alive or self.server.stopping:
            if self._stopped and not self.server.stopping:
                self._linger_close()
            else:
                self.close()
            return
        if self.pending:  # requests parsed before a refusal are still answered, in their turn
            self.active = self.pending.popleft()
            if not self.pending:
                self.resume_reading("pipeline")
            self.active.start()
        elif self._stopped and not self.server.stopping:
            self._linger_close()

    def hand_over(self, old: Exchange, new: Exchange) -> None:
        """`new` answers in `old`'s place (a bypassed search becomes a relay)."""
        if self.active is old:
            self.active = new
            new.start()

    def _linger_close(self) -> None:
        """After a refusal the client may still be sending: closing with its bytes unread would
        reset the connection and could destroy the answer before the client reads it. So: send
        the answer and a FIN, read and drop what still comes, and close for good a little later."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._eof_sent = True
        self._stopped = True  # what still comes is dropped unparsed
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            self.close()
            return
        self._read_paused.clear()
        transport.resume_reading()
        self.loop.call_later(_LINGER_S, self.close)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # writes what is buffered first

    @property
    def idle(self) -> bool:
        return self.active is None and not self.pending and self.parsing is None

    def _refuse(self, status: int, error_type: str, reason: str) -> None:
        """Bytes the proxy cannot parse safely: answer once, in turn, in the engine's format, then
        close. Nothing after them is parsed, so nothing after them can reach the engine."""
        self._stopped = True
        self._in_head = False
        self.pause_reading("refused")
        broken, self.parsing = self.parsing, None
        if broken is not None and broken is self._draining:  # its answer is out: only the close is left
            self._draining = None
            self.active = None
            self._linger_close()
            return
        if broken is not None:  # a body broke off mid-way: its exchange answers the error itself
            broken.reject_body(status, error_type, reason)
            return
        self.enqueue(ErrorExchange(self, status, error_type, reason, keep_alive=False, body_expected=False))

    def stop_parsing(self) -> None:
        """Nothing after the current request is parsed (its framing cannot be trusted)."""
        self._stopped = True
        self.pause_reading("refused")

    def enqueue(self, exchange: Exchange) -> None:
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.pending.append(exchange)
            self.pause_reading("pipeline")

    @property
    def in_head(self) -> bool:
        return self._in_head

    @property
    def http_version(self) -> str:
        return self.parser.get_http_version()

    def check_client_timeouts(self, now: float, settings: Any) -> None:
        """Called by the server's tick: a head or a body arriving too slowly gets a 408."""
        if self._stopped or self.closed:
            return
        if self._read_paused:  # the proxy is not reading: the client is not the slow one
            self._head_started = self._body_last = now
            return
        if self._in_head:
            if now - self._head_started > settings.client_header_timeout_s:
                self._refuse(408, "request_timeout_exception",
                             "the request head did not arrive within CLIENT_HEADER_TIMEOUT_S")
            return
        if self.parsing is None:
            return
        elapsed = now - self._body_started
        if now - self._body_last > settings.client_body_timeout_s:
            self._refuse(408, "request_timeout_exception",
                         "the request body stalled for longer than CLIENT_BODY_TIMEOUT_S")
        elif elapsed > settings.client_body_timeout_s and self._body_bytes < settings.client_body_min_rate * elapsed:
            self._refuse(408, "request_timeout_exception",
                         "the request body arrived slower than CLIENT_BODY_MIN_RATE bytes per second")


def _declared_framing(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The framing header of a request that declares a body (as the parser accepted it), else None."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return b"Transfer-Encoding: " + value + b"\r\n"
        if lowered == b"content-length" and value.strip().lstrip(b"0"):
            return b"Content-Length: " + value.strip() + b"\r\n"
    return None


class _Stop(Exception):
    """Raised from a parser callback when nothing more may be parsed on this connection."""


class _Refused(Exception):
    """Raised from a parser callback to refuse a request with a given engine-style error."""


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
