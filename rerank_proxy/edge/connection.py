"""One client connection: the asyncio side of HTTP/1.1 (bytes, flow control, timers, closing).

What the client's bytes mean (framing, limits, pipelining order, early answers, upgrades, refusals)
is decided by the sans-I/O core `H1Core` (`h1.py`); this protocol feeds it, acts on its events and
moves the transport: pause and resume reading, write, close, linger.

Each request becomes an exchange, chosen once by the server's `route`: pass-through requests become
`RelayExchange`s (`rerank_proxy/edge/relay.py`), searches `SearchExchange`s (`search.py`), the
proxy's own endpoints `AsgiExchange`s, and refusals `ErrorExchange`s. Exchanges on one connection
answer strictly in order: while one is active the next waits, and reading from the client pauses.
The server's tick checks the client timeouts (408) through the core, so idle sockets cannot pile up
holding memory or slots.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from rerank_proxy.edge.h1 import (
    After,
    BodyData,
    EndOfMessage,
    Fate,
    H1Core,
    Phase,
    Refusal,
    RequestHead,
    Start,
    Timeouts,
)
from rerank_proxy.errors import error_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from rerank_proxy.edge.server import ProxyServer

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
        self.core: H1Core[Exchange] = H1Core(server.settings.max_header_bytes)
        self.transport: asyncio.Transport | None = None
        self.http11 = True
        self.http_version = "1.1"       # of the request head routed last
        self.last_active = self.loop.time()
        self.closed = False
        self.client_addr: tuple[str, int] | None = None
        self.server_addr: tuple[str, int] | None = None
        self._eof_sent = False
        self._read_paused: set[str] = set()
        self._write_paused = False
        self._paused_engine: Any = None   # the engine connection paused while this client caught up
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
        for exchange in self.core.abandon():
            exchange.client_gone()
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.core.receive_data(data, self.loop.time())
        self._act()

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

    # --- the core's events -----------------------------------------------------------------------

    def _act(self) -> None:
        """Hand every event the core has to the exchanges (a head is routed into a new one)."""
        while (event := self.core.next_event()) is not None:
            match event:
                case BodyData(exchange=exchange, data=data):
                    exchange.request_body(data)
                case RequestHead():
                    self._route(event)
                case EndOfMessage(exchange=exchange, drained=drained):
                    exchange.request_done()
                    if drained:
                        self.exchange_done(exchange)
                case Refusal():
                    self._refused(event)

    def _route(self, head: RequestHead) -> None:
        self.http11 = head.http_version == "1.1"
        self.http_version = head.http_version
        exchange = self.server.route(self, head.method, head.target, head.headers, head.keep_alive,
                                     head.header_bytes)
        self._begin(exchange, self.core.accept(exchange))

    def _refused(self, refusal: Refusal[Exchange]) -> None:
        """Bytes the proxy cannot parse safely: answered once, in turn, in the engine's format, then
        the close. Nothing after them is parsed, so nothing after them can reach the engine."""
        self.pause_reading("refused")
        if refusal.fate is Fate.CLOSE_ONLY:
            self._linger_close()
        elif refusal.fate is Fate.BODY_CUT:
            assert refusal.exchange is not None  # the core names the exchange whose body broke off
            refusal.exchange.reject_body(refusal.status, refusal.error_type, refusal.reason)
        else:
            answer = ErrorExchange(self, refusal.status, refusal.error_type, refusal.reason, keep_alive=False,
                                   body_expected=False)
            self._begin(answer, self.core.queue_answer(answer))

    def _begin(self, exchange: Exchange, start: Start) -> None:
        if start is Start.NOW:
            exchange.start()
        else:
            self.pause_reading("pipeline")

    # --- used by exchanges -------------------------------------------------------------------------

    @property
    def active(self) -> Exchange | None:
        return self.core.active

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
        after = self.core.response_done(exchange, keep_alive=exchange.keep_alive, stopping=self.server.stopping)
        if after is After.NOT_ACTIVE or after is After.DRAIN:
            return
        self.last_active = self.loop.time()
        if after is After.NEXT:
            if not self.core.pending:
                self.resume_reading("pipeline")
            nxt = self.core.active
            assert nxt is not None  # NEXT made the next pipelined exchange active
            nxt.start()
        elif after is After.CLOSE:
            self.close()
        elif after is After.LINGER_CLOSE:
            self._linger_close()

    def hand_over(self, old: Exchange, new: Exchange) -> None:
        """`new` answers in `old`'s place (a bypassed search becomes a relay)."""
        if self.core.hand_over(old, new):
            new.start()

    def _linger_close(self) -> None:
        """After a refusal the client may still be sending: closing with its bytes unread would
        reset the connection and could destroy the answer before the client reads it. So: send
        the answer and a FIN, read and drop what still comes, and close for good a little later."""
        self.core.stop()  # what still comes is dropped unparsed
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._eof_sent = True
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
        return self.core.idle

    @property
    def in_head(self) -> bool:
        return self.core.phase is Phase.HEAD

    def stop_parsing(self) -> None:
        """Nothing after the current request is parsed (its framing cannot be trusted)."""
        self.core.stop()
        self.pause_reading("refused")

    def check_client_timeouts(self, now: float, settings: Any) -> None:
        """Called by the server's tick: a head or a body arriving too slowly gets a 408."""
        if self.closed:
            return
        timeouts = Timeouts(settings.client_header_timeout_s, settings.client_body_timeout_s,
                            settings.client_body_min_rate)
        self.core.check_timeouts(now, timeouts, paused=bool(self._read_paused))
        self._act()


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
