"""The proxy's own endpoints (`/_rerank/`: ops and the console) and a worker's start and stop.

The edge (`rerank_proxy.edge`) classifies every request once: it relays plain requests to the
engine, runs searches through the pipeline, answers refusals itself, and hands this ASGI app only
the proxy's own endpoints. What a worker runs on is built in `runtime.py`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rerank_proxy.admin import logs
from rerank_proxy.admin.collectors import register_collectors
from rerank_proxy.admin.endpoints import build_ops_app
from rerank_proxy.config import Settings
from rerank_proxy.runtime import Runtime, build_runtime
from rerank_proxy.scoring.cache.scores import SharedTier
from rerank_proxy.scoring.providers.base import Reranker

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPS_PREFIX = "/_rerank/"
PROXY_KEY_HEADER = b"x-proxy-api-key"
_log = logging.getLogger("rerank_proxy")


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
        """The proxy's own endpoints; the edge routes nothing else here, after `startup`."""
        if scope["type"] != "http":
            return
        self.request_started()
        try:
            await self._ops(scope, receive, send)
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
        register_collectors(self.runtime)
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

    def api_key_ok(self, sent: bytes) -> bool:
        ok = False
        for key in self.settings.proxy_api_keys:  # compare with every key: timing tells nothing
            ok |= hmac.compare_digest(sent, key.encode())
        return ok


# --- helpers ---------------------------------------------------------------------------------------

def _url_passwords(urls: tuple[str, ...]) -> list[str]:
    from urllib.parse import urlsplit

    return [p for p in (urlsplit(u).password for u in urls) if p]
