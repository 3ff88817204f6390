"""Connections to the engines: round robin, passive health, keep-alive reuse, a cap on open ones.

UPSTREAM_MAX_CONNECTIONS bounds every open engine connection of a worker, idle or in use, so a
burst of clients can never open more sockets than the engine (or a kernel limit) allows. Past the
cap a request waits for a connection to come free, up to UPSTREAM_CONNECT_TIMEOUT_S, then gets the
engine-style 429 that a full thread pool answers.

Uploads still being received hold at most a quarter of those connections (the upload slots): a
body larger than the relay's buffer streams on a slot, and past them an upload waits for one, up
to UPSTREAM_CONNECT_TIMEOUT_S, then gets the same 429. So slow uploads never take the connections
that reads and searches need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque

from rerank_proxy.config import Settings
from rerank_proxy.engine.connection import EngineConnection
from rerank_proxy.engine.fetch import FetchExchange
from rerank_proxy.engine.retry_policy import pool_full, uploads_full
from rerank_proxy.engine.targets import Target
from rerank_proxy.engine.transport import EngineAnswer


class EnginePool:
    """Implements `EngineTransport` (`fetch`), and hands connections to relayed requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.targets = [Target(url, settings) for url in settings.upstream_urls]
        # Kept-alive connections ready for the next exchange, per engine (most recent last).
        self._idle: dict[Target, list[EngineConnection]] = {target: [] for target in self.targets}
        self.max_connections = settings.upstream_max_connections
        self._turn = 0
        self._live: set[EngineConnection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.upload_slots = max(1, self.max_connections // 4)
        self.uploads = 0
        self._upload_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def open_connections(self) -> int:
        return len(self._live) + self._connecting

    @property
    def idle_connections(self) -> int:
        return sum(map(len, self._idle.values()))

    def order(self) -> list[Target]:
        """Engines to try for one request: round robin start, healthy ones first."""
        targets = self.targets
        if len(targets) == 1:
            return targets
        self._turn = (self._turn + 1) % len(targets)
        rotated = targets[self._turn:] + targets[:self._turn]
        return [t for t in rotated if t.healthy] + [t for t in rotated if not t.healthy]

    def take_idle(self, target: Target) -> EngineConnection | None:
        idle = self._idle[target]
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, target: Target) -> EngineConnection | None:
        """A new connection to `target`, or None (the engine is then tried last for a while).
        Raises the 429 `ProxyError` when no connection comes free in time."""
        await self._slot()
        self._connecting += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: EngineConnection(self, target), target.host, target.port,
                                       ssl=target.ssl, server_hostname=target.host if target.ssl else None),
                self.settings.upstream_connect_timeout_s)
        except (TimeoutError, OSError, ssl.SSLError):
            target.mark_down()
            return None
        finally:
            self._connecting -= 1
        self._live.add(conn)
        if conn.closed:  # lost while connecting
            self.discard(conn)
            return None
        return conn

    async def _slot(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.upstream_connect_timeout_s
        while self.open_connections >= self.max_connections:
            spare = next((idle for idle in self._idle.values() if idle), None)
            if spare:  # an idle connection (to any engine) gives its place
                spare.pop(0).close()
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise pool_full() from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def take_upload_slot(self) -> bool:
        if self.uploads >= self.upload_slots or self._upload_waiters:
            return False
        self.uploads += 1
        return True

    async def wait_upload_slot(self) -> None:
        """An upload slot, in turn; raises the 429 `ProxyError` when none comes free in time."""
        waiter = asyncio.get_running_loop().create_future()
        self._upload_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.settings.upstream_connect_timeout_s)
        except TimeoutError:
            raise uploads_full() from None
        finally:
            if waiter in self._upload_waiters:
                self._upload_waiters.remove(waiter)

    def give_upload_slot(self) -> None:
        """An upload's body is all sent (or given up): its slot goes to the next waiting upload."""
        while self._upload_waiters:
            waiter = self._upload_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; the count stays
                return
        self.uploads = max(0, self.uploads - 1)

    def release(self, conn: EngineConnection) -> None:
        """An exchange is over: keep the connection for the next one (or close it for a waiter)."""
        if conn.closed or self._waiters:
            conn.close()
            return
        # The last bytes of an answer can complete it while the client's buffer is full: a pooled
        # connection must be reading again, or the next request on it would never see its answer.
        conn.resume_reading()
        self._idle[conn.target].append(conn)

    def discard(self, conn: EngineConnection) -> None:
        """The connection is closed: forget it, and give its place to a waiting request."""
        if conn not in self._live:
            return
        self._live.discard(conn)
        with contextlib.suppress(ValueError):  # not idle: it was in use
            self._idle[conn.target].remove(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def fetch(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                    body: bytes | None) -> EngineAnswer:
        """A read the proxy makes itself (a search's candidates, a probe), answer read whole."""
        return await FetchExchange(self, method.encode("ascii"), target.encode("latin-1"), headers, body).run()

    def close(self) -> None:
        for conn in list(self._live):
            conn.close()
