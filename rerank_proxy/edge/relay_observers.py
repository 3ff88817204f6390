"""The proxy's observers of relayed requests: the in-flight count, metrics, access log, write warming.

The list of them is the server's (`ProxyServer.start`); the hooks are `observers.py`'s.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from rerank_proxy.admin.access_log import Served, access_logged, log_access
from rerank_proxy.edge.observers import RelayObserver
from rerank_proxy.local.warming import queue_written
from rerank_proxy.local.write_docs import is_write

if TYPE_CHECKING:
    from rerank_proxy.config import Settings
    from rerank_proxy.edge.relay import RelayExchange
    from rerank_proxy.local.warmer import Warmer
    from rerank_proxy.metrics import Metrics
    from rerank_proxy.search.text.text_fields import TextFieldCache


class InFlightCount(Protocol):
    def leave(self) -> None: ...


class InFlight(RelayObserver):
    """A relay over is a request no longer in flight (it was counted in when admitted)."""

    def __init__(self, count: InFlightCount) -> None:
        self.count = count

    def response_done(self, relay: RelayExchange) -> None:
        self.count.leave()


class RelayMetrics(RelayObserver):
    """Requests by outcome and status, with their time (`rerank_proxy_requests_total` and kin)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def response_done(self, relay: RelayExchange) -> None:
        record = relay.record
        self.metrics.observe(record.outcome, relay.final_status, time.perf_counter() - record.started_at,
                             reason=record.reason)


class AccessLog(RelayObserver):
    """One access line per relay, built only when access lines are written."""

    def response_done(self, relay: RelayExchange) -> None:
        if not access_logged():
            return
        record = relay.record
        extra = {"reason": record.reason} if record.reason else {}
        log_access(record.headers, relay.method.decode("latin-1"), record.path,
                   Served(relay.final_status, record.outcome, time.perf_counter() - record.started_at,
                          relay.sent_bytes, relay.served_by, extra),
                   relay.client.client_addr)


class CopyBudget:
    """The bytes of request bodies a worker keeps for write warming, over all requests at once:
    past it a copy is dropped (never the write), so concurrent bulks cannot grow memory without end."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held = max(0, self.held - size)


class _Copy:
    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0


class WriteWarming(RelayObserver):
    """A successful write's documents go to the built-in model's queue once the answer is out.

    The body is copied as it is relayed, up to `limit` bytes per request and `budget` over all of
    them; past either the copy is dropped, never the write. The copy's bytes stay counted until the
    warming task has read them."""

    def __init__(self, warmer: Warmer, settings: Settings, text_fields: TextFieldCache | None,
                 budget: CopyBudget) -> None:
        self.warmer = warmer
        self.settings = settings
        self.text_fields = text_fields
        self.limit = settings.max_search_body_bytes
        self.budget = budget
        self._copies: dict[RelayExchange, _Copy | None] = {}   # None: not a write, or the copy was dropped
        self._background: set[asyncio.Task[int]] = set()

    def request_body(self, relay: RelayExchange, chunk: bytes) -> None:
        if relay not in self._copies:
            self._copies[relay] = _Copy() if is_write(relay.method.decode("latin-1"), relay.record.path) else None
        copy = self._copies[relay]
        if copy is None:
            return
        copy.size += len(chunk)
        if copy.size <= self.limit and self.budget.take(len(chunk)):
            copy.chunks.append(chunk)
        else:
            self._copies[relay] = None
            self.budget.give_back(sum(map(len, copy.chunks)))

    def response_done(self, relay: RelayExchange) -> None:
        copy = self._copies.pop(relay, None)
        if copy is None:
            return
        if copy.chunks and 200 <= relay.final_status < 300 and relay.body_complete:
            self._warm(relay, b"".join(copy.chunks))
        else:
            self.budget.give_back(sum(map(len, copy.chunks)))

    def _warm(self, relay: RelayExchange, body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(queue_written(
            self.warmer, self.settings, relay.method.decode("latin-1"), relay.record.path, body,
            self.text_fields, relay.request_headers))
        self._background.add(task)
        size = len(body)

        def finished(done: asyncio.Task[int]) -> None:
            self._background.discard(done)
            self.budget.give_back(size)
        task.add_done_callback(finished)
