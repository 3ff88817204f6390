"""Small deterministic rerankers for tests: real objects implementing the Reranker protocol."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from rerank_proxy.scoring.providers.base import RerankError, RerankResult

_WORD = re.compile(r"\w+")


def overlap_score(query: str, text: str) -> float:
    """Share of query words present in the text, with a tiny length tie-breaker."""
    q = set(_WORD.findall(query.lower()))
    t = set(_WORD.findall(text.lower()))
    if not q:
        return 0.0
    return len(q & t) / len(q) + 1.0 / (10 + len(text))


class OverlapReranker:
    """Scores by word overlap; counts what it was asked (calls and documents)."""

    name = "overlap"
    model = "overlap-v1"
    pointwise = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.documents = 0
        self.delay_s = delay_s
        self.fail = False

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.calls += 1
        self.documents += len(documents)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RerankError("overlap reranker told to fail", retryable=True)
        return RerankResult(scores=[overlap_score(query, d) for d in documents], billed_units=1.0)

    async def aclose(self) -> None:
        return None


class RecordingReranker(OverlapReranker):
    """The overlap reranker, keeping every document list it was sent (what a provider would bill)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.sent: list[list[str]] = []

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.sent.append(list(documents))
        return await super().rerank(query, documents)

    def texts(self) -> set[str]:
        """Every distinct text sent so far (thread-safe enough to poll from a test's thread)."""
        return {text for batch in list(self.sent) for text in batch}
