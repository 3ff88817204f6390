"""One client connection: HTTP/1.1 parsing, keep-alive, pipelining and flow control.

Each request becomes an exchange. Plain pass-through requests become `RelayExchange`s (handled
below ASGI, see `relay.py`); searches, the proxy's own endpoints and anything the proxy must refuse
become `AsgiExchange`s run by the application. Exchanges on one connection answer strictly in
order: while one is active the next waits, and reading from the client pauses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from rerank_proxy.errors import error_body

if TYPE_CHECKING:
    from rerank_proxy.server.server import ProxyServer

# Beyond this the proxy stops collecting header bytes at all and answers 431 at once.
_HEADER_HARD_CAP = 1024 * 1024
# Request body buffered for an exchange that cannot take it yet; past this, reading pauses.
BODY_HIGH_WATER = 256 * 1024


def status_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def error_response(status: int, error_type: str, reason: str, *, close: bool) -> bytes:
    """A whole engine-style error answer, as written on the wire by the server itself."""
    body = error_body(status, error_type, reason)
    return (b"HTTP/1.1 %d %b\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: %d\r\n"
            b"x-rerank: error\r\n%b\r\n%b"
            % (status, status_phrase(status), len(body), b"Connection: close\r\n" if close else b"", body))


class Exchange(Protocol):
    keep_alive: bool
    body_complete: bool
    finished: bool

    def start(self) -> None: ...
    def request_body(self, chunk: bytes) -> None: ...
    def request_done(self) -> None: ...
    def client_gone(self) -> None: ...


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
        self._read_paused: set[str] = set()
        self._write_paused = False
        self._paused_engine: Any = None   # the engine connection paused while this client caught up
        self._drained: asyncio.Future[None] | None = None

    # --- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
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
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Engines speak no upgraded protocol: the request is answered as plain HTTP, then closed.
            last = self.pending[-1] if self.pending else self.active
            if last is not None:
                last.keep_alive = False
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(*cause.args)
            else:
                self._refuse(400, "illegal_argument_exception", f"invalid HTTP request: {exc or type(exc).__name__}")

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
        self._url = b""
        self._headers = []
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes <= _HEADER_HARD_CAP:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._header_bytes > _HEADER_HARD_CAP:
            limit = self.server.settings.max_header_bytes
            raise _Refused(431, "too_long_http_header_exception", f"request headers are larger than {limit} bytes")
        parser = self.parser
        self.http11 = parser.get_http_version() == "1.1"
        exchange = self.server.route(self, parser.get_method(), self._url, self._headers,
                                     parser.should_keep_alive(), self._header_bytes)
        self.parsing = exchange
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.pending.append(exchange)
            self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.request_done()

    # --- used by exchanges -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

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
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._read_paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._read_paused:
            return
        self._read_paused.discard(reason)
        if not self._read_paused and not self.closed:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def exchange_done(self, exchange: Exchange) -> None:
        """The response is complete: close, or start the next pipelined request."""
        if exchange is not self.active:
            return
        self.active = None
        self.last_active = self.loop.time()
        if not exchange.keep_alive or not exchange.body_complete or self.server.stopping:
            self.close()
            return
        if self.pending:
            self.active = self.pending.popleft()
            if not self.pending:
                self.resume_reading("pipeline")
            self.active.start()

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
        """A request the parser rejected: answer once in the engine's format and close."""
        if self.parsing is not None:  # a body broke off mid-way: the exchange cannot complete
            self.parsing.client_gone()
            self.parsing = None
            self.abort()
            return
        if self.active is None:
            self.write(error_response(status, error_type, reason, close=True))
            self.close()
        else:  # answer what came before, then close
            last = self.pending[-1] if self.pending else self.active
            last.keep_alive = False
            self.pause_reading("refused")


class _Refused(Exception):
    """Raised from a parser callback to refuse a request with a given engine-style error."""


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
