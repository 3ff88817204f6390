"""The shared tiers on a real Redis Cluster (3 primaries, 3 replicas on loopback): REDIS_CLUSTER=true
and REDIS_URL naming one seed node.

Healthy: scores written by one proxy answer another's identical search, keys spread over the
primaries, and no redirect is ever counted as a failure. Faults, each under concurrent searches
that must all answer: a primary killed (its replica promoted), a replica killed, a slot migrated,
CLUSTERDOWN, the whole cluster down. The cluster is module-scoped; every fault test heals it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis.crc import key_slot

from rerank_proxy.config import ConfigError, load_settings
from rerank_proxy.local.shared_vectors import RedisVectors, TieredVectorStore, build_store
from rerank_proxy.local.vector_store import VectorStore
from rerank_proxy.scoring.cache.redis_claims import RedisClaims
from rerank_proxy.scoring.cache.redis_client import ERRORS, SharedTierDown
from rerank_proxy.scoring.cache.redis_tier import RedisTier, redis_key
from rerank_proxy.scoring.cache.scores import ScoreCache, normalise_query
from tests.fixtures.proxy import RunningProxy, free_port, proxy_settings, run_proxy
from tests.fixtures.redis_cluster import LocalRedisCluster
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import metric_samples, wait_until

TIMEOUT_MS = 200  # REDIS_TIMEOUT_MS of the proxies under faults: a call past it is a miss
# A search that misses makes this many calls to the shared tier, each bounded by REDIS_TIMEOUT_MS: the
# read and the write, and, with claims on misses across replicas, the claim and its release.
SHARED_CALLS_PER_SEARCH = 4
HEALTHY_TIMEOUT_MS = 1000  # a slow CI machine must not turn a healthy call into a counted error
SCORES = "rrp:s:*"
CLAIMS = "rrp:c:*"
VECTORS = "rrp:v:*"


# --- settings ------------------------------------------------------------------------------------

def test_cluster_mode_needs_a_tcp_seed_node_in_database_0():
    assert load_settings({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://seed:6379/0"}).redis_cluster
    assert not load_settings({}).redis_cluster
    for url, said in (("", "REDIS_URL is empty"), ("unix:///run/redis.sock", "unix://"),
                      ("redis://seed:6379/3", "database '3'")):
        with pytest.raises(ConfigError, match="REDIS_CLUSTER=true") as raised:
            load_settings({"REDIS_CLUSTER": "true", "REDIS_URL": url})
        assert said in str(raised.value)


def test_one_searchs_score_keys_share_one_slot_and_queries_spread():
    """The hash tag is the query head of `ScoreCache.doc_keys`: one search's MGET is one slot."""
    cache = ScoreCache(OverlapReranker(), max_entries=10, ttl_s=60)
    texts = [f"document {i} {{with braces}}" for i in range(100)]
    slots = {key_slot(redis_key(k)) for k in cache.doc_keys("jet engine", texts)}
    assert len(slots) == 1
    by_query = {key_slot(redis_key(cache.doc_keys(f"query {i}", ["a"])[0])) for i in range(200)}
    assert len(by_query) > 150  # 200 queries over 16384 slots: nearly all distinct


# --- the tiers on a healthy cluster ---------------------------------------------------------------

