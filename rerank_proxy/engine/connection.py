"""One keep-alive connection to an engine: the asyncio side of `ResponseCore`.

What the engine's bytes mean is the core's (`response_core.py`); this protocol feeds it, hands its
events to the exchange using the connection (a relay or a fetch), and moves the transport: write,
pause and resume reading, close.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from rerank_proxy.engine.response_core import (
    BodyData,
    Event,
    Refusal,
    Refused,
    ResponseCore,
    ResponseEnd,
    ResponseHead,
)
from rerank_proxy.engine.retry_policy import Failure

if TYPE_CHECKING:
    from rerank_proxy.engine.targets import Target

_FAILURE_OF = {Refusal.MALFORMED: Failure.MALFORMED, Refusal.TOO_LARGE: Failure.TOO_LARGE}


class EngineExchange(Protocol):
    """What a connection reports to the request using it (a relay or a fetch)."""

    loop: asyncio.AbstractEventLoop
    last_read: float
    answered: bool

    def response_head(self, head: ResponseHead) -> None: ...
    def response_body(self, chunk: bytes) -> None: ...
    def flush(self) -> None: ...
    def response_done(self) -> None: ...   # the answer is complete; what is not yet flushed goes with it
    def upstream_lost(self) -> None: ...
    def upstream_broken(self, failure: Failure) -> None: ...
    def pause_source(self) -> None: ...
    def resume_source(self) -> None: ...


class ConnectionOwner(Protocol):
    """Who counts the open connections (the pool): told once a connection is closed."""

    def discard(self, conn: EngineConnection) -> None: ...


class EngineConnection(asyncio.Protocol):
    def __init__(self, owner: ConnectionOwner, target: Target) -> None:
        self.owner = owner
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.core = ResponseCore()
        self.exchange: EngineExchange | None = None
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False

    def attach(self, exchange: EngineExchange, *, head_only: bool, max_body: int | None = None) -> None:
        """`exchange` sends its request next and reads the answer (a body up to `max_body` bytes)."""
        self.exchange = exchange
        self.core.expect(head_only=head_only, max_body=max_body)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    # --- transport events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a TCP client's is always a Transport

    def data_received(self, data: bytes) -> None:
        events = self.core.feed(data)
        exchange = self.exchange
        if exchange is None:  # nothing was asked: the connection is out of step, drop it
            self.close()
            return
        exchange.last_read = exchange.loop.time()
        exchange.answered = True
        if not self._deliver(exchange, events):
            exchange.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.discard(self)
        exchange, self.exchange = self.exchange, None
        events = self.core.eof()
        if exchange is not None:
            self._deliver(exchange, events)

    def _deliver(self, exchange: EngineExchange, events: list[Event]) -> bool:
        """Hand the core's events on, in order; True once the exchange is over."""
        for event in events:
            if type(event) is BodyData:
                exchange.response_body(event.data)
            elif type(event) is ResponseHead:
                exchange.response_head(event)
            elif type(event) is ResponseEnd:
                if not event.reusable and not self.closed:
                    self.close()
                exchange.response_done()  # sends what is left of the answer with its end, in one write
                return True
            elif type(event) is Refused:
                if event.refusal is Refusal.CLOSED:
                    exchange.upstream_lost()
                elif event.refusal is Refusal.UNSOLICITED:
                    self.close()
                else:
                    exchange.upstream_broken(_FAILURE_OF[event.refusal])
                return True
        return False

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
        self.owner.discard(self)
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
