"""The score cache and request coalescing in front of the provider: fewer billed calls.

Pointwise providers (a score depends only on the query and the document, which is what the
cross-encoders behind Cohere, TEI, Voyage and the built-in model do) are cached per document:
key = (provider, model, normalised query, hash of the document text). A next page, a new filter
or a reindexed-but-unchanged document reuses scores, and only the documents never scored are sent.
Listwise providers are cached per whole request (query + ordered document hashes).

Concurrent requests that need the same (query, document) score share one provider call: the first
registers a future per missing document, the others await it.

Tiers: an in-process TTL cache (cachetools, bounded by entries) and, optionally, a shared tier
(Redis) so replicas reuse each other's scores; a shared-tier failure is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from cachetools import TTLCache

from ..rerank.base import RerankError, Reranker


class SharedTier(Protocol):
    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]: ...
    async def set_many(self, items: dict[bytes, float], ttl_s: float) -> None: ...


@dataclass(slots=True)
class ScoreOutcome:
    scores: list[float]
    cached: int = 0               # documents answered from a cache tier
    coalesced: int = 0            # documents answered by another request's in-flight call
    sent: int = 0                 # documents sent to the provider by this request
    provider_calls: int = 0
    billed_units: float = 0.0

    @property
    def status(self) -> str:
        """hit (no provider work), miss (all sent) or partial."""
        if self.sent == 0:
            return "hit"
        return "miss" if self.sent == len(self.scores) else "partial"


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    shared_hits: int = 0
    shared_errors: int = 0
    provider_calls: int = 0
    documents_sent: int = 0
    billed_units: float = 0.0
    by_outcome: dict[str, int] = field(default_factory=dict)


def normalise_query(query: str) -> str:
    """Queries that differ only in Unicode form or spacing are the same query."""
    return " ".join(unicodedata.normalize("NFC", query).split())


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class ScoreCache:
    """Scores for (query, documents) from the caches, coalesced in-flight work, or the provider."""

    def __init__(self, reranker: Reranker, *, max_entries: int, ttl_s: float,
                 shared: SharedTier | None = None, shared_timeout_s: float = 0.05,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.reranker = reranker
        self.ttl_s = ttl_s
        self.local: TTLCache[bytes, object] = TTLCache(maxsize=max(max_entries, 1), ttl=ttl_s, timer=timer)
        self.enabled = max_entries > 0
        self.shared = shared
        self.shared_timeout_s = shared_timeout_s
        self.stats = CacheStats()
        self._inflight: dict[bytes, asyncio.Future[float]] = {}
        self._prefix = f"{reranker.name}\x1f{reranker.model}\x1f".encode()

    def flush(self) -> int:
        count = len(self.local)
        self.local.clear()
        return count

    def _doc_key(self, query: str, text: str) -> bytes:
        """One hash over provider, model, query and text (the query cannot end in the separator
        after normalisation, so distinct pairs never collide by concatenation)."""
        return hashlib.blake2b(self._prefix + query.encode("utf-8") + b"\x1f" + text.encode("utf-8"),
                               digest_size=16).digest()

    async def scores(self, query: str, texts: Sequence[str]) -> ScoreOutcome:
        query = normalise_query(query)
        if not self.reranker.pointwise:
            return await self._listwise(query, texts)
        keys = [self._doc_key(query, t) for t in texts]
        result: list[float | None] = [None] * len(texts)
        outcome = ScoreOutcome(scores=[])
        if self.enabled:
            for i, key in enumerate(keys):
                value = self.local.get(key)
                if value is not None:
                    result[i] = value  # type: ignore[assignment]
                    outcome.cached += 1
        missing = [i for i, v in enumerate(result) if v is None]
        if missing and self.shared is not None:
            found = await self._shared_get([keys[i] for i in missing])
            for i, value in zip(missing, found):
                if value is not None:
                    result[i] = value
                    self.local[keys[i]] = value
                    outcome.cached += 1
                    self.stats.shared_hits += 1
            missing = [i for i in missing if result[i] is None]

        # Coalesce: wait on work already in flight; claim the rest for one provider call.
        waiting: list[tuple[int, asyncio.Future[float]]] = []
        claimed: list[int] = []
        claimed_keys: set[bytes] = set()
        loop = asyncio.get_running_loop()
        for i in missing:
            future = self._inflight.get(keys[i])
            if future is not None:
                waiting.append((i, future))
            elif keys[i] in claimed_keys:
                waiting.append((i, self._inflight[keys[i]]))
            else:
                self._inflight[keys[i]] = loop.create_future()
                claimed.append(i)
                claimed_keys.add(keys[i])
        if claimed:
            await self._call_provider(query, texts, keys, claimed, result, outcome)
        for i, future in waiting:
            result[i] = await asyncio.shield(future)
            outcome.coalesced += 1
        outcome.scores = [float(v) for v in result]  # type: ignore[arg-type]
        self._count(outcome)
        return outcome

    async def _call_provider(self, query: str, texts: Sequence[str], keys: list[bytes],
                             claimed: list[int], result: list[float | None], outcome: ScoreOutcome) -> None:
        futures = [self._inflight[keys[i]] for i in claimed]
        try:
            reply = await self.reranker.rerank(query, [texts[i] for i in claimed])
        except BaseException as exc:
            # Waiters must not inherit this request's cancellation (its client hung up): they get
            # a provider error instead, and fall back like any other failed rerank.
            shared_exc = exc if isinstance(exc, Exception) else RerankError("the coalesced call was cancelled")
            for future in futures:
                if not future.done():
                    future.set_exception(shared_exc)
                    future.exception()  # mark retrieved: there may be no waiter
            raise
        finally:
            for i in claimed:
                self._inflight.pop(keys[i], None)
        fresh: dict[bytes, float] = {}
        for i, score, future in zip(claimed, reply.scores, futures):
            result[i] = score
            fresh[keys[i]] = score
            if not future.done():
                future.set_result(score)
        if self.enabled:
            self.local.update(fresh)
        outcome.sent += len(claimed)
        outcome.provider_calls += reply.provider_calls
        outcome.billed_units += reply.billed_units
        if self.shared is not None:
            await self._shared_set(fresh)

    async def _listwise(self, query: str, texts: Sequence[str]) -> ScoreOutcome:
        digest = hashlib.blake2b(self._prefix + query.encode("utf-8"), digest_size=16)
        for text in texts:
            digest.update(text_hash(text))
        key = b"L" + digest.digest()
        cached = self.local.get(key) if self.enabled else None
        if cached is not None:
            outcome = ScoreOutcome(scores=list(cached), cached=len(texts))  # type: ignore[arg-type]
        else:
            reply = await self.reranker.rerank(query, texts)
            if self.enabled:
                self.local[key] = tuple(reply.scores)
            outcome = ScoreOutcome(scores=list(reply.scores), sent=len(texts),
                                   provider_calls=reply.provider_calls, billed_units=reply.billed_units)
        self._count(outcome)
        return outcome

    async def _shared_get(self, keys: list[bytes]) -> list[float | None]:
        try:
            return await asyncio.wait_for(self.shared.get_many(keys), self.shared_timeout_s)  # type: ignore[union-attr]
        except Exception:
            self.stats.shared_errors += 1
            return [None] * len(keys)

    async def _shared_set(self, items: dict[bytes, float]) -> None:
        try:
            await asyncio.wait_for(self.shared.set_many(items, self.ttl_s), self.shared_timeout_s)  # type: ignore[union-attr]
        except Exception:
            self.stats.shared_errors += 1

    def _count(self, outcome: ScoreOutcome) -> None:
        stats = self.stats
        stats.hits += outcome.cached
        stats.coalesced += outcome.coalesced
        stats.misses += outcome.sent
        stats.provider_calls += outcome.provider_calls
        stats.documents_sent += outcome.sent
        stats.billed_units += outcome.billed_units
        stats.by_outcome[outcome.status] = stats.by_outcome.get(outcome.status, 0) + 1
