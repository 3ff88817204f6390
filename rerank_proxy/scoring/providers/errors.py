"""The kinds of `RerankError`, so the resilience layer and metrics can tell failures apart.

Providers raise these subclasses; anything above `rerank/` only needs to catch `RerankError`.
Each class has a short `kind`, used as the label of the error counters.
"""

from __future__ import annotations

from rerank_proxy.scoring.providers.base import RerankError

# Statuses that say "this request is wrong", not "the provider is unwell": they do not count
# against the circuit breaker (the provider answered, and answered sensibly).
REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})


class RerankTimeout(RerankError):
    """One attempt ran out of time (the HTTP client's timeout or the per-attempt limit)."""

    kind = "timeout"


class RerankDeadlineExceeded(RerankTimeout):
    """The whole rerank (slot wait, attempts, back-off) ran out of time. Never retried."""

    kind = "deadline"


class RerankConnectionError(RerankError):
    """The connection failed: refused, reset, or closed before the whole response arrived."""

    kind = "connection"


class RerankStatusError(RerankError):
    """The provider answered with a non-2xx status."""

    kind = "status"


class RerankResponseError(RerankError):
    """A 2xx reply we cannot use: not JSON, wrong shape, bad or missing indexes, bad scores."""

    kind = "bad_response"


class RerankUnavailable(RerankError):
    """The circuit breaker is open: the call failed fast without reaching the provider."""

    kind = "unavailable"


class RerankCapacity(RerankError):
    """The provider is healthy but cannot answer this search in time (work is queued, slots full).

    A capacity state, not a failure: the breaker neither counts it nor treats it as a success.
    `reason` is the short text searches report for it (X-Rerank-Reason).
    """

    kind = "capacity"
    reason = "capacity"


class RerankVectorsCold(RerankCapacity):
    """Some documents have no stored vector yet; they are queued for the background embedder.
    `cold_texts`: those documents' texts, so a search can still rerank the rest of its window."""

    kind = "vectors_cold"
    reason = "vectors_cold"

    def __init__(self, message: str, cold_texts: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.cold_texts = cold_texts


class RerankSaturated(RerankDeadlineExceeded, RerankCapacity):
    """The deadline passed while every RERANK_MAX_CONCURRENCY slot was taken by other searches."""

    kind = "saturated"
    reason = "saturated"


class RerankBusy(RerankDeadlineExceeded, RerankCapacity):
    """An in-process provider (the built-in model) ran out of time waiting for this proxy's own CPU
    or queues: the proxy is busy, the provider has not failed."""

    kind = "busy"
    reason = "busy"


def error_kind(exc: RerankError) -> str:
    """A short label for counters: `http_429`, `timeout`, `connection`, `bad_response`, ..."""
    if exc.status is not None:
        return f"http_{exc.status}"
    return getattr(exc, "kind", "error")


def is_request_error(exc: RerankError) -> bool:
    """True when the provider rejected this particular request (it is alive and answering)."""
    return exc.status in REQUEST_ERROR_STATUSES


def is_capacity(exc: RerankError) -> bool:
    """True for capacity states (cold vectors, full slots): they say nothing about provider health."""
    return isinstance(exc, RerankCapacity)


def reason_of(exc: RerankError) -> str:
    """The fallback reason a search reports: the short `reason` when the kind has one, else the
    class name (what the pipeline has always reported)."""
    return getattr(exc, "reason", None) or type(exc).__name__


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx may succeed on another attempt; 501 (not implemented) never will."""
    return status in (408, 429) or (status >= 500 and status != 501)