async def test_score_tier_writes_on_every_primary_reads_from_another_client_and_flushes(redis_cluster):
    writer = RedisTier(redis_cluster.seed_url, HEALTHY_TIMEOUT_MS / 1000, cluster=True)
    # another seed: any node leads to the whole cluster
    reader = RedisTier(redis_cluster.url_of(redis_cluster.nodes[-1]), HEALTHY_TIMEOUT_MS / 1000, cluster=True)
    reranker = OverlapReranker()
    one = ScoreCache(reranker, max_entries=1000, ttl_s=60, shared=writer, shared_timeout_s=HEALTHY_TIMEOUT_MS / 1000)
    other_reranker = OverlapReranker()
    other = ScoreCache(other_reranker, max_entries=1000, ttl_s=60, shared=reader,
                       shared_timeout_s=HEALTHY_TIMEOUT_MS / 1000)
    texts = [f"jet engine noise, paper {i}" for i in range(10)]
    try:
        for i in range(60):
            written = await one.scores(f"jet engine {i}", texts)
            read = await other.scores(f"jet engine {i}", texts)
            assert read.status == "hit"
            assert read.scores == written.scores
        assert other.stats.shared_hits == 600
        assert one.stats.shared_errors == other.stats.shared_errors == 0   # no MOVED taken for a failure
        assert other_reranker.calls == 0
        on_each = [redis_cluster.keys_on(p, SCORES) for p in redis_cluster.primaries()]
        assert all(on_each), on_each                                      # on every primary
        assert sum(on_each) == 600
        assert await reader.ping()
        # a claim left to its lease (a replica computing a score) goes with the flush too
        claims = RedisClaims(writer, HEALTHY_TIMEOUT_MS / 1000, lease_ms=600_000)  # outlives the test
        assert await claims.claim(one.doc_keys("jet engine flush", texts)) == [True] * 10
        assert sum(redis_cluster.keys_on(p, CLAIMS) for p in redis_cluster.primaries()) >= 10
        assert await writer.flush() == 600                                # SCAN walked every primary
        assert [redis_cluster.keys_on(p, SCORES) for p in redis_cluster.primaries()] == [0, 0, 0]
        assert [redis_cluster.keys_on(p, CLAIMS) for p in redis_cluster.primaries()] == [0, 0, 0]
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_a_moved_slot_is_followed_not_a_miss(redis_cluster):
    """A client whose slot map is stale gets MOVED: it follows it and finds the score there."""
    tier = RedisTier(redis_cluster.seed_url, HEALTHY_TIMEOUT_MS / 1000, cluster=True)
    cache = ScoreCache(OverlapReranker(), max_entries=0, ttl_s=60, shared=tier,
                       shared_timeout_s=HEALTHY_TIMEOUT_MS / 1000)
    texts = ["wing flutter", "jet mixing"]
    try:
        await cache.scores("moving query", texts)                      # the client learns the slot map
        slot = key_slot(redis_key(cache.doc_keys("moving query", texts)[0]))
        source = redis_cluster.owner_of(slot)
        target = next(p for p in redis_cluster.primaries() if p is not source)
        assert redis_cluster.migrate_slot(slot, target) >= len(texts)   # its scores moved
        again = await cache.scores("moving query", texts)               # sent to the old owner first
        assert again.status == "hit"
        assert cache.stats.shared_errors == 0
    finally:
        await tier.flush()
        await tier.aclose()


async def test_a_cluster_down_at_start_up_is_a_miss_for_the_score_tier():
    tier = RedisTier(f"redis://127.0.0.1:{free_port()}/0", 0.2, cluster=True)   # builds: connects on use
    cache = ScoreCache(OverlapReranker(), max_entries=0, ttl_s=60, shared=tier, shared_timeout_s=0.2)
    assert (await cache.scores("q", ["a", "b"])).status == "miss"
    assert cache.stats.shared_errors >= 1
    assert not await tier.ping()
    with pytest.raises(ERRORS):
        await tier.get_many([b"k" * 16])                                # a RedisError, not a foreign one
    await tier.aclose()


