"""The score cache: per-document reuse, coalescing, TTL, flush, and the shared Redis tier."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import httpx
import pytest

from rerank_proxy.scoring.cache.local_tier import LocalTier
from rerank_proxy.scoring.cache.redis_tier import RedisTier
from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.scoring.providers.base import RerankError, RerankResult
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker


class GatedReranker(OverlapReranker):
    """Holds every call until the test opens the gate: coalescing without timing guesses.

    `queries` lists the calls that reached the provider, in order; `until_entered(n)` returns once
    n calls have (or fails after a deadline)."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []
        self.gate = asyncio.Event()
        self._arrived = asyncio.Event()

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.queries.append(query)
        self._arrived.set()
        await self.gate.wait()
        return await super().rerank(query, documents)

    async def until_entered(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.queries) < count:
                self._arrived.clear()
                await self._arrived.wait()


SENTINEL = "sentinel query"


async def waiters_parked(cache: ScoreCache, reranker: GatedReranker) -> asyncio.Task:
    """Return once every request started before has reached its wait on an in-flight call.

    A request for another query is started last and awaited until it reaches the provider. Tasks
    take their steps in the order they were created, and up to that point its path and a waiter's
    are the same (look up the tiers, then the in-flight calls): so when it calls the provider,
    each earlier request has found the call it shares and waits on it. Returns the sentinel's task.
    """
    sentinel = asyncio.create_task(cache.scores(SENTINEL, ["sentinel document"]))
    await reranker.until_entered(len(reranker.queries) + 1)
    assert reranker.queries[-1] == SENTINEL, reranker.queries
    return sentinel


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


DOCS = ["jet engine noise", "wing flutter", "boundary layer", "engine inlet"]


async def test_overlapping_candidates_send_only_new_documents():
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    first = await cache.scores("jet engine", DOCS[:3])
    assert (reranker.calls, reranker.documents, first.status) == (1, 3, "miss")
    second = await cache.scores("jet engine", DOCS[1:])          # next page / new filter: 2 known, 1 new
    assert (reranker.calls, reranker.documents, second.status) == (2, 4, "partial")
    third = await cache.scores("  jet   engine ", list(reversed(DOCS)))  # same query, spacing normalised
    assert (reranker.calls, third.status) == (2, "hit")
    assert third.scores == list(reversed((await cache.scores("jet engine", DOCS)).scores))


async def test_changed_text_is_a_miss():
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    await cache.scores("jet", ["jet engine"])
    outcome = await cache.scores("jet", ["jet engine (revised)"])
    assert outcome.status == "miss"
    assert reranker.calls == 2


async def test_ttl_expiry():
    clock = FakeClock()
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=30, timer=clock)
    await cache.scores("jet", DOCS)
    clock.now += 29
    assert (await cache.scores("jet", DOCS)).status == "hit"
    clock.now += 2
    assert (await cache.scores("jet", DOCS)).status == "miss"
    assert reranker.calls == 2


async def test_size_bound_holds():
    cache = ScoreCache(OverlapReranker(), max_entries=10, ttl_s=60)
    await cache.scores("q", [f"doc {i}" for i in range(50)])
    assert len(cache.local) == 10


async def test_concurrent_identical_work_makes_one_call():
    reranker = GatedReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    first = asyncio.create_task(cache.scores("jet engine", DOCS))
    await reranker.until_entered(1)
    second = asyncio.create_task(cache.scores("jet engine", DOCS))
    third = asyncio.create_task(cache.scores("jet engine", DOCS[:2]))
    sentinel = await waiters_parked(cache, reranker)
    reranker.gate.set()
    a, b, c, _ = await asyncio.gather(first, second, third, sentinel)
    assert reranker.queries == ["jet engine", SENTINEL]     # one provider call for the three requests
    assert reranker.documents == len(DOCS) + 1
    assert a.scores == b.scores
    assert c.scores == a.scores[:2]
    assert (a.status, b.coalesced, c.coalesced) == ("miss", len(DOCS), 2)


