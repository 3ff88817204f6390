"""The score cache and request coalescing in front of the provider: fewer billed calls.

Pointwise providers (a score depends only on the query and the document: the cross-encoders behind
Cohere, TEI and Voyage, and the built-in bi-encoder) are cached per document:
key = (provider, model, normalised query, hash of the document text). A next page, a new filter
or a reindexed-but-unchanged document reuses scores, and only the documents never scored are sent.
Listwise providers are cached per whole request (query + ordered document hashes).

Concurrent requests that need the same (query, document) score share one provider call: the first
registers its call for each missing document, the others await that call and read their score.

Tiers, looked up in this order: an in-process TTL + LRU tier (`local_tier.LocalTier`, bounded by
entries); with several workers, the per-host tier they share (`host_share.HostShare`, LMDB), which
also coalesces misses across workers; and, optionally, a shared tier (Redis) so replicas reuse each
other's scores. The host tier comes before Redis because a read is a memory-mapped lookup, not a
network round trip, and because only it can see what the other workers are computing right now.
A failure of either is a miss, never an error. With Redis, replicas also claim there the scores
they are about to compute (`redis_claims.RedisClaims`), so a score missing on several replicas at
once is computed by one of them and waited for by the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rerank_proxy.scoring.cache.first_of_kind import FirstOfKind
from rerank_proxy.scoring.cache.host_share import HostShare
from rerank_proxy.scoring.cache.local_tier import LocalTier
from rerank_proxy.scoring.cache.redis_claims import claims_for
from rerank_proxy.scoring.cache.redis_tier import ERRORS as SHARED_ERRORS
from rerank_proxy.scoring.providers.base import Reranker, RerankError

log = logging.getLogger(__name__)


class SharedTier(Protocol):
    """A score tier several replicas share (Redis); each of its failures (`SHARED_ERRORS`) is a cache miss."""

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]: ...
    async def set_many(self, items: dict[bytes, float], ttl_s: float) -> None: ...
    async def flush(self) -> int: ...
    async def ping(self) -> bool: ...
    async def aclose(self) -> None: ...


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
    host_hits: int = 0            # documents answered by the per-host tier
    host_waits: int = 0           # documents answered by another worker's provider call (also in coalesced)
    provider_calls: int = 0
    documents_sent: int = 0
    billed_units: float = 0.0
    by_outcome: dict[str, int] = field(default_factory=dict)


def normalise_query(query: str) -> str:
    """Queries that differ only in Unicode form or spacing are the same query."""
    return " ".join(unicodedata.normalize("NFC", query).split())


KEY_BYTES = 16       # a score's key in every tier (doc_keys)
_KEY_HEAD = 6        # of which the part that names the query


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class ScoreCache:
    """Scores for (query, documents) from the caches, coalesced in-flight work, or the provider."""

    def __init__(self, reranker: Reranker, *, max_entries: int, ttl_s: float,
                 shared: SharedTier | None = None, shared_timeout_s: float = 0.05,
                 host: HostShare | None = None, timer: Callable[[], float] = time.monotonic) -> None:
        self.reranker = reranker
        self.ttl_s = ttl_s
        self.local: LocalTier[bytes, float] = LocalTier(max(max_entries, 1), ttl_s, timer)
        # Listwise scores are kept per whole request; a cache serves one provider, so only one of
        # the two tiers is ever filled.
        self.local_listwise: LocalTier[bytes, tuple[float, ...]] = LocalTier(max(max_entries, 1), ttl_s, timer)
        self.enabled = max_entries > 0
        self.shared = shared
        self.shared_timeout_s = shared_timeout_s
        self.claims = claims_for(shared, shared_timeout_s)  # replicas claim the misses they compute
        self.host = host if self.enabled else None
        self.stats = CacheStats()
        self._shared_logged = FirstOfKind()
        # key -> (the provider call computing it, its position in that call's documents)
        self._inflight: dict[bytes, tuple[asyncio.Future[list[float]], int]] = {}
        self._prefix = f"{reranker.name}\x1f{reranker.model}\x1f".encode()
        self.flushes = 0  # answers built from earlier scores (search.answer_memo) are retired by it

    def __len__(self) -> int:
        """Entries held in process (the shared tier is not counted)."""
        return len(self.local) + len(self.local_listwise)

    def flush(self) -> int:
        count = len(self)
        self.flushes += 1
        self.local.clear()
        self.local_listwise.clear()
        return count

    def doc_keys(self, query: str, texts: Sequence[str], digests: Sequence[bytes] | None = None) -> list[bytes]:
        """One 16-byte key per text over provider, model, query and the text's digest (`text_hash`).

        A key is 6 bytes of the (provider, model, query) digest, then 10 bytes of the digest of that
        and the text's. The shared head keeps one search's keys side by side in the ordered host
        tier (host_tier.py), so writing them touches a few pages instead of one per key. The
        shared prefix is hashed once; per text only its 16-byte digest is added, so a caller that
        knows the digests already (`search.hit_text.VersionedTexts`, by document version) saves
        hashing the texts themselves. The normalised query cannot end in the separator, so
        distinct pairs never collide by concatenation.
        """
        shared = self._prefix + query.encode("utf-8") + b"\x1f"
        head = hashlib.blake2b(shared, digest_size=_KEY_HEAD).digest()
        base = hashlib.blake2b(shared, digest_size=KEY_BYTES - _KEY_HEAD)
        keys = []
        for digest_of_text in digests if digests is not None else map(text_hash, texts):
            digest = base.copy()
            digest.update(digest_of_text)
            keys.append(head + digest.digest())
        return keys

    async def scores(self, query: str, texts: Sequence[str], digests: Sequence[bytes] | None = None) -> ScoreOutcome:
        """Scores of `texts` for `query`; `digests` (their `text_hash`es), when known, save hashing."""
        query = normalise_query(query)
        if not self.reranker.pointwise:
            return await self._listwise(query, texts)
        keys = self.doc_keys(query, texts, digests)
        result: list[float | None] = self.local.get_many(keys) if self.enabled else [None] * len(texts)
        outcome = ScoreOutcome(scores=[])
        missing = [i for i, v in enumerate(result) if v is None]
        outcome.cached = len(texts) - len(missing)
        # Without a shared tier the host tier is read by the claim (`_fill`), which looks up the
        # stored scores in its own transaction: a separate read first would look up each key twice.
        if missing and self.host is not None and self.shared is not None:
            fetched = self._take(self.host.get_many([keys[i] for i in missing]), missing, keys, result)
            outcome.cached += len(fetched)
            self.stats.host_hits += len(fetched)
            missing = [i for i in missing if result[i] is None]
        if missing and self.shared is not None:
            fetched = self._take(await self._shared_get([keys[i] for i in missing]), missing, keys, result)
            if fetched:
                if self.host is not None:
                    self.host.store(fetched)
                outcome.cached += len(fetched)
                self.stats.shared_hits += len(fetched)
                missing = [i for i in missing if result[i] is None]
        if missing:
            await self._fill(query, texts, keys, missing, result, outcome)
        outcome.scores = [float(v) for v in result if v is not None]
        if len(outcome.scores) != len(texts):
            raise RerankError("the provider left documents without a score")
        self._count(outcome)
        return outcome

    async def _fill(self, query: str, texts: Sequence[str], keys: list[bytes], missing: list[int],
                    result: list[float | None], outcome: ScoreOutcome) -> None:
        """Coalesce: wait on provider calls already in flight; claim the rest for one call.

        One future per provider call (not per document): waiters read their document's score
        from the call's list by position.
        """
        inflight = self._inflight
        waiting: dict[asyncio.Future[list[float]], list[tuple[int, int]]] = {}
        duplicates: list[tuple[int, int]] = []
        missing_keys = [keys[i] for i in missing]
        claimed_at = dict(zip(missing_keys, range(len(missing))))
        if len(claimed_at) == len(missing) and inflight.keys().isdisjoint(claimed_at):
            claimed = missing  # the usual case: nothing shared, nothing repeated
        else:
            claimed, claimed_at = [], {}
            for i, key in zip(missing, missing_keys):
                entry = inflight.get(key)
                if entry is not None:
                    waiting.setdefault(entry[0], []).append((i, entry[1]))
                elif key in claimed_at:
                    duplicates.append((i, claimed_at[key]))
                else:
                    claimed_at[key] = len(claimed)
                    claimed.append(i)
        if claimed:
            call: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
            inflight.update(zip(claimed_at, zip(itertools.repeat(call), claimed_at.values())))
            scores = await self._call_provider(query, texts, keys, claimed, call, outcome)
            for i, score in zip(claimed, scores):
                result[i] = score
            for i, position in duplicates:
                result[i] = scores[position]
                outcome.coalesced += 1
        for future, slots in waiting.items():
            scores = await asyncio.shield(future)
            for i, position in slots:
                result[i] = scores[position]
            outcome.coalesced += len(slots)

    def _take(self, found: list[float | None], missing: list[int], keys: list[bytes],
              result: list[float | None]) -> list[tuple[bytes, float]]:
        """Fill `result` with what a tier found for the `missing` positions, and keep it in process."""
        fetched = []
        for i, value in zip(missing, found):
            if value is not None:
                result[i] = value
                fetched.append((keys[i], value))
        if fetched and self.enabled:
            self.local.set_many(fetched)
        return fetched

    async def _call_provider(self, query: str, texts: Sequence[str], keys: list[bytes], claimed: list[int],
                             call: asyncio.Future[list[float]], outcome: ScoreOutcome) -> list[float]:
        fresh: list[tuple[bytes, float]] = []

        async def compute(positions: list[int]) -> list[float]:
            if self.host is None:
                return await self._compute(query, texts, keys, positions, outcome, fresh)
            return await self._across_workers(query, texts, keys, positions, outcome, fresh)

        try:
            if self.claims is None:
                scores = await compute(claimed)
            else:
                scores = await self._across_replicas(keys, claimed, compute, outcome, fresh)
        except BaseException as exc:
            # Waiters must not inherit this request's cancellation (its client hung up): they get
            # a provider error instead, and fall back like any other failed rerank.
            shared_exc = exc if isinstance(exc, Exception) else RerankError("the coalesced call was cancelled")
            if not call.done():
                call.set_exception(shared_exc)
                call.exception()  # mark retrieved: there may be no waiter
            raise
        finally:
            for i in claimed:
                self._inflight.pop(keys[i], None)
        if not call.done():
            call.set_result(scores)
        if self.shared is not None and fresh:
            await self._shared_set(dict(fresh))
        return scores

    async def _across_replicas(self, keys: list[bytes], claimed: list[int],
                               compute: Callable[[list[int]], Awaitable[list[float]]], outcome: ScoreOutcome,
                               fresh: list[tuple[bytes, float]]) -> list[float]:
        """`compute` for the scores this replica claims in Redis; those another replica claimed are
        waited for there meanwhile, and computed here only if they do not come (redis_claims.py).
        Its own scores are written as soon as they are computed: another replica may wait on them."""
        claims = self.claims
        assert claims is not None
        won = await claims.claim([keys[i] for i in claimed])
        mine = [i for i, w in zip(claimed, won) if w]
        theirs = [i for i, w in zip(claimed, won) if not w]
        result: dict[int, float] = {}

        async def compute_mine() -> None:
            if not mine:
                return
            try:
                result.update(zip(mine, await compute(mine)))
            except BaseException:
                await claims.release([keys[i] for i in mine])  # waiters stop waiting and compute
                raise
            await self._write_fresh(fresh)  # the claims stay until their lease: a late miss waits, finds

        async def wait_theirs() -> list[int]:
            if not theirs:
                return []
            found = await claims.wait([keys[i] for i in theirs], self._shared_get)
            got = [(i, v) for i, v in zip(theirs, found) if v is not None]
            result.update(got)
            self._keep([(keys[i], v) for i, v in got])
            outcome.coalesced += len(got)
            self.stats.shared_hits += len(got)
            return [i for i, v in zip(theirs, found) if v is None]

        mine_done, late = await asyncio.gather(compute_mine(), wait_theirs(), return_exceptions=True)
        if isinstance(mine_done, BaseException):
            raise mine_done
        if isinstance(late, BaseException):
            raise late
        if late:  # the replica that claimed them did not deliver in time: pay for them here
            result.update(zip(late, await compute(late)))
            await self._write_fresh(fresh)
        return [result[i] for i in claimed]

    async def _write_fresh(self, fresh: list[tuple[bytes, float]]) -> None:
        """Scores computed so far to Redis now (replicas may be waiting on them), once."""
        if fresh:
            await self._shared_set(dict(fresh))
            fresh.clear()

    def _keep(self, items: list[tuple[bytes, float]]) -> None:
        """Scores read from Redis, kept in process and on the host as every tier's find is."""
        if items and self.enabled:
            self.local.set_many(items)
        if items and self.host is not None:
            self.host.store(items)

    async def _across_workers(self, query: str, texts: Sequence[str], keys: list[bytes], claimed: list[int],
                              outcome: ScoreOutcome, fresh: list[tuple[bytes, float]]) -> list[float]:
        """The provider's scores for `claimed`, except those another worker of this host computes."""
        assert self.host is not None

        async def compute(positions: list[int]) -> list[float]:
            return await self._compute(query, texts, keys, [claimed[p] for p in positions], outcome, fresh)

        resolved = await self.host.resolve([keys[i] for i in claimed], compute)
        if resolved.from_host:
            self.local.set_many([(keys[claimed[p]], resolved.scores[p]) for p in resolved.from_host])
        outcome.cached += resolved.found
        outcome.coalesced += resolved.waited
        self.stats.host_hits += resolved.found
        self.stats.host_waits += resolved.waited
        return resolved.scores

    async def _compute(self, query: str, texts: Sequence[str], keys: list[bytes], positions: list[int],
                       outcome: ScoreOutcome, fresh: list[tuple[bytes, float]]) -> list[float]:
        """One provider call for `positions`; its scores go to the in-process and host tiers at once
        (other workers may be waiting) and into `fresh`, which the caller sends on to Redis."""
        reply = await self.reranker.rerank(query, [texts[i] for i in positions])
        scores = reply.scores
        items = [(keys[i], score) for i, score in zip(positions, scores)]
        if self.enabled:
            self.local.set_many(items)
        if self.host is not None:
            self.host.store(items)
        fresh.extend(items)
        outcome.sent += len(positions)
        outcome.provider_calls += reply.provider_calls
        outcome.billed_units += reply.billed_units
        return scores

    async def _listwise(self, query: str, texts: Sequence[str]) -> ScoreOutcome:
        digest = hashlib.blake2b(self._prefix + query.encode("utf-8"), digest_size=16)
        for text in texts:
            digest.update(text_hash(text))
        key = b"L" + digest.digest()
        cached = self.local_listwise.get(key) if self.enabled else None
        if cached is not None:
            outcome = ScoreOutcome(scores=list(cached), cached=len(texts))
        else:
            reply = await self.reranker.rerank(query, texts)
            if self.enabled:
                self.local_listwise[key] = tuple(reply.scores)
            outcome = ScoreOutcome(scores=list(reply.scores), sent=len(texts),
                                   provider_calls=reply.provider_calls, billed_units=reply.billed_units)
        self._count(outcome)
        return outcome

    async def _shared_get(self, keys: list[bytes]) -> list[float | None]:
        if self.shared is None:
            return [None] * len(keys)
        try:
            return await asyncio.wait_for(self.shared.get_many(keys), self.shared_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the shared tier is a cache: any failure is a miss
            self._shared_failed("get", exc)
            return [None] * len(keys)

    async def _shared_set(self, items: dict[bytes, float]) -> None:
        if self.shared is None:
            return
        try:
            await asyncio.wait_for(self.shared.set_many(items, self.ttl_s), self.shared_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the shared tier is a cache: any failure is a miss
            self._shared_failed("set", exc)

    def _shared_failed(self, operation: str, exc: Exception) -> None:
        """Counted always; logged once per kind, with its traceback when it is not Redis' own trouble
        (a bug would otherwise be a silent miss forever), and once only for outages and timeouts."""
        self.stats.shared_errors += 1
        if not self._shared_logged.first(exc):
            return
        expected = isinstance(exc, SHARED_ERRORS)
        log.warning("shared score tier %s failed (%s: %s); treated as a cache miss%s", operation, type(exc).__name__,
                    exc, "" if expected else ", and this kind of failure is unexpected",
                    exc_info=None if expected else exc)

    def count_reused(self, documents: int) -> None:
        """A search answered whole from an earlier answer (search.answer_memo): its documents'
        scores were not looked up again, but for the hit ratio they are cache hits."""
        self._count(ScoreOutcome(scores=[], cached=documents))

    def _count(self, outcome: ScoreOutcome) -> None:
        stats = self.stats
        stats.hits += outcome.cached
        stats.coalesced += outcome.coalesced
        stats.misses += outcome.sent
        stats.provider_calls += outcome.provider_calls
        stats.documents_sent += outcome.sent
        stats.billed_units += outcome.billed_units
        stats.by_outcome[outcome.status] = stats.by_outcome.get(outcome.status, 0) + 1