def test_vector_tier_reads_writes_and_counts_across_the_primaries(redis_cluster, tmp_path: Path):
    one = TieredVectorStore(VectorStore(tmp_path / "a.sqlite"),
                            RedisVectors(redis_cluster.seed_url, HEALTHY_TIMEOUT_MS / 1000, 60, cluster=True))
    other = TieredVectorStore(VectorStore(tmp_path / "b.sqlite"),
                              RedisVectors(redis_cluster.url_of(redis_cluster.nodes[4]), HEALTHY_TIMEOUT_MS / 1000,
                                           60, cluster=True))
    rng = np.random.default_rng(7)
    items = [(bytes([i]) * 32, rng.standard_normal(384).astype(np.float32)) for i in range(200)]
    try:
        one.put_many(items)
        keys = [k for k, _ in items] + [b"\xff" * 32]
        found = other.get_many(keys)
        assert sorted(found) == sorted(k for k, _ in items)
        assert other.shared_hits == 200
        assert other.local.count() == 200                                   # copied into the pod's file
        np.testing.assert_array_equal(found[items[3][0]], one.get_many([items[3][0]])[items[3][0]])
        assert one.shared_errors == other.shared_errors == 0
        on_each = [redis_cluster.keys_on(p, VECTORS) for p in redis_cluster.primaries()]
        assert all(on_each), on_each
        assert sum(on_each) == 200
        assert other.shared.count() == 200                                # SCAN of every primary
    finally:
        one.close()
        other.close()
        for primary in redis_cluster.primaries():
            with primary.client() as client:
                client.flushall()


def test_a_cluster_down_at_start_up_is_a_miss_and_the_pod_file_works(tmp_path: Path):
    settings = load_settings({"LOCAL_VECTOR_STORE": str(tmp_path / "a.sqlite"), "REDIS_CLUSTER": "true",
                              "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_TIMEOUT_MS": "200"})
    store = build_store(settings)                                          # no node answers: still builds
    assert isinstance(store, TieredVectorStore)
    store.put_many([(b"k" * 32, np.ones(384, dtype=np.float32))])
    assert list(store.get_many([b"k" * 32])) == [b"k" * 32]
    assert store.missing([b"m" * 32]) == [b"m" * 32]
    assert store.shared_errors >= 1
    store.close()


# --- proxies on the cluster -----------------------------------------------------------------------

def cluster_settings(engine_url: str, seed_url: str, timeout_ms: int, **extra: str):
    # No answer memo: a repeated search must reach the score tiers, which is what is tested here.
    return proxy_settings(engine_url, REDIS_CLUSTER="true", REDIS_URL=seed_url, REDIS_TIMEOUT_MS=str(timeout_ms),
                          CACHE_ANSWERS_MAX_MB="0", ADMIN_TOKEN="admin-secret-1", **extra)


@dataclass
class Replicas:
    a: RunningProxy
    b: RunningProxy
    reranker_a: OverlapReranker
    reranker_b: OverlapReranker
    index: str


@contextmanager
def two_replicas(engine_url: str, index: str, seed_url: str, timeout_ms: int) -> Iterator[Replicas]:
    reranker_a, reranker_b = OverlapReranker(), OverlapReranker()
    settings = cluster_settings(engine_url, seed_url, timeout_ms)
    with run_proxy(settings, reranker=reranker_a) as a, run_proxy(settings, reranker=reranker_b) as b:
        yield Replicas(a, b, reranker_a, reranker_b, index)


def search(url: str, index: str, query: str, client: httpx.Client | None = None) -> httpx.Response:
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 5, "rerank": {"query": query}}
    response = (client or httpx).post(f"{url}/{index}/_search", json=body, timeout=60)
    assert response.status_code == 200, response.text
    # "cached": reranked with scores from a cache tier, none computed
    assert response.headers["x-rerank"] in ("reranked", "cached"), response.headers.get("x-rerank-reason")
    return response


def metric(url: str, name: str) -> float:
    return metric_samples(url).get((name, ()), 0.0)


def ready(url: str) -> dict:
    return httpx.get(f"{url}/_rerank/ready", timeout=30).json()