async def test_a_failed_call_fails_its_waiters_and_is_not_cached():
    reranker = GatedReranker()
    reranker.fail = True
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    first = asyncio.create_task(cache.scores("q", DOCS))
    await reranker.until_entered(1)
    second = asyncio.create_task(cache.scores("q", DOCS))
    sentinel = await waiters_parked(cache, reranker)
    reranker.gate.set()
    for task in (first, second, sentinel):
        with pytest.raises(RerankError):
            await task
    assert reranker.queries == ["q", SENTINEL]            # the waiter got the shared call's error
    reranker.fail = False
    assert (await cache.scores("q", DOCS)).status == "miss"


async def test_flush():
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    await cache.scores("q", DOCS)
    assert cache.flush() == len(DOCS)
    assert (await cache.scores("q", DOCS)).status == "miss"


def test_local_tier_keeps_ttlcache_rules():
    """TTL from the last write, reads do not extend it, least recently used evicted, len counts live."""
    clock = FakeClock()
    tier: LocalTier[bytes, float] = LocalTier(3, 10, clock)
    tier.set_many([(b"a", 1.0), (b"b", 2.0), (b"c", 3.0)])
    assert tier.get_many([b"a", b"x"]) == [1.0, None]         # a is now the most recently used
    tier[b"d"] = 4.0                                            # full: b (least recently used) goes
    assert tier.get_many([b"a", b"b", b"c", b"d"]) == [1.0, None, 3.0, 4.0]
    assert len(tier) == 3
    clock.now += 5
    tier[b"c"] = 30.0                                           # rewritten: lives 10 s from now
    clock.now += 5                                              # a and d expire, reads did not extend them
    assert tier.get_many([b"a", b"c", b"d"]) == [None, 30.0, None]
    assert len(tier) == 1
    assert b"c" in tier
    assert b"a" not in tier
    clock.now += 10
    assert len(tier) == 0
    assert tier.get(b"c") is None
    tier[b"e"] = 5.0
    tier.clear()
    assert len(tier) == 0


def test_local_tier_matches_cachetools_ttlcache():
    """Random reads, writes and clock steps: same answers and sizes as cachetools' TTLCache."""
    import random

    from cachetools import TTLCache

    rng = random.Random(7)
    clock = FakeClock()
    ours: LocalTier[int, float] = LocalTier(20, 30, clock)
    reference: TTLCache[int, float] = TTLCache(maxsize=20, ttl=30, timer=clock)
    for _ in range(5000):
        keys = [rng.randrange(40) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.5:
            items = [(k, rng.random()) for k in keys]
            ours.set_many(items)
            for k, v in items:
                reference[k] = v
        else:
            assert ours.get_many(keys) == [reference.get(k) for k in keys]
        clock.now += rng.choice([0, 0, 1, 3])
        assert len(ours) == len(reference)


def test_document_keys_are_stable():
    """Keys are shared with other replicas through Redis: their derivation must not drift."""
    cache = ScoreCache(OverlapReranker(), max_entries=10, ttl_s=60)
    text_digest = hashlib.blake2b(b"wing flutter", digest_size=16).digest()
    query = b"overlap\x1foverlap-v1\x1fjet\x1f"
    expected = (hashlib.blake2b(query, digest_size=6).digest()
                + hashlib.blake2b(query + text_digest, digest_size=10).digest())
    assert cache.doc_keys("jet", ["wing flutter"]) == [expected]
    assert cache.doc_keys("jet", ["ignored"], [text_digest]) == [expected]   # digests known: texts unread
    # one query's keys share their head (side by side in the host tier), another query's do not
    keys = cache.doc_keys("jet", ["a", "b"]) + cache.doc_keys("wing", ["a"])
    assert keys[0][:6] == keys[1][:6] != keys[2][:6]
    assert len(set(keys)) == 3


async def test_repeated_documents_in_one_request_make_one_score():
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=0, ttl_s=60)
    outcome = await cache.scores("jet", ["jet engine", "wing", "jet engine"])
    assert reranker.documents == 2
    assert outcome.scores[0] == outcome.scores[2]
    assert outcome.coalesced == 1


