"""The ASGI application: routes each request to ops, the search pipeline or the pass-through.

Under `rerank-proxy serve` the server (`rerank_proxy/server/`) classifies every request once: it
relays plain requests to the engine itself, answers refusals itself (bad framing or target, too
large, bad key, too busy), and hands this app only searches (read whole) and the proxy's
`/_rerank/` endpoints. The app stays a complete proxy on its own (any ASGI server
can run it): pass-through requests are streamed both ways chunk by chunk (a large `_bulk` or
response is never held in memory), and only searches are read whole, parsed and rewritten.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rerank_proxy.admin import logs
from rerank_proxy.admin.metrics import Metrics
from rerank_proxy.config import Settings
from rerank_proxy.errors import AnswerTooLarge, ProxyError, error_body
from rerank_proxy.local.embedder import Warmer
from rerank_proxy.scoring.cache.scores import ScoreCache, SharedTier
from rerank_proxy.scoring.providers.base import Preloadable, Reranker
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from rerank_proxy.search.pipeline import Finished, Forward, SearchPipeline, decode_body
from rerank_proxy.search.plan import match_search_path, parse_params
from rerank_proxy.upstream import IDEMPOTENT_METHODS, UpstreamPool, forwardable_headers

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPS_PREFIX = "/_rerank/"
PROXY_KEY_HEADER = b"x-proxy-api-key"
_log = logging.getLogger("rerank_proxy")


@dataclass
class Runtime:
    """Everything built at start-up and shared by requests of one worker."""

    settings: Settings
    upstream: UpstreamPool
    reranker: Reranker | None
    cache: ScoreCache | None
    pipeline: SearchPipeline
    metrics: Metrics
    shared_cache: SharedTier | None = None
    started_at: float = 0.0
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def guard(self) -> ResilientReranker | None:
        """The resilience layer (breaker, provider stats), unless a bare reranker was injected."""
        return self.reranker if isinstance(self.reranker, ResilientReranker) else None

    @property
    def warmer(self) -> Warmer | None:
        """The background embedder's owner (the built-in model), for write and start-up warming."""
        provider = self.guard.inner if self.guard is not None else self.reranker
        return provider if isinstance(provider, Warmer) else None


async def build_runtime(settings: Settings, reranker: Reranker | None = None,
                        shared_cache: SharedTier | None = None) -> Runtime:
    """Clients, caches and the pipeline; `reranker` may be injected (tests, benchmarks)."""
    from rerank_proxy.wiring import build_reranker, build_shared_cache

    if reranker is None:
        reranker = build_reranker(settings)
    if shared_cache is None:
        shared_cache = build_shared_cache(settings)
    upstream = UpstreamPool(settings)
    cache = None
    if reranker is not None:
        cache = ScoreCache(reranker, max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s,
                           shared=shared_cache, shared_timeout_s=settings.redis_timeout_ms / 1000)
    if isinstance(reranker, Preloadable):
        await reranker.load()  # the built-in model loads here, not on the first search
    metrics = Metrics()
    runtime = Runtime(settings, upstream, reranker, cache, SearchPipeline(settings, upstream, cache),
                      metrics, shared_cache, time.time())
    from rerank_proxy.admin.collectors import register_collectors
    register_collectors(runtime)
    warmer = runtime.warmer
    if warmer is not None and settings.local_warm_on_start:
        from rerank_proxy.warm import warm_on_start
        task = asyncio.create_task(warm_on_start(warmer, settings))
        runtime.closers.append(_canceller(task))
    return runtime


def _canceller(task: asyncio.Task[Any]) -> Callable[[], Awaitable[None]]:
    """A closer that stops a background task at shutdown."""
    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cancel


