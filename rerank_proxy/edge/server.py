"""The proxy's HTTP/1.1 server: accepts connections, routes each request, shuts down gracefully.

Why not a general ASGI server: the proxy sits on every request of the app, and most of them are
forwarded unchanged. Measured side by side (docs/decisions/edge-server.md), a general server plus an
HTTP client cost about ten times nginx's CPU per forwarded request; here a plain pass-through never
enters ASGI (see `relay.py`), while searches and the proxy's own endpoints still run as the ASGI
application `ProxyApp`, exactly as under any ASGI server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

from rerank_proxy.admin.access_log import Served, log_access
from rerank_proxy.app import OPS_PREFIX, ProxyApp
from rerank_proxy.edge.admission import BUSY, Admission
from rerank_proxy.edge.asgi import AsgiExchange
from rerank_proxy.edge.connection import ErrorExchange, HttpConnection
from rerank_proxy.edge.observers import Observers, RelayObserver, RelayRecord
from rerank_proxy.edge.relay import BODY_HIGH_WATER, RelayExchange
from rerank_proxy.edge.relay_observers import AccessLog, CopyBudget, InFlight, RelayMetrics, WriteWarming
from rerank_proxy.edge.search import SearchExchange
from rerank_proxy.engine.headers import forward_request_headers
from rerank_proxy.engine.pool import EnginePool
from rerank_proxy.search.plan import match_search_path

if TYPE_CHECKING:
    from rerank_proxy.edge.connection import Exchange

KEEP_ALIVE_TIMEOUT_S = 75.0
# Bodies of writes kept for write warming, over all requests of a worker at once.
BODY_COPIES_MAX_BYTES = 32 * 1024 * 1024
_log = logging.getLogger("rerank_proxy")


class ProxyServer:
    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.settings = app.settings
        self.loop = asyncio.get_event_loop()
        self.connections: set[HttpConnection] = set()
        self.engine: EnginePool | None = None   # the runtime's, once the app has started
        self.stopping = False
        self.started = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.observers = Observers()   # of every relay; declared in start(), once the runtime is built
        self.admission = Admission(self.settings.max_concurrent_requests, self.settings.proxy_api_keys)

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> None:
        """Build the application (model load, clients), then listen."""
        self.loop = asyncio.get_running_loop()
        await self.app.startup()
        runtime = self.app.runtime
        assert runtime is not None  # startup() built it
        self.engine = runtime.engine
        runtime.metrics.track_in_flight(lambda: self.admission.in_flight)
        observers: list[RelayObserver] = [InFlight(self.admission), RelayMetrics(runtime.metrics), AccessLog()]
        if runtime.warmer is not None:
            observers.append(WriteWarming(runtime.warmer, self.settings, runtime.pipeline.text_fields,
                                          CopyBudget(BODY_COPIES_MAX_BYTES)))
        self.observers = Observers(observers)
        if sock is not None:
            self._server = await self.loop.create_server(lambda: HttpConnection(self), sock=sock, backlog=2048)
        else:
            self._server = await self.loop.create_server(lambda: HttpConnection(self), host, port, backlog=2048)
        self._sweeper = self.loop.create_task(self._tick())
        self.started = True

    @property
    def port(self) -> int:
        assert self._server is not None
        # uvloop's server is not an asyncio.Server, but has the same `sockets`.
        return int(cast(asyncio.Server, self._server).sockets[0].getsockname()[1])

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
        if self.admission.in_flight and not await self.admission.until_idle(self.settings.shutdown_grace_s):
            _log.warning("shutdown grace period over", extra={"fields": {"in_flight": self.admission.in_flight}})
        await self.app.shutdown()
        for conn in list(self.connections):
            conn.close()

    # --- routing: every request is classified here, once ------------------------------------

    def route(self, conn: HttpConnection, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
              keep_alive: bool, header_bytes: int) -> Exchange:
        """Pass-through (relay), search (pipeline), own endpoint (ASGI), or refusal (answered here).

        Every check runs here and only here, each measured one way: origin-form target, framing,
        header size (URL included), API key, body size, concurrency."""
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        forwarded, framing, expect = forward_request_headers(headers)
        own = path.startswith(OPS_PREFIX) or path == OPS_PREFIX.rstrip("/")
        search = None if own or method not in (b"GET", b"POST") else match_search_path(raw_path.decode("latin-1"))
        refusal = self._refusal(conn, method, raw_path, headers, framing, header_bytes, own, search is not None)
        if refusal is not None:
            status, error_type, reason = refusal
            if status == 400:
                conn.stop_parsing()
            # A 400 means the client's framing or target cannot be trusted: nothing more is read.
            return ErrorExchange(conn, status, error_type, reason, keep_alive=keep_alive and status != 400,
                                 body_expected=framing is not None,
                                 drain_body=status != 413 and _declared_length(headers) <= BODY_HIGH_WATER,
                                 on_done=self._refusal_done(method, path, headers))
        if not own and search is None:
            if self.admission.full:
                return self._busy(conn, method, path, headers, keep_alive, framing)
            self.admission.enter()
            assert self.engine is not None  # set by start()
            return RelayExchange(conn, self.engine, method, url, forwarded, framing, keep_alive, expect,
                                 self.observers, RelayRecord(path, headers, time.perf_counter()))
        if search is not None:
            return SearchExchange(conn, self, method, url, path, headers, forwarded, keep_alive,
                                  framing is not None, expect, search)
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1" if conn.http11 else "1.0", "method": method.decode("latin-1"),
            "scheme": "http", "path": path, "raw_path": raw_path, "query_string": query, "root_path": "",
            "headers": [(name.lower(), value) for name, value in headers],
            "client": conn.client_addr, "server": conn.server_addr,
        }
        return AsgiExchange(conn, scope, keep_alive, framing is not None, expect)

    def _refusal(self, conn: HttpConnection, method: bytes, raw_path: bytes, headers: list[tuple[bytes, bytes]],
                 framing: bytes | None, header_bytes: int, own: bool, searching: bool) -> tuple[int, str, str] | None:
        settings = self.settings
        if not conn.http11 and conn.http_version != "1.0":
            return 400, "illegal_argument_exception", "only HTTP versions 1.0 and 1.1 are spoken here"
        if method == b"CONNECT" or raw_path[:1] != b"/" or raw_path[:2] == b"//":
            return 400, "illegal_argument_exception", "request target must be an origin-form path"
        if header_bytes > settings.max_header_bytes:
            return (431, "too_long_http_header_exception",
                    f"request headers are larger than {settings.max_header_bytes} bytes")
        if framing == b"chunked":  # else no Transfer-Encoding was sent
            for name, value in headers:
                if len(name) == 17 and name.lower() == b"transfer-encoding" \
                        and value.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                    return 400, "illegal_argument_exception", "Transfer-Encoding must end with chunked"
        if own:
            return None  # the proxy's endpoints have their own token (ADMIN_TOKEN)
        if (bad_key := self.admission.key_refusal(headers)) is not None:
            return bad_key
        declared = _declared_length(headers) if framing == b"length" else 0
        limit = settings.max_search_body_bytes if searching else settings.max_body_bytes
        if declared > limit:
            return (413, "content_too_long_exception",
                    f"request body of {declared} bytes is larger than the limit of {limit} bytes")
        return None

    def _busy(self, conn: HttpConnection, method: bytes, path: str, headers: list[tuple[bytes, bytes]],
              keep_alive: bool, framing: bytes | None) -> ErrorExchange:
        return ErrorExchange(conn, *BUSY, keep_alive=keep_alive, body_expected=framing is not None,
                             drain_body=_declared_length(headers) <= BODY_HIGH_WATER,
                             on_done=self._refusal_done(method, path, headers))

    def admit(self) -> tuple[int, str, str] | None:
        """Checked when a search's body is complete: None (go), or the 429 to answer instead."""
        return BUSY if self.admission.full else None

    def _refusal_done(self, method: bytes, path: str,
                      headers: list[tuple[bytes, bytes]]) -> Callable[[ErrorExchange], None]:
        started = time.perf_counter()
        return lambda exchange: self._note_refusal(method, path, headers, exchange.status, started)

    def _note_refusal(self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], status: int,
                      started: float) -> None:
        elapsed = time.perf_counter() - started
        runtime = self.app.runtime
        if runtime is not None:
            runtime.metrics.observe("error", status, elapsed)
        log_access(headers, method.decode("latin-1"), path, Served(status, "error", elapsed))

    def search_done(self, exchange: SearchExchange, status: int, outcome: str, extra: dict[str, Any],
                    *, counted: bool) -> None:
        """A search answered by the proxy itself (reranked, or an error); `counted` if admitted."""
        if counted:
            self.admission.leave()
        elapsed = time.perf_counter() - exchange.started_at
        runtime = self.app.runtime
        if runtime is not None:
            runtime.metrics.observe(outcome, status, elapsed, extra.get("engine_ms", 0.0),
                                    extra.get("rerank_ms", 0.0), extra.get("reason", ""))
            if extra.get("arm"):
                runtime.metrics.observe_arm(extra["arm"], elapsed, extra.get("rerank_ms", 0.0),
                                            extra.get("provider_ms", 0.0))
        log_access(exchange.headers, exchange.method.decode("latin-1"), exchange.path,
                   Served(status, outcome, elapsed, exchange.sent_bytes, extra.get("upstream", ""), extra),
                   exchange.client.client_addr)

    async def _tick(self) -> None:
        """Engine read timeouts of relayed requests, and keep-alive connections idle too long."""
        every = min(1.0, self.settings.upstream_timeout_s / 4)
        settings = self.settings
        while True:
            await asyncio.sleep(every)
            now = self.loop.time()
            for conn in list(self.connections):
                active = conn.active
                if isinstance(active, RelayExchange):
                    active.check_timeout(now)
                if conn.idle and not conn.in_head:
                    if conn.last_active < now - KEEP_ALIVE_TIMEOUT_S:
                        conn.close()
                else:
                    conn.check_client_timeouts(now, settings)


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The Content-Length the parser accepted (digits only), 0 when there is none."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