async def test_waiters_on_several_calls_get_their_own_scores():
    """A request overlapping two in-flight calls reads each document's score from the right call."""
    reranker = GatedReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    first = asyncio.create_task(cache.scores("jet engine", DOCS[:2]))
    second = asyncio.create_task(cache.scores("jet engine", DOCS[2:]))
    await reranker.until_entered(2)
    # the third claims only "new doc": when that call reaches the provider, it already waits on both
    third = asyncio.create_task(cache.scores("jet engine", [*reversed(DOCS), "new doc"]))
    await reranker.until_entered(3)
    reranker.gate.set()
    a, b, c = await asyncio.gather(first, second, third)
    assert reranker.calls == 3
    assert reranker.documents == len(DOCS) + 1
    assert c.scores[:4] == list(reversed(a.scores + b.scores))
    assert c.coalesced == len(DOCS)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call():
    reranker = GatedReranker()
    cache = ScoreCache(reranker, max_entries=1000, ttl_s=60)
    first = asyncio.create_task(cache.scores("q", DOCS))
    await reranker.until_entered(1)
    second = asyncio.create_task(cache.scores("q", DOCS))
    third = asyncio.create_task(cache.scores("q", DOCS))
    sentinel = await waiters_parked(cache, reranker)
    second.cancel()
    reranker.gate.set()
    assert (await first).status == "miss"
    with pytest.raises(asyncio.CancelledError):
        await second
    kept = await third                                    # the other waiter still gets the scores
    assert kept.coalesced == len(DOCS)
    assert kept.scores == (await first).scores
    await sentinel
    assert reranker.queries == ["q", SENTINEL]


async def test_replicas_share_scores_through_redis(redis_server):
    shared_a, shared_b = RedisTier(redis_server.url, 0.5), RedisTier(redis_server.url, 0.5)
    reranker_a, reranker_b = OverlapReranker(), OverlapReranker()
    replica_a = ScoreCache(reranker_a, max_entries=1000, ttl_s=60, shared=shared_a, shared_timeout_s=0.5)
    replica_b = ScoreCache(reranker_b, max_entries=1000, ttl_s=60, shared=shared_b, shared_timeout_s=0.5)
    a = await replica_a.scores("jet engine", DOCS)
    b = await replica_b.scores("jet engine", DOCS)
    assert reranker_b.calls == 0
    assert b.status == "hit"
    assert b.scores == a.scores
    assert replica_b.stats.shared_hits == len(DOCS)
    assert await shared_a.flush() == len(DOCS)
    await shared_a.aclose()
    await shared_b.aclose()


async def test_redis_down_is_a_miss_not_an_error(redis_server):
    shared = RedisTier(redis_server.url, 0.2)
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=0, ttl_s=60, shared=shared, shared_timeout_s=0.2)
    await cache.scores("q", DOCS)
    redis_server.stop()
    outcome = await cache.scores("q", DOCS)           # Redis gone: computed again, no exception
    assert outcome.status == "miss"
    assert cache.stats.shared_errors >= 1
    redis_server.start()                               # same port: the client reconnects by itself
    await cache.scores("q2", DOCS)
    again = await cache.scores("q2", DOCS)
    assert again.status == "hit"
    assert cache.stats.shared_hits == len(DOCS)
    await shared.aclose()


def test_proxy_cached_response_equals_uncached_and_admin_flush(engine, index_name, redis_server):
    load_corpus(engine.url, index_name)
    settings = proxy_settings(engine.url, ADMIN_TOKEN="admin-secret-1", REDIS_URL=redis_server.url,
                              REDIS_TIMEOUT_MS="500")
    reranker = OverlapReranker()
    from rerank_proxy.runtime import build_shared_cache

    with run_proxy(settings, reranker=reranker, shared_cache=build_shared_cache(settings)) as running:
        body = {"query": {"match": {"body": "jet engine noise"}}, "size": 5}
        first = httpx.post(f"{running.url}/{index_name}/_search", json=body)
        second = httpx.post(f"{running.url}/{index_name}/_search", json=body)
        assert first.headers["x-rerank-cache"] == "miss"
        assert second.headers["x-rerank-cache"] == "hit"
        a, b = first.json(), second.json()
        a.pop("took"), b.pop("took")
        assert a == b
        assert reranker.calls == 1
        auth = {"Authorization": "Bearer admin-secret-1"}
        assert httpx.post(f"{running.url}/_rerank/admin/cache/flush").status_code == 401
        flushed = httpx.post(f"{running.url}/_rerank/admin/cache/flush", headers=auth).json()["flushed"]
        assert flushed["local"] > 0
        assert flushed["shared"] > 0
        third = httpx.post(f"{running.url}/{index_name}/_search", json=body)
        assert third.headers["x-rerank-cache"] == "miss"
        assert reranker.calls == 2