class ProxyApp:
    def __init__(self, settings: Settings, reranker: Reranker | None = None,
                 shared_cache: SharedTier | None = None) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        self._injected = (reranker, shared_cache)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._ops: Any = None
        logs.register_secrets([settings.rerank_api_key, settings.admin_token, settings.redis_url,
                               *settings.proxy_api_keys, *_url_passwords(settings.upstream_urls)])

    # --- ASGI entry ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.runtime is None:  # lifespan disabled by the host server: build lazily
            await self.startup()
        self.request_started()
        try:
            await self._handle(scope, receive, send)
        finally:
            self.request_finished()

    # --- in-flight accounting (also used by the server's pass-through fast path) -----------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def request_started(self) -> None:
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle.clear()

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def startup(self) -> None:
        self.runtime = await build_runtime(self.settings, *self._injected)
        from rerank_proxy.admin.endpoints import build_ops_app
        self._ops = build_ops_app(self.runtime)
        self.runtime.metrics.track_in_flight(lambda: self._in_flight)

    async def shutdown(self) -> None:
        """Let in-flight requests finish (within the grace period), then close clients."""
        if self._in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace_s)
            except TimeoutError:
                _log.warning("shutdown grace period over", extra={"fields": {"in_flight": self._in_flight}})
        if self.runtime is not None:
            for close in self.runtime.closers:
                await close()
            await self.runtime.upstream.aclose()
            if self.runtime.reranker is not None:
                await self.runtime.reranker.aclose()
            if self.runtime.shared_cache is not None:
                await self.runtime.shared_cache.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # a start-up failure must be one clear line, not a trace
                    await send({"type": "lifespan.startup.failed", "message": logs.redact(str(exc))})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- routing ---------------------------------------------------------------------------------

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        assert runtime is not None
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        status, outcome = 500, "error"
        extra: dict[str, Any] = {}
        try:
            # The server's edge (`rerank_proxy.server`) has classified this request already: target
            # form, framing, header size, API key, body size and concurrency were checked there.
            if path.startswith(OPS_PREFIX) or path == OPS_PREFIX.rstrip("/"):
                outcome = "ops"
                await self._ops(scope, receive, send)
                return
            search = match_search_path(raw_path.decode("latin-1")) if method in ("GET", "POST") else None
            if search is not None:
                status, outcome, extra = await self._search(scope, receive, send, *search)
            else:
                status = await self._passthrough(scope, receive, send, None)
                outcome = "passthrough"
        except ProxyError as exc:
            status = exc.status
            await _send_error(send, exc)
        except Exception:
            _log.exception("unexpected error", extra={"fields": {"path": path, "method": method}})
            status = 500
            await _send_error(send, ProxyError(500, "proxy_internal_exception",
                                               "the proxy failed to handle this request; see its log"))
        finally:
            if outcome != "ops":
                elapsed = time.perf_counter() - started
                runtime.metrics.observe(outcome, status, elapsed, extra.get("engine_ms", 0.0),
                                        extra.get("rerank_ms", 0.0), extra.get("reason", ""))
                client = scope.get("client")
                log_access(scope["headers"], method, path, status, outcome, elapsed, extra,
                           (str(client[0]), int(client[1])) if client else None)

    def api_key_ok(self, sent: bytes) -> bool:
        ok = False
        for key in self.settings.proxy_api_keys:  # compare with every key: timing tells nothing
            ok |= hmac.compare_digest(sent, key.encode())
        return ok

    # --- searches --------------------------------------------------------------------------------

    async def _search(self, scope: Scope, receive: Receive, send: Send, targets: str | None,
                      kind: str) -> tuple[int, str, dict[str, Any]]:
        runtime = self.runtime
        assert runtime is not None
        body = await _read_body(scope, receive, self.settings.max_search_body_bytes)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        params = parse_params(scope.get("query_string", b""))
        raw_headers = _client_headers(scope)
        if kind == "msearch":
            _check_msearch_size(body, headers.get("content-encoding", ""), self.settings)
        handler = runtime.pipeline.search if kind == "search" else runtime.pipeline.msearch
        try:
            result = await handler(scope["method"], targets, params, headers, raw_headers, body)
        except AnswerTooLarge:
            # Candidates past MAX_CANDIDATE_BYTES are never held: the engine answers the client's
            # own request, streamed through, in lexical order and flagged.
            result = Forward("candidates_too_large")
        if isinstance(result, Forward):
            replay = result.body if result.body is not None else body
            status = await self._passthrough(scope, receive, send, replay,
                                             extra_headers=[(b"x-rerank", b"bypass"),
                                                            (b"x-rerank-reason", result.reason.encode())],
                                             rewritten=result.body is not None)
            return status, "bypass", {"reason": result.reason}
        await _send_finished(send, result)
        extra = {"engine_ms": result.engine_ms, "rerank_ms": result.rerank_ms, "cache": result.cache,
                 "reason": result.reason}
        outcome = result.outcome if result.outcome in ("reranked", "cached", "fallback", "error", "bypass", "lexical") \
            else "reranked"
        if "fallback" in result.outcome:
            outcome = "fallback"
        return result.status, outcome, extra

    # --- pass-through ----------------------------------------------------------------------------

    async def _passthrough(self, scope: Scope, receive: Receive, send: Send, body: bytes | None,
                           extra_headers: list[tuple[bytes, bytes]] | None = None,
                           rewritten: bool = False) -> int:
        """Stream the request to an engine and its response back, changing nothing."""
        runtime = self.runtime
        assert runtime is not None
        method: str = scope["method"]
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = _client_headers(scope)
        content: bytes | AsyncIterator[bytes] | None
        if body is not None:
            # A search the proxy read whole: replayed as read, or re-serialised (then plain JSON).
            content = body
            drop = {b"content-length", b"transfer-encoding"}
            if rewritten:
                drop.add(b"content-encoding")
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                headers.append((b"content-length", str(len(body)).encode()))
        elif _has_body(scope):
            _check_declared_length(scope, self.settings.max_body_bytes)
            content = _stream_body(receive, self.settings.max_body_bytes)
        else:
            content = None
        searching = body is not None and match_search_path(target.partition("?")[0]) is not None
        idempotent = method in IDEMPOTENT_METHODS or searching
        response = await runtime.upstream.send(method, target, headers, content, idempotent=idempotent)
        try:
            out_headers = forwardable_headers(response.raw_headers) + (extra_headers or [])
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            if method != "HEAD":
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return response.status_code


