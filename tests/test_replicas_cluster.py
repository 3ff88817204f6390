"""Replicas behind a load balancer, sharing scores through a Redis Cluster, pay the provider once.

Real processes: three `rerank-proxy serve` replicas (one worker each) in front of a real engine,
behind a real nginx balancing round robin (tests/fixtures/nginx_lb.py), their shared tier a real
3-primary/3-replica Redis Cluster on loopback (tests/fixtures/redis_cluster.py), their provider a
real Cohere-protocol server on loopback that counts calls and answers after 30 ms.

The client logs are seeded: Zipf-popular queries over the test corpus, repeated within a log and
across logs, with next pages and filters. What three replicas pay with three concurrent clients is
compared with what one replica pays replaying the same logs one after the other, both cold.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_proxy.config import SETTING_PREFIXES
from rerank_proxy.scoring.cache.redis_tier import RedisTier
from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.scoring.providers.base import RerankError
from tests.fixtures.nginx_lb import NginxBalancer
from tests.fixtures.proxy import free_port
from tests.fixtures.redis_cluster import LocalRedisCluster, Node, redis_cluster
from tests.support_data import CORPUS, default_text, load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import async_wait_until, metric_samples
from tests.test_workers import PROVIDER_KEY, counting_provider

__all__ = ["redis_cluster"]  # the module-scoped cluster fixture, used by the tests below

PROVIDER_DELAY_S = 0.03
# Not the shipped 50 ms: on a loaded 2-core machine a 50 ms bound is missed now and then, and a
# missed bound is by design a miss (a score computed twice), which is not what these tests measure.
REDIS_TIMEOUT_MS = "250"
ANSWERED = {"reranked", "cached", "lexical", "fallback", "partial"}
WORDS = ["jet", "engine", "noise", "wing", "flutter", "boundary", "layer", "transition", "inlet", "design",
         "helicopter", "rotor", "shock", "waves", "intake", "propeller", "heat", "transfer", "panel",
         "supersonic", "mixing", "exhaust", "takeoff", "hypersonic"]


def query_list(n: int = 40, seed: int = 5) -> list[str]:
    """`n` distinct two- or three-word queries over the corpus' words."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        query = " ".join(rng.sample(WORDS, rng.choice([2, 2, 3])))
        if query not in out:
            out.append(query)
    return out


def client_logs(clients: int, per_client: int, seed: int = 23) -> list[list[dict[str, Any]]]:
    """One search log per client: a Zipf choice (s = 1.1) over `query_list`, so the popular queries
    repeat within a log and across logs; some searches ask for the next page.

    No filters: a filtered search's window overlaps its query's other windows, and how many calls
    such overlaps take depends on the order the searches come in (a window scored before its
    superset costs two calls, after it none). One replica replaying the logs interleaved instead of
    one after the other pays 43 calls instead of 40 for the same 114 documents with 20% filtered
    searches; that is the order, not replicas scoring twice, so the logs here leave it out."""
    queries = query_list()
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(queries))]
    rng = random.Random(seed)
    return [[{"query": {"match": {"body": query}}, "size": 3, "from": rng.choice([0, 0, 0, 3])}
             for query in rng.choices(queries, weights, k=per_client)] for _ in range(clients)]


