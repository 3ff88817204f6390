"""Several workers of one `rerank-proxy serve` pay the provider no more than one worker does.

Real processes: `rerank-proxy serve` in front of a real engine, with a real loopback server speaking
the Cohere v2 protocol (the project's own `rerank_server`, around the word-overlap reranker, which
counts the documents it is sent). The same search log goes through one worker and through two, with
concurrency; each search opens a new connection, so the kernel spreads them over the workers.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from rerank_proxy.config import SETTING_PREFIXES
from rerank_proxy.local.rerank_server import build_app
from tests.fixtures.proxy import free_port
from tests.support_data import load_corpus
from tests.support_loopback import serve_app
from tests.support_rerankers import OverlapReranker
from tests.support_wait import async_wait_until, metric_samples

PROVIDER_KEY = "workers-test-provider-key"
ADMIN = "workers-test-admin-token"
QUERIES = ["jet engine noise", "wing flutter", "boundary layer transition", "engine inlet design",
           "helicopter rotor noise", "shock waves at the intake", "propeller noise", "heat transfer"]


def search_log(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """Popular queries repeat, users page on, some searches filter: the overlaps a cache lives on."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        query: dict[str, Any] = {"match": {"body": rng.choice(QUERIES[:3] * 3 + QUERIES)}}
        if rng.random() < 0.3:
            query = {"bool": {"must": [query], "filter": [{"range": {"year": {"lt": rng.choice([1955, 1958])}}}]}}
        out.append({"query": query, "size": 3, "from": rng.choice([0, 0, 3, 6])})
    return out


@asynccontextmanager
async def counting_provider(delay_s: float) -> AsyncIterator[tuple[str, OverlapReranker]]:
    reranker = OverlapReranker(delay_s=delay_s)  # the provider's own latency, so calls overlap
    async with serve_app(build_app(reranker, api_key=PROVIDER_KEY)) as url:
        yield url, reranker


@asynccontextmanager
async def serve(engine_url: str, provider_url: str, workers: int) -> AsyncIterator[str]:
    """`rerank-proxy serve` with `workers` processes, until every worker answers metrics."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES) and k != "WORKERS"}
    env.update({"UPSTREAM_URLS": engine_url, "RERANK_PROVIDER": "cohere", "RERANK_BASE_URL": provider_url,
                "RERANK_API_KEY": PROVIDER_KEY, "RERANK_SCORE_MODE": "rerank", "RERANK_WINDOW": "10",
                "ADMIN_TOKEN": ADMIN, "PORT": str(port), "WORKERS": str(workers), "LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def all_up() -> bool:  # start-up calls no provider, so blocking the test's loop here is harmless
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]  # stderr=PIPE
        try:
            samples = metric_samples(url)
        except (httpx.TransportError, AssertionError):
            return False
        return samples.get(("rerank_proxy_workers", ())) == workers

    try:
        await async_wait_until(all_up, f"{workers} workers to answer", timeout_s=120, interval_s=0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == 0, proc.stderr.read().decode()  # type: ignore[union-attr]  # stderr=PIPE


async def replay(url: str, index: str, searches: list[dict[str, Any]], concurrency: int) -> list[str]:
    """Send the log with `concurrency` in flight, a new connection per search; the X-Rerank of each."""
    queue = list(enumerate(searches))
    outcomes: list[str] = [""] * len(searches)

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60, headers={"connection": "close"}) as http:
            while queue:
                i, body = queue.pop(0)
                response = await http.post(f"{url}/{index}/_search", json=body)
                assert response.status_code == 200, response.text
                outcomes[i] = response.headers["x-rerank"]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


def host_counters(url: str) -> float:
    samples = metric_samples(url)
    return (samples.get(("rerank_proxy_cache_host_hits_total", ()), 0.0)
            + samples.get(("rerank_proxy_cache_host_waits_total", ()), 0.0))


async def test_two_workers_send_the_provider_no_more_documents_than_one(es_engine, index_name):
    load_corpus(es_engine.url, index_name)
    searches = search_log(80)
    sent: dict[int, tuple[int, int]] = {}
    async with counting_provider(delay_s=0.05) as (provider_url, provider):
        for workers in (1, 2):
            before = (provider.calls, provider.documents)
            async with serve(es_engine.url, provider_url, workers) as url:
                outcomes = await replay(url, index_name, searches, concurrency=8)
                assert set(outcomes) <= {"reranked", "cached", "lexical"}
                assert "cached" in outcomes
                sent[workers] = (provider.calls - before[0], provider.documents - before[1])
                if workers == 2:
                    # both workers served, and one found what the other paid for
                    assert await asyncio.to_thread(host_counters, url) > 0
                    # an admin flush (reaching one worker) empties every worker's tiers: the log costs again
                    async with httpx.AsyncClient() as http:
                        flushed = await http.post(f"{url}/_rerank/admin/cache/flush",
                                                  headers={"authorization": f"Bearer {ADMIN}"})
                    assert flushed.status_code == 200
                    assert flushed.json()["flushed"]["host"] > 0
                    documents = provider.documents
                    await replay(url, index_name, searches, concurrency=8)
                    assert provider.documents - documents == sent[1][1]
    assert sent[1][1] > 0
    assert sent[2][1] == sent[1][1], sent


async def test_identical_searches_arriving_at_both_workers_make_one_provider_call(es_engine, index_name):
    load_corpus(es_engine.url, index_name)
    body = {"query": {"match": {"body": "engine noise"}}, "size": 3}
    window = httpx.post(f"{es_engine.url}/{index_name}/_search", json={**body, "size": 10}).json()["hits"]["hits"]
    async with counting_provider(delay_s=0.3) as (provider_url, provider), serve(es_engine.url, provider_url, 2) as url:
        outcomes = await replay(url, index_name, [body] * 16, concurrency=16)
        # the in-process coalescing answers one worker's duplicates; the claims the other's
        assert await asyncio.to_thread(host_counters, url) > 0
        samples = await asyncio.to_thread(metric_samples, url)
    assert provider.calls == 1, (provider.calls, provider.documents)
    assert provider.documents == len(window) > 3, (provider.calls, provider.documents)
    assert outcomes.count("reranked") + outcomes.count("cached") == 16
    assert samples[("rerank_proxy_cache_lookups_total", (("result", "miss"),))] == len(window)


def test_a_worker_settles_the_garbage_collector_after_start_up():
    """Start-up objects leave the collector's sight and young collections wait for more garbage."""
    import gc

    from rerank_proxy.serve import GC_YOUNG_THRESHOLD, settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
