"""The one interface every rerank provider implements.

The search pipeline only ever calls `Reranker.rerank(query, documents)` and gets back one score per
document, aligned with the input order. Providers map their wire format (results sorted by score,
`index` fields, `data` vs `results` keys...) back to input order themselves, so nothing above this
layer has to know which API answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class RerankError(Exception):
    """The provider could not produce scores (network, HTTP status, malformed reply, deadline).

    `retryable` tells the resilience layer whether another attempt may succeed; `retry_after`
    (seconds) is the provider's own hint, when it sent one.
    """

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@dataclass(slots=True)
class RerankResult:
    """Scores aligned with the documents sent (scores[i] belongs to documents[i])."""

    scores: list[float]
    billed_units: float = 0.0          # as reported by the provider (Cohere: search_units), else 0
    provider_calls: int = 1            # HTTP calls (or local batches) it took
    meta: dict[str, Any] = field(default_factory=dict)


class Reranker(Protocol):
    """A provider. `name` and `model` are part of every cache key."""

    name: str
    model: str
    # True when a document's score depends only on (query, document), so scores may be cached
    # per document; False for listwise models, which are cached per whole request.
    pointwise: bool
    # Optional (absent means False): True for a provider that runs in this process, whose running
    # out of time says the proxy is busy rather than that the provider failed (see resilience.py).

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Preloadable(Protocol):
    """A provider with work to do before its first search (the built-in model loads its weights)."""

    async def load(self) -> None: ...
