"""The application: what start-up builds (`Runtime`), in-flight accounting, the proxy's endpoints.

The edge (`rerank_proxy.edge`) classifies every request once: it relays plain requests to the
engine, runs searches through the pipeline, answers refusals itself, and hands this ASGI app only
the proxy's own `/_rerank/` endpoints (ops and the console).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rerank_proxy.admin import logs
from rerank_proxy.admin.metrics import Metrics
from rerank_proxy.config import Settings
from rerank_proxy.engine.pool import EnginePool
from rerank_proxy.local.warmer import Warmer
from rerank_proxy.scoring.cache.scores import ScoreCache, SharedTier
from rerank_proxy.scoring.providers.base import Preloadable, Reranker
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from rerank_proxy.search.pipeline import SearchPipeline

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
    engine: EnginePool
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
                        shared_cache: SharedTier | None = None, host_dir: str | None = None) -> Runtime:
    """Clients, caches and the pipeline; `reranker` may be injected (tests, benchmarks); `host_dir`
    is the per-host score tier's directory when this is one of several workers."""
    from rerank_proxy.wiring import build_host_share, build_reranker, build_shared_cache

    if reranker is None:
        reranker = build_reranker(settings)
    if shared_cache is None:
        shared_cache = build_shared_cache(settings)
    engine = EnginePool(settings)
    cache = None
    closers: list[Callable[[], Awaitable[None]]] = []
    if reranker is not None:
        host = build_host_share(settings, host_dir)
        cache = ScoreCache(reranker, max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s,
                           shared=shared_cache, shared_timeout_s=settings.redis_timeout_ms / 1000, host=host)
        if host is not None:
            host.signals.on_flush = cache.flush  # another worker's admin flush empties this worker's tier
            closers.append(_closer(host.close))
    if isinstance(reranker, Preloadable):
        await reranker.load()  # the built-in model loads here, not on the first search
    metrics = Metrics()
    pipeline = SearchPipeline(settings, engine, cache)
    runtime = Runtime(settings, engine, reranker, cache, pipeline, metrics, shared_cache, time.time(), closers)
    from rerank_proxy.admin.collectors import register_collectors
    register_collectors(runtime)
    warmer = runtime.warmer
    if warmer is not None and settings.local_warm_on_start:
        from rerank_proxy.local.warming import warm_on_start
        task = asyncio.create_task(warm_on_start(warmer, settings, engine, pipeline.text_fields))
        runtime.closers.append(_canceller(task))
    if pipeline.text_fields is not None:
        runtime.closers.append(pipeline.text_fields.aclose)  # last: the warming above reads through it
    return runtime


def _closer(close: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        close()
    return run


def _canceller(task: asyncio.Task[Any]) -> Callable[[], Awaitable[None]]:
    """A closer that stops a background task at shutdown."""
    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cancel


class ProxyApp:
    def __init__(self, settings: Settings, reranker: Reranker | None = None,
                 shared_cache: SharedTier | None = None, host_dir: str | None = None) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        self._injected = (reranker, shared_cache, host_dir)
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
            self.runtime.engine.close()
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
        """The proxy's own endpoints; the edge (`rerank_proxy.edge`) routes nothing else here."""
        await self._ops(scope, receive, send)

    def api_key_ok(self, sent: bytes) -> bool:
        ok = False
        for key in self.settings.proxy_api_keys:  # compare with every key: timing tells nothing
            ok |= hmac.compare_digest(sent, key.encode())
        return ok


# --- helpers ---------------------------------------------------------------------------------------

def _url_passwords(urls: tuple[str, ...]) -> list[str]:
    from urllib.parse import urlsplit

    return [p for p in (urlsplit(u).password for u in urls) if p]