class Replica:
    """One `rerank-proxy serve` (WORKERS=1) on the cluster; stopped by its own pid."""

    def __init__(self, engine_url: str, provider_url: str, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES) and k != "WORKERS"}
        env.update({"UPSTREAM_URLS": engine_url, "RERANK_PROVIDER": "cohere", "RERANK_BASE_URL": provider_url,
                    "RERANK_API_KEY": PROVIDER_KEY, "RERANK_SCORE_MODE": "rerank", "RERANK_WINDOW": "10",
                    "REDIS_URL": redis_url, "REDIS_CLUSTER": "true", "REDIS_TIMEOUT_MS": REDIS_TIMEOUT_MS,
                    "PORT": str(self.port), "WORKERS": "1", "LOG_LEVEL": "warning"})
        self.process = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up(self) -> bool:
        assert self.process.poll() is None, self.process.stderr.read().decode()  # type: ignore[union-attr]
        try:
            return metric_samples(self.url).get(("rerank_proxy_workers", ())) == 1
        except (httpx.TransportError, AssertionError):
            return False

    async def up_soon(self) -> bool:
        return await asyncio.to_thread(self.up)

    def kill(self) -> None:
        """SIGKILL: no draining, no goodbye, as when a node dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> int:
        if self.process.poll() is not None:
            return 0  # killed by the test
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@asynccontextmanager
async def replicas(count: int, engine_url: str, provider_url: str, redis_url: str) -> AsyncIterator[list[Replica]]:
    started = [Replica(engine_url, provider_url, redis_url) for _ in range(count)]
    try:
        for replica in started:  # started together, waited on in turn
            await async_wait_until(replica.up_soon, f"replica {replica.url} to answer", timeout_s=120, interval_s=0.1)
        yield started
    finally:
        codes = [await asyncio.to_thread(r.stop) for r in started]
        assert codes == [0] * count, [r.process.stderr.read().decode() for r in started]  # type: ignore[union-attr]


@contextmanager
def balancer(workdir: Path, backends: list[Replica]) -> Iterator[NginxBalancer]:
    nginx = NginxBalancer(workdir, [r.url for r in backends])
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


def flush(cluster: LocalRedisCluster) -> None:
    """Every primary emptied: the next run starts cold."""
    for node in cluster.primaries():
        assert node.answer("FLUSHALL") is not None


def valid(response: httpx.Response) -> bool:
    """An answer: 200, a search response with hits, and a rerank outcome (reranked or fallback)."""
    if response.status_code != 200 or response.headers.get("x-rerank") not in ANSWERED:
        return False
    body = response.json()
    return isinstance(body.get("hits", {}).get("hits"), list)


async def run_log(http: httpx.AsyncClient, url: str, index: str, log: list[dict[str, Any]],
                  outcomes: list[httpx.Response | BaseException]) -> None:
    """One client: its searches one after the other."""
    for body in log:
        try:
            outcomes.append(await http.post(f"{url}/{index}/_search", json=body))
        except httpx.HTTPError as exc:
            outcomes.append(exc)


@asynccontextmanager
async def two_replica_caches(url: str, delay_s: float) -> AsyncIterator[list[tuple[ScoreCache, OverlapReranker]]]:
    """Two replicas' score caches on one Redis, each with a provider of its own (to count apart)."""
    tiers = [RedisTier(url, 0.5), RedisTier(url, 0.5)]
    pairs = []
    for tier in tiers:
        reranker = OverlapReranker(delay_s=delay_s)
        pairs.append((ScoreCache(reranker, max_entries=1000, ttl_s=60, shared=tier, shared_timeout_s=0.5), reranker))
    try:
        yield pairs
    finally:
        for tier in tiers:
            await tier.flush()
            await tier.aclose()


async def test_replicas_missing_the_same_scores_at_once_pay_once(redis_server):
    texts = [default_text(doc) for doc in CORPUS]
    async with two_replica_caches(redis_server.url, delay_s=0.2) as [(a, provider_a), (b, provider_b)]:
        first, second = await asyncio.gather(a.scores("jet engine noise", texts),
                                             b.scores("jet engine noise", [*texts[3:], "a text only b has"]))
    # each claimed what the other had not: one call each, every document sent once
    assert (provider_a.calls, provider_b.calls) == (1, 1)
    assert provider_a.documents + provider_b.documents == len(texts) + 1
    assert second.scores[:-1] == first.scores[3:]
    assert first.coalesced + second.coalesced == len(texts) - 3


async def test_a_claim_whose_call_fails_is_released_and_the_waiter_computes(redis_server):
    texts = [default_text(doc) for doc in CORPUS]
    async with two_replica_caches(redis_server.url, delay_s=0.2) as [(a, provider_a), (b, provider_b)]:
        provider_a.fail = True
        failing = asyncio.create_task(a.scores("wing flutter", texts))
        await async_wait_until(lambda: provider_a.calls == 1, "a to claim the scores and call its provider")
        second = await b.scores("wing flutter", texts)  # waits on a's claims until a releases them
        with pytest.raises(RerankError):
            await failing
    assert provider_b.calls == 1
    assert second.sent == len(texts)