def test_a_second_proxy_answers_from_the_first_ones_scores(es_engine, index_name: str, redis_cluster):
    load_corpus(es_engine.url, index_name)
    with two_replicas(es_engine.url, index_name, redis_cluster.seed_url, HEALTHY_TIMEOUT_MS) as r:
        assert ready(r.a.url)["shared_cache"] == "up"
        queries = [f"jet engine noise {i}" for i in range(40)]
        for q in queries:
            assert search(r.a.url, index_name, q).headers["x-rerank-cache"] == "miss"
        calls_before = r.reranker_b.calls
        answers = [search(r.b.url, index_name, q) for q in queries]
        assert {a.headers["x-rerank-cache"] for a in answers} == {"hit"}
        assert r.reranker_b.calls == calls_before == 0                      # no provider call on B
        scored = r.reranker_a.documents                                    # each a key in the cluster
        assert metric(r.b.url, "rerank_proxy_cache_shared_hits_total") == scored
        for proxy in (r.a, r.b):
            assert metric(proxy.url, "rerank_proxy_cache_shared_errors_total") == 0
        on_each = [redis_cluster.keys_on(p, SCORES) for p in redis_cluster.primaries()]
        assert sum(1 for n in on_each if n) >= 2, on_each                  # over several primaries
        # the admin flush empties every primary
        flushed = httpx.post(f"{r.a.url}/_rerank/admin/cache/flush", timeout=30,
                             headers={"Authorization": "Bearer admin-secret-1"}).json()["flushed"]
        assert flushed["shared"] == sum(on_each) == scored
        assert [redis_cluster.keys_on(p, SCORES) for p in redis_cluster.primaries()] == [0, 0, 0]
        r.b.runtime.cache.flush()  # B's own tier too: the next search must find nothing anywhere
        assert search(r.b.url, index_name, queries[0]).headers["x-rerank-cache"] == "miss"


# --- faults under load ----------------------------------------------------------------------------

@dataclass
class Load:
    """Searches from background threads until stopped: a new query on replica A (a miss: scored,
    written to the cluster), then the same on B (read back from it when the tier works). Every
    search must answer reranked; failures are kept, with how long each search took."""

    replicas: Replicas
    threads: int = 3
    failures: list[str] = field(default_factory=list)
    elapsed: list[tuple[float, float]] = field(default_factory=list)   # (monotonic at end, seconds)
    b_hits: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        i = 0
        with httpx.Client() as client:
            while not self._stop.is_set():
                query = f"jet engine load {n} {i} {time.monotonic_ns()}"
                i += 1
                for proxy in (self.replicas.a, self.replicas.b):
                    started = time.monotonic()
                    try:
                        answer = search(proxy.url, self.replicas.index, query, client)
                    except (AssertionError, httpx.HTTPError) as exc:
                        with self._lock:
                            self.failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    with self._lock:
                        self.elapsed.append((time.monotonic(), time.monotonic() - started))
                        if proxy is self.replicas.b and answer.headers["x-rerank-cache"] == "hit":
                            self.b_hits += 1

    @property
    def done(self) -> int:
        return len(self.elapsed) + len(self.failures)

    def after(self, count: int) -> None:
        """Wait until `count` more searches have answered (the load is running through this moment)."""
        target = self.done + count
        wait_until(lambda: self.done >= target, f"{count} more searches to answer")

    def worst_since(self, since: float) -> float:
        with self._lock:
            return max((s for end, s in self.elapsed if end >= since), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=120)


@contextmanager
def under_load(replicas: Replicas) -> Iterator[Load]:
    load = Load(replicas).start()
    try:
        load.after(20)
        yield load
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]


def bound(baseline: float) -> float:
    """The longest a search may take with the shared tier failing: a loaded healthy search, and every
    shared-tier call of it at its time limit (a hang, or the cluster client's own retry sleeps, is far past it)."""
    return 3 * baseline + SHARED_CALLS_PER_SEARCH * TIMEOUT_MS / 1000


def shared_works(r: Replicas) -> bool:
    """A fresh query scored on A answers B from the cluster: the shared tier works end to end."""
    query = f"probe {time.monotonic_ns()}"
    search(r.a.url, r.index, query)
    return search(r.b.url, r.index, query).headers["x-rerank-cache"] == "hit"