# --- helpers ---------------------------------------------------------------------------------------

def _url_passwords(urls: tuple[str, ...]) -> list[str]:
    from urllib.parse import urlsplit

    return [p for p in (urlsplit(u).password for u in urls) if p]


def _client_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in forwardable_headers(scope["headers"]) if k.lower() != PROXY_KEY_HEADER]


def _has_body(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        lowered = key.lower()
        if lowered == b"content-length":
            return value.strip() != b"0"
        if lowered == b"transfer-encoding":
            return True
    return False


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise ProxyError(400, "illegal_argument_exception", "invalid Content-Length") from None
    return None


def _check_declared_length(scope: Scope, limit: int) -> None:
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise ProxyError(413, "content_too_long_exception",
                         f"request body of {declared} bytes is larger than the limit of {limit} bytes")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    _check_declared_length(scope, limit)
    return b"".join([chunk async for chunk in _stream_body(receive, limit)])


async def _stream_body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProxyError(499, "client_closed_request", "the client closed the connection")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProxyError(413, "content_too_long_exception",
                             f"request body is larger than the limit of {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _check_msearch_size(body: bytes, content_encoding: str, settings: Settings) -> None:
    """An `_msearch` of more sub-searches than MAX_MSEARCH_SEARCHES is refused before any is parsed."""
    decoded = decode_body(body, content_encoding, settings.max_search_body_bytes)
    searches = sum(1 for line in decoded.split(b"\n") if line.strip()) // 2
    if searches > settings.max_msearch_searches:
        raise ProxyError(400, "illegal_argument_exception",
                         f"an _msearch of {searches} searches is larger than the limit of "
                         f"{settings.max_msearch_searches} (MAX_MSEARCH_SEARCHES)")


async def _send_finished(send: Send, result: Finished) -> None:
    # The engine's own framing (an error answer passed on) is replaced by the proxy's: a second
    # Content-Length makes strict clients (Node's parser) reject the response.
    headers = [(k, v) for k, v in result.headers if k.lower() not in (b"content-length", b"transfer-encoding")]
    headers.append((b"content-length", str(len(result.body)).encode()))
    headers.append((b"x-rerank", result.outcome.encode()))
    if result.reason:
        headers.append((b"x-rerank-reason", result.reason.encode()))
    if result.cache:
        headers.append((b"x-rerank-cache", result.cache.encode()))
    headers.append((b"server-timing",
                    f"engine;dur={result.engine_ms:.1f}, rerank;dur={result.rerank_ms:.1f}".encode()))
    await send({"type": "http.response.start", "status": result.status, "headers": headers})
    await send({"type": "http.response.body", "body": result.body, "more_body": False})


async def _send_error(send: Send, exc: ProxyError) -> None:
    body = error_body(exc.status, exc.error_type, exc.reason)
    try:
        await send({"type": "http.response.start", "status": exc.status,
                    "headers": [(b"content-type", b"application/json; charset=UTF-8"),
                                (b"content-length", str(len(body)).encode()),
                                (b"x-rerank", b"error")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:  # the response had already started: nothing more can be said to the client
        pass


def log_access(raw_headers: list[tuple[bytes, bytes]], method: str, path: str, status: int, outcome: str,
               elapsed: float, extra: dict[str, Any], client: tuple[str, int] | None = None) -> None:
    """One JSON access line (at INFO): client address and user agent, the request id and trace
    context if sent."""
    if not logs.access_log.isEnabledFor(logging.INFO):
        return
    headers = {k.lower(): v for k, v in raw_headers
               if k.lower() in (b"x-opaque-id", b"traceparent", b"user-agent")}
    fields: dict[str, Any] = {"method": method, "path": path, "status": status, "outcome": outcome,
                              "ms": round(elapsed * 1000, 2)}
    if client is not None:
        fields["client"] = f"{client[0]}:{client[1]}"
    if b"user-agent" in headers:
        fields["user_agent"] = headers[b"user-agent"].decode("latin-1")[:300]
    for key in ("engine_ms", "rerank_ms"):
        if extra.get(key):
            fields[key] = round(extra[key], 2)
    if extra.get("cache"):
        fields["cache"] = extra["cache"]
    if extra.get("reason"):
        fields["reason"] = extra["reason"]
    if b"x-opaque-id" in headers:
        fields["request_id"] = headers[b"x-opaque-id"].decode("latin-1")[:200]
    if b"traceparent" in headers:
        fields["traceparent"] = headers[b"traceparent"].decode("latin-1")[:200]
    logs.access_log.info("request", extra={"fields": fields})
