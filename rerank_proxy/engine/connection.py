"""One keep-alive connection to an engine, parsing its answers for one exchange at a time."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import httptools

from rerank_proxy.engine.retry_policy import Failure

if TYPE_CHECKING:
    from rerank_proxy.engine.pool import EnginePool
    from rerank_proxy.engine.targets import Target


class EngineExchange(Protocol):
    """What a connection reports to the request using it (a relay or a fetch)."""

    loop: asyncio.AbstractEventLoop
    last_read: float
    answered: bool
    head_only: bool
    status: int
    reason: bytes
    response_headers: list[tuple[bytes, bytes]]

    def response_head(self, status: int, upstream_keep_alive: bool) -> None: ...
    def response_body(self, chunk: bytes) -> None: ...
    def flush(self) -> None: ...
    def response_done(self) -> None: ...   # the answer is complete; what is not yet flushed goes with it
    def upstream_lost(self) -> None: ...
    def upstream_broken(self, failure: Failure) -> None: ...
    def pause_source(self) -> None: ...
    def resume_source(self) -> None: ...


class EngineConnection(asyncio.Protocol):
    def __init__(self, pool: EnginePool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: EngineExchange | None = None
        self.closed = False
        self._skip = False          # rest of a HEAD response: its body never comes
        self._complete = False
        self.reading_paused = False
        self.writing_paused = False

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    # --- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a TCP client's is always a Transport

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
            exchange.upstream_broken(Failure.MALFORMED)
            return
        if not self._complete:
            exchange.flush()
            return
        self._complete = False
        if self._skip:
            self._skip = False
            self.parser = httptools.HttpResponseParser(self)
        exchange.response_done()  # sends what is left of the answer with its end, in one write

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
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
        self.exchange = None
        self.pool.discard(self)
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
    # Called only while an exchange is attached: the parser runs inside data_received.

    def on_status(self, status: bytes) -> None:
        if not self._skip and self.exchange is not None:
            self.exchange.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._skip and self.exchange is not None:
            self.exchange.response_headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if self._skip or exchange is None:
            return
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
        if not self._skip and self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.exchange is not None and self.exchange.status >= 200:
            self._complete = True
