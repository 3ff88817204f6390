"""Run a `ProxyServer` in a background thread with its own event loop (tests, the demo)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvloop

from rerank_proxy.app import ProxyApp
from rerank_proxy.edge.server import ProxyServer


class BackgroundServer:
    """`with BackgroundServer(app) as server:` listens on a free loopback port until the block ends."""

    def __init__(self, app: ProxyApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.loop = uvloop.new_event_loop()
        self.server: ProxyServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="rerank-proxy")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        ready = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        ready.result(timeout=120)
        return self

    async def _start(self) -> None:
        self.server = ProxyServer(self.app)
        await self.server.start(self.host, self.port)
        self.port = self.server.port

    def stop(self, timeout: float = 30) -> None:
        if self.server is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