@pytest.fixture
def replicas(es_engine, index_name: str, redis_cluster) -> Iterator[Replicas]:
    load_corpus(es_engine.url, index_name)
    with two_replicas(es_engine.url, index_name, redis_cluster.seed_url, TIMEOUT_MS) as r:
        wait_until(lambda: shared_works(r), "the shared tier to work before the fault")
        yield r


def test_a_killed_primary_fails_over_under_load(replicas: Replicas, redis_cluster: LocalRedisCluster):
    r = replicas
    # the seed node itself: the clients must find the cluster through the nodes they discovered
    victim = redis_cluster.node_at(redis_cluster.nodes[0].address)
    assert victim in redis_cluster.primaries()
    vectors = RedisVectors(redis_cluster.seed_url, TIMEOUT_MS / 1000, 60, cluster=True)
    keys = [bytes([i]) * 32 for i in range(100)]                # over every slot range, the victim's too
    vectors.put_many([(k, np.ones(384, dtype=np.float32)) for k in keys])

    def vectors_work() -> bool:
        """The sync client writes and reads every key again: it found the promoted replica."""
        try:
            vectors.put_many([(k, np.ones(384, dtype=np.float32)) for k in keys])
            return len(vectors.get_many(keys)) == len(keys)
        except ERRORS:
            return False

    with under_load(r) as load:
        replica = redis_cluster.kill_primary(victim)
        load.after(30)                                      # while the primary is gone: misses, recomputed
        redis_cluster.wait_promoted(replica)
        hits_before = load.b_hits
        wait_until(lambda: shared_works(r), "shared hits to resume after the promotion")
        wait_until(lambda: load.b_hits > hits_before + 10, "the load's searches on B to hit the cluster again")
        wait_until(vectors_work, "the vector tier to work again after the promotion")
    assert ready(r.a.url)["shared_cache"] == "up"
    vectors.close()
    redis_cluster.restart(victim)                           # it rejoins as a replica of its successor
    assert victim not in redis_cluster.primaries()


def test_a_replica_killed_mid_write_changes_nothing(replicas: Replicas, redis_cluster: LocalRedisCluster):
    r = replicas
    errors_before = [metric(p.url, "rerank_proxy_cache_shared_errors_total") for p in (r.a, r.b)]
    replica = redis_cluster.replica_of(redis_cluster.primaries()[1])
    with under_load(r) as load:
        redis_cluster.kill(replica)
        load.after(40)
        hits_before = load.b_hits
        load.after(20)
        assert load.b_hits > hits_before                     # B keeps reading A's scores
    # the clients talk to primaries only: a replica's death is not even a miss
    assert [metric(p.url, "rerank_proxy_cache_shared_errors_total") for p in (r.a, r.b)] == errors_before
    redis_cluster.restart(replica)


def queries_in_one_slot(cache: ScoreCache, count: int) -> tuple[int, list[str]]:
    """`count` queries whose scores share one slot (found by trying: 1 in 16384 does)."""
    def slot_of(query: str) -> int:
        return key_slot(redis_key(cache.doc_keys(normalise_query(query), ["x"])[0]))
    slot = slot_of("jet engine slot 0")
    found, i = ["jet engine slot 0"], 1
    while len(found) < count:
        if slot_of(f"jet engine slot {i}") == slot:
            found.append(f"jet engine slot {i}")
        i += 1
    return slot, found


