"""Deadline, retries, concurrency limit and circuit breaker around any `Reranker`.

A search must answer quickly even when the provider does not, so every rerank has one total
deadline (RERANK_DEADLINE_MS) that covers waiting for a concurrency slot, each attempt
(RERANK_ATTEMPT_TIMEOUT_MS) and the back-off between attempts. Whatever goes wrong ends as a
`RerankError`, which the search pipeline turns into lexical order.

- Retries (at most RERANK_MAX_RETRIES) happen only for errors marked retryable by the provider:
  408, 429, 5xx except 501, connection failures, cut-short bodies and attempt timeouts. The wait
  is the provider's hint (`retry-after-ms` / `Retry-After`) when it sent one, else exponential
  back-off with full jitter. When the wait would not end before the deadline we give up at once
  rather than sleep into a certain timeout.
- The breaker counts consecutive failed reranks (after retries). Request errors (400, 413, 422)
  do not count: the provider is answering. Capacity states (`RerankCapacity`: vectors still cold,
  every slot taken until the deadline) do not count either: the provider is not failing, it is
  busy, and an open breaker would only stop the work that ends the state. So neither a cold index
  nor one client's slow searches can switch reranking off for everyone; only a failing provider
  does. One breaker per wrapped provider. While open, calls fail fast with `RerankUnavailable`.
- A provider that runs in this process (`in_process = True`: the built-in model) spends its time
  on the proxy's own CPU and queues, so its deadline misses are capacity too (`RerankBusy`): one
  client's burst of work makes the proxy busy, it does not make the model broken. Its errors
  (a model that raises) still count.
- Query text is cut to RERANK_MAX_QUERY_CHARS first, like document text to RERANK_MAX_CHARS: the
  models read a few hundred tokens at most, and a multi-megabyte query would only cost CPU.
- `clock` drives only the breaker's cooldown (tests pass a fake one). Deadlines are enforced by
  the event loop's timer, so they are always real time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank_proxy.config import Settings
from rerank_proxy.scoring.providers.base import Preloadable, Reranker, RerankError, RerankResult
from rerank_proxy.scoring.providers.errors import (
    RerankBusy,
    RerankDeadlineExceeded,
    RerankSaturated,
    RerankTimeout,
    RerankUnavailable,
    error_kind,
    is_capacity,
    is_request_error,
)

__all__ = ["CircuitBreaker", "RerankStats", "RerankUnavailable", "ResilientReranker"]

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """closed -> open after `failures` consecutive failures -> half_open after `cooldown_s`.

    In half_open exactly one call (the probe) goes through; its success closes the breaker, its
    failure opens it for another cooldown. Other calls fail fast until the probe has answered.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe: object | None = None    # the token of the probe in flight, if any

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures counted toward opening (capacity states are not among them)."""
        return self._failures

    def admit(self) -> object | None:
        """Let a call through or raise RerankUnavailable.

        Returns a token to hand back to `record_*`: None for an ordinary call, a fresh object for
        the half-open probe (so a probe from an earlier cycle can never be mistaken for it).
        """
        state = self.state
        if state == CLOSED:
            return None
        if state == HALF_OPEN and self._probe is None:
            self._state = HALF_OPEN
            self._probe = object()
            return self._probe
        wait = max(0.0, self._opened_at + self.cooldown_s - self._clock())
        raise RerankUnavailable(
            f"circuit breaker open after {self._failures} consecutive failed reranks"
            + (f"; next probe in {wait:.1f}s" if state == OPEN else "; a probe is in flight"))

    def record_success(self, token: object | None) -> None:
        """Any success shows the provider works: close, and forget any probe in flight."""
        self._state = CLOSED
        self._failures = 0
        self._probe = None

    def record_failure(self, token: object | None) -> None:
        if token is not None and token is self._probe:
            self._probe = None
            self._trip()
        elif self._state == CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._trip()
        # A straggler admitted before the breaker opened changes nothing.

    def record_abandoned(self, token: object | None) -> None:
        """The call was cancelled (client went away): it proved nothing either way."""
        if token is not None and token is self._probe:
            self._probe = None

    def reset(self) -> None:
        """Close the breaker now (admin action)."""
        self._state = CLOSED
        self._failures = 0
        self._probe = None

    def _trip(self) -> None:
        self._state = OPEN
        self._opened_at = self._clock()
        logger.warning("rerank circuit breaker opened for %.1fs", self.cooldown_s)


@dataclass
class RerankStats:
    """Counters for /metrics. `errors` counts failed attempts (and fast fails) by kind."""

    calls: int = 0             # rerank() invocations
    failures: int = 0          # invocations that raised RerankError
    attempts: int = 0          # calls made to the inner provider
    retries: int = 0           # attempts after the first
    timeouts: int = 0          # attempts cut by the attempt timeout or the deadline
    billed_units: float = 0.0  # as reported by the provider (Cohere search units)
    tokens: int = 0            # as reported by token-billed providers (Voyage, ...)
    documents_sent: int = 0    # documents handed to the provider, counted once per attempt
    slot_waits: int = 0        # attempts that found all RERANK_MAX_CONCURRENCY slots taken
    slot_wait_seconds: float = 0.0  # time those attempts waited: a sign the limit is too low
    capacity: int = 0          # reranks that ended in a capacity state (cold vectors, full slots)
    queries_truncated: int = 0  # query texts cut to RERANK_MAX_QUERY_CHARS
    errors: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {"calls": self.calls, "failures": self.failures, "attempts": self.attempts,
                "retries": self.retries, "timeouts": self.timeouts,
                "billed_units": self.billed_units, "tokens": self.tokens,
                "documents_sent": self.documents_sent, "slot_waits": self.slot_waits,
                "slot_wait_seconds": self.slot_wait_seconds, "capacity": self.capacity,
                "queries_truncated": self.queries_truncated, "errors": dict(self.errors)}


class ResilientReranker:
    """A `Reranker` that adds deadline, retries, a concurrency limit and a breaker to `inner`."""

    def __init__(
        self,
        inner: Reranker,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.pointwise = inner.pointwise
        self.in_process: bool = getattr(inner, "in_process", False)
        self.deadline_s = settings.rerank_deadline_ms / 1000
        self.attempt_timeout_s = settings.rerank_attempt_timeout_ms / 1000
        self.max_retries = settings.rerank_max_retries
        self.max_query_chars = settings.rerank_max_query_chars
        self.breaker = CircuitBreaker(settings.rerank_breaker_failures,
                                      settings.rerank_breaker_cooldown_s, clock)
        self.stats = RerankStats()
        self._slots = asyncio.Semaphore(settings.rerank_max_concurrency)
        self._sleep = sleep
        self._jitter = jitter
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.stats.calls += 1
        if len(query) > self.max_query_chars:
            query = query[: self.max_query_chars]
            self.stats.queries_truncated += 1
        try:
            token = self.breaker.admit()
        except RerankUnavailable as exc:
            self._count_failure(exc)
            raise
        try:
            result = await self._rerank_with_retries(query, documents)
        except RerankError as exc:
            self._count_failure(exc)
            if is_capacity(exc):
                self.stats.capacity += 1
                self.breaker.record_abandoned(token)
            elif is_request_error(exc):
                self.breaker.record_success(token)
            else:
                self.breaker.record_failure(token)
            raise
        except BaseException:
            self.breaker.record_abandoned(token)
            raise
        self.breaker.record_success(token)
        self.stats.billed_units += result.billed_units
        self.stats.tokens += int(result.meta.get("total_tokens", 0) or 0)
        return result

    async def load(self) -> None:
        """Load the provider now (start-up), not on the first search."""
        if isinstance(self.inner, Preloadable):
            await self.inner.load()

    async def aclose(self) -> None:
        await self.inner.aclose()

    # --- internals ----------------------------------------------------------------------------

    async def _rerank_with_retries(self, query: str, documents: Sequence[str]) -> RerankResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        attempt = 0
        while True:
            try:
                result = await self._attempt(query, documents, deadline)
            except RerankError as exc:
                self.stats.errors[error_kind(exc)] += 1
                if isinstance(exc, RerankTimeout):
                    self.stats.timeouts += 1
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                delay = self._delay(exc, attempt)
                remaining = deadline - loop.time()
                if delay >= remaining:
                    logger.info("rerank: not retrying %s: waiting %.3fs would pass the deadline "
                                "(%.3fs left)", error_kind(exc), delay, max(0.0, remaining))
                    raise
                logger.debug("rerank: %s, retry %d in %.3fs", exc, attempt + 1, delay)
                await self._sleep(delay)
                attempt += 1
                self.stats.retries += 1
                continue
            return result

    async def _attempt(self, query: str, documents: Sequence[str], deadline: float) -> RerankResult:
        """One call to the provider; waiting for a slot counts against the deadline only."""
        overall = asyncio.timeout_at(deadline)
        slot_taken = False
        try:
            async with overall:
                await self._take_slot()
                slot_taken = True
                try:
                    self.stats.attempts += 1
                    self.stats.documents_sent += len(documents)
                    async with asyncio.timeout(self.attempt_timeout_s):
                        return await self.inner.rerank(query, documents)
                finally:
                    self._slots.release()
        except TimeoutError:
            if self.in_process:
                raise RerankBusy(
                    f"{self.name}: this proxy's CPU and queues were too busy to rerank within "
                    f"{self.deadline_s * 1000:.0f} ms") from None
            if overall.expired() and not slot_taken:
                raise RerankSaturated(
                    f"{self.name}: every one of the concurrency slots stayed busy until the rerank "
                    f"deadline of {self.deadline_s * 1000:.0f} ms") from None
            if overall.expired():
                raise RerankDeadlineExceeded(
                    f"{self.name}: rerank deadline of {self.deadline_s * 1000:.0f} ms exceeded") from None
            raise RerankTimeout(
                f"{self.name}: attempt timed out after {self.attempt_timeout_s * 1000:.0f} ms",
                retryable=True) from None
        except RerankError:
            raise
        except Exception as exc:  # a bug in a provider must still end as lexical order
            raise RerankError(f"{self.name}: unexpected {type(exc).__name__}: {exc}") from exc

    async def _take_slot(self) -> None:
        """Take a provider slot, counting how long a full set of slots kept this attempt waiting."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        waited_from = time.perf_counter()
        try:
            await self._slots.acquire()
        finally:
            self.stats.slot_waits += 1
            self.stats.slot_wait_seconds += time.perf_counter() - waited_from

    def _delay(self, error: RerankError, attempt: int) -> float:
        """The provider's hint if any, else full jitter over an exponentially growing cap."""
        if error.retry_after is not None:
            return error.retry_after
        cap = min(self._backoff_max_s, self._backoff_base_s * 2.0 ** attempt)
        return self._jitter() * cap

    def _count_failure(self, exc: RerankError) -> None:
        self.stats.failures += 1
        if isinstance(exc, RerankUnavailable):
            self.stats.errors[error_kind(exc)] += 1
