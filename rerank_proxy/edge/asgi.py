"""One request to the proxy's own endpoints (`/_rerank/`: ops and the console), run as ASGI.

A small ASGI 3 bridge: `receive` yields the body as it arrives and then waits for the client to go
away; `send` writes the response with Content-Length when the app gives one or when the whole body
comes in one message, chunked otherwise. Writes wait while the client's buffer is full. Nothing
that reaches the engine passes here: relays and searches have exchanges of their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from rerank_proxy.edge.relay import BODY_HIGH_WATER
from rerank_proxy.errors import error_body, error_response, status_phrase

if TYPE_CHECKING:
    from rerank_proxy.edge.connection import HttpConnection

_log = logging.getLogger("rerank_proxy")
# The bridge frames every response itself; an application's own framing headers are dropped, and
# a Content-Length given twice is written once.
_FRAMING = frozenset({b"transfer-encoding", b"connection"})


class AsgiExchange:
    def __init__(self, client: HttpConnection, scope: dict[str, Any], keep_alive: bool,
                 body_expected: bool, expect_continue: bool) -> None:
        self.client = client
        self._running = False
        self.scope = scope
        self.keep_alive = keep_alive
        self.body_complete = not body_expected
        self.expect_continue = expect_continue
        self.finished = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._gone = False
        self._final_sent = False
        self._started = False
        self._complete = False
        self._chunked = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._refusal: tuple[int, str, str] | None = None   # decided while queued, answered in turn
        self._task: asyncio.Task[None] | None = None

    # --- connection side -------------------------------------------------------------------------

    def start(self) -> None:
        if self.finished:
            return
        if self._refusal is not None:
            self.refuse(*self._refusal)
            return
        self._running = True
        self._task = self.client.loop.create_task(self._run())  # held: the loop keeps only a weak reference

    def request_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > BODY_HIGH_WATER:
            self.client.pause_reading("asgi")
        self._wake()

    def request_done(self) -> None:
        self.body_complete = True
        self._wake()

    def client_gone(self) -> None:
        self._gone = True
        if not self._running:
            self.finished = True
        self._wake()

    def reject_body(self, status: int, error_type: str, reason: str) -> None:
        """The body broke off (bad framing, too slow): answered here unless the app already runs."""
        if self._running:
            self.keep_alive = False
            self.client_gone()
        elif self.client.active is self:
            self.refuse(status, error_type, reason)
        else:
            self._refusal = (status, error_type, reason)

    def refuse(self, status: int, error_type: str, reason: str) -> None:
        """Answer an engine-style error instead of running the app."""
        if self.finished:
            return
        self.finished = True
        self._body.clear()
        if not self.body_complete:
            self.keep_alive = False
        self.client.write(error_response(status, error_type, reason, close=not self.keep_alive))
        self.client.exchange_done(self)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # --- the app ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        admission = self.client.server.admission
        admission.enter()
        try:
            await self.client.server.app(self.scope, self._receive, self._send)
        except Exception:  # noqa: BLE001 - the boundary: the client gets a 500, the error its log line
            _log.exception("unexpected error", extra={"fields": {"path": self.scope.get("path")}})
            if not self._started:
                body = error_body(500, "proxy_internal_exception",
                                  "the proxy failed to handle this request; see its log")
                await self._send({"type": "http.response.start", "status": 500,
                                  "headers": [(b"content-type", b"application/json; charset=UTF-8")]})
                await self._send({"type": "http.response.body", "body": body})
        finally:
            if not self._complete:
                self.keep_alive = False
                if self._started:
                    self.client.abort()  # a half-sent response must not look complete
            admission.leave()
            self.finished = True
            self.client.exchange_done(self)

    async def _receive(self) -> dict[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if not self._started and self.client.http11:
                self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self._gone or (self._final_sent and self._complete):
                return {"type": "http.disconnect"}
            if self._body or (self.body_complete and not self._final_sent):
                break
            self._wakeup = self.client.loop.create_future()
            await self._wakeup
        body = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        self.client.resume_reading("asgi")
        more = not self.body_complete
        self._final_sent = not more
        return {"type": "http.request", "body": body, "more_body": more}

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._status = message["status"]
            self._headers = list(message.get("headers", []))
            return
        if kind != "http.response.body" or self._complete:
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._head(body, more))
        if self.scope["method"] != "HEAD":
            self._frame_body(out, body, more)
        if not more:
            self._complete = True
            self._wake()
        if self._gone:
            return
        self.client.write(b"".join(out))
        await self.client.drain()

    def _frame_body(self, out: list[bytes], body: bytes, more: bool) -> None:
        """A part of the body as the client reads it: as is, or a chunk (and the last chunk after it)."""
        if self._chunked:
            if body:
                out.append(b"%x\r\n%b\r\n" % (len(body), body))
            if not more:
                out.append(b"0\r\n\r\n")
        elif body:
            out.append(body)

    def _head(self, body: bytes, more: bool) -> bytes:
        has_length = False
        lines = [b"HTTP/1.1 %d %b\r\n" % (self._status, status_phrase(self._status))]
        for name, value in self._headers:
            lowered = name.lower()
            if lowered in _FRAMING:
                continue
            if lowered == b"content-length":
                if has_length:
                    continue
                has_length = True
            lines += (name, b": ", value, b"\r\n")
        if not has_length:
            if not more:
                lines.append(b"content-length: %d\r\n" % len(body))
            elif self.client.http11:
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)
