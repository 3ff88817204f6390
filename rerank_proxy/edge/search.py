"""A search at the edge: read whole, admitted, run through the pipeline, then answered or relayed.

The body is read (up to MAX_SEARCH_BODY_BYTES) before the search is admitted against
MAX_CONCURRENT_REQUESTS: a client uploading slowly holds no search slot. A reranked search is
answered here in one write; a bypassed one (`Forward`) becomes a relay on the same engine transport
as every pass-through, with the body already read and the `X-Rerank` flags added to the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from rerank_proxy.edge.observers import RelayRecord
from rerank_proxy.edge.relay import RelayExchange
from rerank_proxy.engine.headers import with_length
from rerank_proxy.errors import ProxyError, error_response, status_phrase
from rerank_proxy.search.pipeline import Decided, Finished, Forward, SearchPipeline
from rerank_proxy.search.plan import parse_params

if TYPE_CHECKING:
    from rerank_proxy.edge.connection import HttpConnection
    from rerank_proxy.edge.server import ProxyServer

_log = logging.getLogger("rerank_proxy")
_OUTCOMES = frozenset({"reranked", "cached", "fallback", "error", "bypass", "lexical"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class SearchExchange:
    def __init__(self, client: HttpConnection, server: ProxyServer, method: bytes, url: bytes, path: str,
                 headers: list[tuple[bytes, bytes]], forwarded: list[tuple[bytes, bytes]], keep_alive: bool,
                 body_expected: bool, expect_continue: bool, search: tuple[str | None, str]) -> None:
        self.client = client
        self.server = server
        self.method = method
        self.url = url
        self.path = path
        self.headers = headers            # as the client sent them (access log)
        self.forwarded = forwarded        # as they may reach the engine
        self.keep_alive = keep_alive
        self.body_complete = not body_expected
        self.expect_continue = expect_continue
        self.targets, self.kind = search
        self.finished = False
        self.started_at = time.perf_counter()
        self.sent_bytes = 0
        self._limit = server.settings.max_search_body_bytes
        self._body: list[bytes] = []
        self._size = 0
        self._started = False
        self._running = False
        self._gone = False
        self._refusal: tuple[int, str, str] | None = None   # decided while queued, answered in turn
        self._task: asyncio.Task[None] | None = None

    # --- connection side -------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        if self.finished:
            return
        if self.body_complete or self._refusal is not None:
            self._launch()
        elif self.expect_continue and self.client.http11:
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def request_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._body.clear()
            self.refuse(413, "content_too_long_exception",
                        f"request body is larger than the limit of {self._limit} bytes")
            return
        self._body.append(chunk)

    def request_done(self) -> None:
        self.body_complete = True
        if self._started and not self.finished and not self._running:
            self._launch()

    def client_gone(self) -> None:
        self._gone = True
        if not self._running:
            self.finished = True

    def reject_body(self, status: int, error_type: str, reason: str) -> None:
        """The body broke off (bad framing, too slow): answered in turn, never searched."""
        self.refuse(status, error_type, reason)

    def refuse(self, status: int, error_type: str, reason: str) -> None:
        if self.finished or self._running:
            return
        if not self.body_complete:
            self.keep_alive = False
        if self._started:
            self._answer(error_response(status, error_type, reason, close=not self.keep_alive), status, "error")
        else:  # queued behind another request: answered when its turn comes
            self._refusal = (status, error_type, reason)

    # --- the search ------------------------------------------------------------------------------

    def _launch(self) -> None:
        refusal = self._refusal or self.server.admit()
        if refusal is not None:
            self._answer(error_response(*refusal, close=not self.keep_alive), refusal[0], "error")
            return
        self._running = True
        self.server.admission.enter()
        runtime = self.server.app.runtime
        assert runtime is not None  # the server starts after the app
        body = b"".join(self._body)
        self._body.clear()
        _, _, query = self.url.partition(b"?")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.forwarded}
        params = parse_params(query)
        decided: Decided | None = None
        if self.kind == "search":
            try:
                decision = runtime.pipeline.decide(self.targets, params, headers, body)
            except Exception as exc:  # noqa: BLE001 - answered as the task would answer it (see _failed)
                self._failed(exc)
                return
            if isinstance(decision, Forward):  # relayed at once: no task for it
                self._relay(decision, body)
                return
            decided = decision
        # held: the loop keeps only a weak reference
        self._task = self.client.loop.create_task(self._run(runtime.pipeline, decided, params, headers, body))

    async def _run(self, pipeline: SearchPipeline, decided: Decided | None, params: dict[str, str],
                   headers: dict[str, str], body: bytes) -> None:
        method = self.method.decode("latin-1")
        address = self.client.client_addr[0] if self.client.client_addr is not None else None
        try:
            if decided is not None:
                result = await pipeline.rerank(decided, method, self.targets, params, headers, self.forwarded,
                                               address)
            else:
                result = await pipeline.msearch(method, self.targets, params, headers, self.forwarded, body,
                                                address)
            if isinstance(result, Forward):
                self._relay(result, body)
                return
            extra = {"engine_ms": result.engine_ms, "rerank_ms": result.rerank_ms, "cache": result.cache,
                     "reason": result.reason, "upstream": result.upstream, "arm": result.arm,
                     "provider_ms": result.provider_ms}
            outcome = "fallback" if "fallback" in result.outcome else \
                result.outcome if result.outcome in _OUTCOMES else "reranked"
            self._answer(self._finished_bytes(result), result.status, outcome, extra)
        except Exception as exc:  # noqa: BLE001 - the boundary: ProxyError answered, the rest a logged 500
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """The proxy's own error in the engine's format; anything unforeseen is logged and a 500."""
        if isinstance(exc, ProxyError):
            self._answer(error_response(exc.status, exc.error_type, exc.reason, close=not self.keep_alive),
                         exc.status, "error")
            return
        _log.error("unexpected error", exc_info=exc,
                   extra={"fields": {"path": self.path, "method": self.method.decode("latin-1")}})
        self._answer(error_response(500, "proxy_internal_exception",
                                    "the proxy failed to handle this request; see its log",
                                    close=not self.keep_alive), 500, "error")

    def _finished_bytes(self, result: Finished) -> bytes:
        """The reranked answer, framed by the proxy (an engine's own framing is never repeated)."""
        head = [b"HTTP/1.1 %d %b\r\n" % (result.status, status_phrase(result.status))]
        for name, value in result.headers:
            if name.lower() not in _FRAMING:
                head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\nx-rerank: %b\r\n" % (len(result.body), result.outcome.encode()))
        if result.reason:
            head.append(b"x-rerank-reason: %b\r\n" % result.reason.encode())
        if result.cache:
            head.append(b"x-rerank-cache: %b\r\n" % result.cache.encode())
        # total: from the request's head to this answer, as the proxy held it (what remains of it
        # once engine and provider are taken out is the proxy's own time).
        total_ms = (time.perf_counter() - self.started_at) * 1000
        head.append(b"server-timing: engine;dur=%.1f, rerank;dur=%.1f, provider;dur=%.1f, total;dur=%.1f\r\n"
                    % (result.engine_ms, result.rerank_ms, result.provider_ms, total_ms))
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if self.method != b"HEAD":
            head.append(result.body)
        return b"".join(head)

    def _answer(self, data: bytes, status: int, outcome: str, extra: dict[str, Any] | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.sent_bytes = len(data)
        if not self._gone:
            self.client.write(data)
        self.server.search_done(self, status, outcome, extra or {}, counted=self._running)
        self.client.exchange_done(self)

    def _relay(self, forward: Forward, body: bytes) -> None:
        """A bypass: the client's search (or its rewrite) to the engine, its answer relayed back."""
        replay = forward.body if forward.body is not None else body
        drop = frozenset({b"content-encoding"}) if forward.body is not None else frozenset()
        assert self.server.engine is not None  # set when the server started
        relay = RelayExchange(self.client, self.server.engine, self.method, self.url,
                              with_length(self.forwarded, self.method, replay, drop), b"length" if replay else None,
                              self.keep_alive, False, self.server.observers,
                              RelayRecord(self.path, self.headers, self.started_at, "bypass", forward.reason),
                              preloaded=replay,
                              extra_headers=[(b"X-Rerank", b"bypass"), (b"X-Rerank-Reason", forward.reason.encode()),
                                             *forward.headers])
        self.finished = True
        if self._gone:
            self.server.admission.leave()
            return
        self.client.hand_over(self, relay)
