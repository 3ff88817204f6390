"""The proxy's HTTP/1.1 server: accepts connections, routes each request, shuts down gracefully.

Why not a general ASGI server: the proxy sits on every request of the app, and most of them are
forwarded unchanged. Measured side by side (BENCHMARKS.md section 8), a general server plus an HTTP
client cost about ten times nginx's CPU per forwarded request; here a plain pass-through never
enters ASGI (see `relay.py`), while searches and the proxy's own endpoints still run as the ASGI
application `ProxyApp`, exactly as under any ASGI server.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

from rerank_proxy.app import PROXY_KEY_HEADER, ProxyApp, log_access
from rerank_proxy.search.plan import match_search_path
from rerank_proxy.server.asgi import AsgiExchange
from rerank_proxy.server.connection import HttpConnection
from rerank_proxy.server.relay import RelayExchange, RelayPool, forward_request_headers

if TYPE_CHECKING:
    from rerank_proxy.server.connection import Exchange

KEEP_ALIVE_TIMEOUT_S = 75.0


class ProxyServer:
    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.settings = app.settings
        self.loop = asyncio.get_event_loop()
        self.connections: set[HttpConnection] = set()
        self.relay_pool = RelayPool(self.settings)
        self.stopping = False
        self.started = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock=None) -> None:  # type: ignore[no-untyped-def]
        """Build the application (model load, clients), then listen."""
        self.loop = asyncio.get_running_loop()
        await self.app.startup()
        self.app.runtime.upstream.use_fetcher(self.relay_pool.fetch)  # type: ignore[union-attr]
        if sock is not None:
            self._server = await self.loop.create_server(lambda: HttpConnection(self), sock=sock, backlog=2048)
        else:
            self._server = await self.loop.create_server(lambda: HttpConnection(self), host, port, backlog=2048)
        self._sweeper = self.loop.create_task(self._tick())
        self.started = True

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, finish what is in flight (within SHUTDOWN_GRACE_S), close everything."""
        if self.stopping:
            return
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        await self.app.shutdown()
        for conn in list(self.connections):
            conn.close()
        self.relay_pool.close()

    # --- routing -------------------------------------------------------------------------------

    def route(self, conn: HttpConnection, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
              keep_alive: bool, header_bytes: int) -> Exchange:
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        forwarded, framing, expect = forward_request_headers(headers)
        if self._plain_passthrough(method, raw_path, path, headers, header_bytes):
            self.app.request_started()
            exchange = RelayExchange(conn, method, url, forwarded, framing, keep_alive, expect, self._relay_done)
            exchange.started_at = time.perf_counter()
            exchange.log_path = path
            exchange.log_headers = headers
            return exchange
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1" if conn.http11 else "1.0", "method": method.decode("latin-1"),
            "scheme": "http", "path": path, "raw_path": raw_path, "query_string": query, "root_path": "",
            "headers": [(name.lower(), value) for name, value in headers],
            "client": conn.client_addr, "server": conn.server_addr,
        }
        return AsgiExchange(conn, scope, keep_alive, framing is not None, expect)

    def _plain_passthrough(self, method: bytes, raw_path: bytes, path: str, headers: list[tuple[bytes, bytes]],
                           header_bytes: int) -> bool:
        """True when nothing but forwarding is needed; anything else goes to the application,
        which also produces every refusal (431, 401, 429, 413, 400) in the engine's format."""
        if method == b"CONNECT" or raw_path[:1] != b"/" or raw_path[:2] == b"//":
            return False
        if path.startswith("/_rerank"):  # `path` is `raw_path` percent-decoded
            return False
        if (method == b"GET" or method == b"POST") and match_search_path(path) is not None:
            return False
        settings = self.settings
        if header_bytes > settings.max_header_bytes:
            return False
        if self.app.in_flight > settings.max_concurrent_requests:
            return False
        if settings.proxy_api_keys and not self.app.api_key_ok(
                next((v for k, v in headers if k.lower() == PROXY_KEY_HEADER), b"")):
            return False
        for name, value in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                try:
                    return int(value) <= settings.max_body_bytes
                except ValueError:
                    return False
        return True

    def _relay_done(self, exchange: RelayExchange) -> None:
        self.app.request_finished()
        elapsed = time.perf_counter() - exchange.started_at
        status = exchange.status or 499
        self.app.runtime.metrics.observe("passthrough", status, elapsed)  # type: ignore[union-attr]
        log_access(exchange.log_headers, exchange.method.decode("latin-1"), exchange.log_path, status,
                   "passthrough", elapsed, {})
        exchange.client.exchange_done(exchange)

    async def _tick(self) -> None:
        """Engine read timeouts of relayed requests, and keep-alive connections idle too long."""
        every = min(1.0, self.settings.upstream_timeout_s / 4)
        while True:
            await asyncio.sleep(every)
            now = self.loop.time()
            for conn in list(self.connections):
                active = conn.active
                if isinstance(active, RelayExchange):
                    active.check_timeout(now)
                elif conn.idle and conn.last_active < now - KEEP_ALIVE_TIMEOUT_S:
                    conn.close()