def test_a_slot_migrated_under_load(replicas: Replicas, redis_cluster: LocalRedisCluster):
    """Between every batch of keys MIGRATE moves, A writes a new search into the slot and B reads
    an old one from it (its in-process tier emptied first): ASK and MOVED are followed, and
    whatever cannot be (TRYAGAIN while a search's keys are on both nodes) is a miss."""
    r = replicas
    slot, queries = queries_in_one_slot(r.a.runtime.cache, 12)
    old, new = queries[:6], iter(queries[6:])
    for query in old:
        search(r.a.url, r.index, query)
    source = redis_cluster.owner_of(slot)
    target = next(p for p in redis_cluster.primaries() if p is not source)
    b_hits: list[str] = []

    def meanwhile(batch: int) -> None:
        search(r.a.url, r.index, next(new, f"jet engine {time.monotonic_ns()}"))
        r.b.runtime.cache.flush()
        b_hits.append(search(r.b.url, r.index, old[batch % len(old)]).headers["x-rerank-cache"])

    with under_load(r) as load:
        moved = redis_cluster.migrate_slot(slot, target, keys_per_batch=5, between=meanwhile)
        load.after(20)
    assert moved >= 30                                       # the old searches' keys, in batches of 5
    assert len(b_hits) >= 6
    assert redis_cluster.owner_of(slot) is target
    # The old searches' keys moved intact. (A search meanwhile may miss: an MGET of a slot whose keys
    # are half moved gets TRYAGAIN until the move ends; a miss, which is what a cache may do.)
    r.b.runtime.cache.flush()
    assert {search(r.b.url, r.index, q).headers["x-rerank-cache"] for q in old} == {"hit"}
    wait_until(lambda: shared_works(r), "the shared tier to work after the migration")


def test_clusterdown_is_a_miss_and_answers_stay_fast(replicas: Replicas, redis_cluster: LocalRedisCluster,
                                                     tmp_path: Path):
    r = replicas
    vectors = RedisVectors(redis_cluster.seed_url, TIMEOUT_MS / 1000, 60, cluster=True)
    assert vectors.get_many([b"v" * 32]) == {}                # connected while the cluster is whole
    with under_load(r) as load:
        baseline = load.worst_since(0.0)
        broken_at = time.monotonic()
        dead = redis_cluster.break_coverage()
        load.after(40)
        worst = load.worst_since(broken_at)
        # the in-process tier still answers a repeated search
        search(r.a.url, r.index, "jet engine repeated")
        assert search(r.a.url, r.index, "jet engine repeated").headers["x-rerank-cache"] == "hit"
        assert ready(r.a.url)["shared_cache"] == "down"
        # the vector tier: CLUSTERDOWN is a miss, and after the first one it stops asking for a while
        started = time.monotonic()
        with pytest.raises(ERRORS):
            vectors.get_many([b"v" * 32])
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(SharedTierDown, match="less than a second ago"):
                vectors.get_many([b"v" * 32])
        assert time.monotonic() - started < first
        redis_cluster.heal(*dead)
        wait_until(lambda: shared_works(r), "shared hits to resume once the cluster is whole")
    assert worst <= bound(baseline), (worst, baseline)
    assert ready(r.a.url)["shared_cache"] == "up"
    vectors.close()


def test_the_whole_cluster_down_is_misses_and_the_in_process_cache(replicas: Replicas,
                                                                   redis_cluster: LocalRedisCluster):
    r = replicas
    with under_load(r) as load:
        baseline = load.worst_since(0.0)
        down_at = time.monotonic()
        for node in redis_cluster.nodes:
            redis_cluster.kill(node)
        load.after(40)
        worst = load.worst_since(down_at)
        assert metric(r.a.url, "rerank_proxy_cache_shared_errors_total") > 0    # misses, counted
        search(r.b.url, r.index, "jet engine while down")
        assert search(r.b.url, r.index, "jet engine while down").headers["x-rerank-cache"] == "hit"
        assert ready(r.b.url)["shared_cache"] == "down"
        redis_cluster.heal(*redis_cluster.nodes)
        wait_until(lambda: shared_works(r), "shared hits to resume once the cluster is back")
    assert worst <= bound(baseline), (worst, baseline)
    assert ready(r.b.url)["shared_cache"] == "up"
