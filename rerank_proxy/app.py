"""The proxy's own endpoints (`/_rerank/`: ops and the console) and a worker's start and stop.

The edge (`rerank_proxy.edge`) classifies every request once: it relays plain requests to the
engine, runs searches through the pipeline, answers refusals itself, and hands this ASGI app only
the proxy's own endpoints. What a worker runs on is built in `runtime.py`.
"""

from __future__ import annotations

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


class ProxyApp:
    """The proxy's own endpoints as an ASGI app, over the worker's Runtime (built in `startup`)."""

    def __init__(self, settings: Settings, reranker: Reranker | None = None,
                 shared_cache: SharedTier | None = None, host_dir: str | None = None) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        self._injected = (reranker, shared_cache, host_dir)
        self._ops: Any = None
        logs.register_secrets([settings.rerank_api_key, settings.admin_token, settings.redis_url,
                               *settings.proxy_api_keys, *_url_passwords(settings.upstream_urls)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The proxy's own endpoints; the edge routes nothing else here, after `startup`."""
        if scope["type"] == "http":
            await self._ops(scope, receive, send)

    async def startup(self) -> None:
        self.runtime = await build_runtime(self.settings, *self._injected)
        register_collectors(self.runtime)
        self._ops = build_ops_app(self.runtime)

    async def shutdown(self) -> None:
        """Close the clients (engine, provider, shared cache); the edge has let requests finish."""
        if self.runtime is None:
            return
        for close in self.runtime.closers:
            await close()
        self.runtime.engine.close()
        if self.runtime.reranker is not None:
            await self.runtime.reranker.aclose()
        if self.runtime.shared_cache is not None:
            await self.runtime.shared_cache.aclose()


# --- helpers ---------------------------------------------------------------------------------------

def _url_passwords(urls: tuple[str, ...]) -> list[str]:
    from urllib.parse import urlsplit

    return [p for p in (urlsplit(u).password for u in urls) if p]