@pytest.mark.slow  # a cluster, nginx and four proxies start: ~30 s
async def test_three_replicas_behind_nginx_pay_no_more_than_one_replica(es_engine, index_name, redis_cluster,
                                                                        tmp_path):
    load_corpus(es_engine.url, index_name)
    logs = client_logs(3, 100)
    calls: dict[str, tuple[int, int]] = {}
    async with counting_provider(delay_s=PROVIDER_DELAY_S) as (provider_url, provider):
        flush(redis_cluster)
        async with replicas(1, es_engine.url, provider_url, redis_cluster.seed_url) as (one,), \
                httpx.AsyncClient(timeout=60) as http:
            outcomes: list[httpx.Response | BaseException] = []
            for log in logs:
                await run_log(http, one.url, index_name, log, outcomes)
        assert all(isinstance(o, httpx.Response) and valid(o) for o in outcomes), outcomes[:3]
        calls["one"] = (provider.calls, provider.documents)

        flush(redis_cluster)
        before = (provider.calls, provider.documents)
        async with replicas(3, es_engine.url, provider_url, redis_cluster.seed_url) as three:
            with balancer(tmp_path / "nginx", three) as nginx:
                clients = [httpx.AsyncClient(timeout=60) for _ in logs]
                outcomes = []
                try:
                    await asyncio.gather(*(run_log(c, nginx.url, index_name, log, outcomes)
                                           for c, log in zip(clients, logs)))
                finally:
                    for c in clients:
                        await c.aclose()
                served = [await asyncio.to_thread(metric_samples, r.url) for r in three]
        calls["three"] = (provider.calls - before[0], provider.documents - before[1])
    assert len(outcomes) == 300
    assert all(isinstance(o, httpx.Response) and valid(o) for o in outcomes), outcomes[:3]
    # every replica served a share, and found scores another replica paid for
    shared_hits = [s.get(("rerank_proxy_cache_shared_hits_total", ()), 0.0) for s in served]
    errors = [s.get(("rerank_proxy_cache_shared_errors_total", ()), 0.0) for s in served]
    print(f"provider calls/documents: one replica {calls['one']}, three replicas {calls['three']}; "
          f"shared hits by replica {shared_hits}, shared errors {errors}")
    assert all(h > 0 for h in shared_hits), shared_hits
    assert calls["one"][0] > 0
    assert calls["three"][0] <= 1.05 * calls["one"][0], calls
    assert calls["three"][1] <= 1.05 * calls["one"][1], calls


class Faults:
    """Kills a Redis primary after `primary_at` searches are answered, then a replica after `replica_at`."""

    def __init__(self, cluster: LocalRedisCluster, victim: Replica, primary_at: int, replica_at: int) -> None:
        self.cluster, self.victim = cluster, victim
        self.primary_at, self.replica_at = primary_at, replica_at
        self.answered = 0
        self.reached = {primary_at: asyncio.Event(), replica_at: asyncio.Event()}
        self.killed_at: dict[str, int] = {}

    def count(self) -> None:
        self.answered += 1
        for at, event in self.reached.items():
            if self.answered >= at:
                event.set()

    async def run(self) -> tuple[Node, Node]:
        """The faults, in order; returns the killed primary and its promoted replica (to heal with)."""
        await self.reached[self.primary_at].wait()
        primary = self.cluster.primaries()[0]
        promoted = await asyncio.to_thread(self.cluster.kill_primary, primary)
        self.killed_at["redis primary"] = self.answered
        await self.reached[self.replica_at].wait()
        await asyncio.to_thread(self.victim.kill)
        self.killed_at["proxy replica"] = self.answered
        return primary, promoted


@pytest.mark.slow  # three proxies, nginx, a failover: ~30 s
async def test_a_redis_primary_and_a_replica_die_under_load_and_no_search_fails(es_engine, index_name,
                                                                              redis_cluster, tmp_path):
    load_corpus(es_engine.url, index_name)
    logs = client_logs(15, 30, seed=31)
    outcomes: list[httpx.Response | BaseException] = []
    async with counting_provider(delay_s=PROVIDER_DELAY_S) as (provider_url, _), \
            replicas(3, es_engine.url, provider_url, redis_cluster.seed_url) as three:
        with balancer(tmp_path / "nginx", three) as nginx:
            faults = Faults(redis_cluster, three[0], primary_at=100, replica_at=250)

            async def client(log: list[dict[str, Any]]) -> None:
                async with httpx.AsyncClient(timeout=60) as http:
                    for body in log:
                        try:
                            outcomes.append(await http.post(f"{nginx.url}/{index_name}/_search", json=body))
                        except httpx.HTTPError as exc:
                            outcomes.append(exc)
                        faults.count()

            fault_task = asyncio.create_task(faults.run())
            await asyncio.gather(*(client(log) for log in logs))
            primary, promoted = await fault_task
            retried = nginx.retried()
        served = [await asyncio.to_thread(metric_samples, r.url) for r in three[1:]]
    await asyncio.to_thread(redis_cluster.wait_promoted, promoted)
    await asyncio.to_thread(redis_cluster.restart, primary)  # the module's cluster whole again
    failed = [o if isinstance(o, BaseException) else (o.status_code, o.text[:200]) for o in outcomes
              if isinstance(o, BaseException) or not valid(o)]
    kinds = sorted({o.headers["x-rerank"] for o in outcomes if isinstance(o, httpx.Response)})
    errors = [s.get(("rerank_proxy_cache_shared_errors_total", ()), 0.0) for s in served]
    print(f"killed at {faults.killed_at} of {len(outcomes)}; outcomes {kinds}; nginx retries {retried}; "
          f"shared errors on the survivors {errors}")
    assert len(outcomes) == 450
    assert failed == []
    assert faults.killed_at["proxy replica"] < 450  # both faults came while searches were still running
    assert retried >= 1  # nginx met the dead replica and sent those searches on
