"""One search's shared-tier reads on a Redis Cluster: hash-tagged MGET against keys spread over slots.

Starts its own Redis Cluster (3 primaries, 3 replicas, bench.common.start_redis_cluster) and a
single redis-server beside it, then times 400 reads of 100 keys each through the proxy's own tiers
(`RedisTier.get_many`, `RedisVectors.get_many`), p50/p90:
- score keys of one search (one hash tag: one slot, one node) on one server and on the cluster;
- the same number of untagged keys on the cluster (`mget_nonatomic`: one MGET per slot);
- 100 document vectors (float16, 384 dimensions; per document, so untagged) on both.
And the memory a million scores and a million vectors take on the cluster's primaries (INFO memory
`used_memory` before and after writing through the tiers, divided). docs/decisions/redis-cluster.md.

    .venv/bin/python -m bench.redis_cluster_reads
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import redis

from bench.common import RESULTS, log, machine_info, quantile, start_redis, start_redis_cluster
from rerank_proxy.local.shared_vectors import RedisVectors
from rerank_proxy.scoring.cache.redis_tier import QUERY_HEAD_BYTES, RedisTier

KEY_REST = 10  # a score key's bytes after its query head (16 in all)


def p50_p90(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(quantile(seconds, 0.5) * 1000, 2), "p90_ms": round(quantile(seconds, 0.9) * 1000, 2)}


async def timed(read: Callable[[list[bytes]], Awaitable[Any]], batches: list[list[bytes]]) -> dict[str, float]:
    spent = []
    for batch in batches:
        started = time.perf_counter()
        await read(batch)
        spent.append(time.perf_counter() - started)
    return p50_p90(spent)


def searches(count: int) -> list[list[bytes]]:
    """`count` searches' score keys: 100 documents under one query head each."""
    return [[head + os.urandom(KEY_REST) for _ in range(100)]
            for head in (os.urandom(QUERY_HEAD_BYTES) for _ in range(count))]


async def score_reads(url: str, cluster: bool, count: int) -> dict[str, Any]:
    tier = RedisTier(url, 1.0, cluster=cluster)
    keys = searches(count)
    try:
        for batch in keys[: count // 8]:  # about one read in eight finds its scores
            await tier.set_many(dict.fromkeys(batch, 0.5), 600)
        out = {"tagged": await timed(tier.get_many, keys)}
        if cluster:
            untagged = [[b"rrp:x:" + k for k in batch] for batch in keys]
            out["untagged"] = await timed(tier.client.mget_nonatomic, untagged)
        return out
    finally:
        await tier.aclose()


def vector_reads(url: str, cluster: bool, count: int) -> dict[str, float]:
    vectors = RedisVectors(url, 1.0, 600, cluster=cluster)
    batches = [[os.urandom(32) for _ in range(100)] for _ in range(count)]
    try:
        for batch in batches:
            vectors.put_many((k, np.random.rand(384)) for k in batch)
        spent = []
        for batch in batches:
            started = time.perf_counter()
            vectors.get_many(batch)
            spent.append(time.perf_counter() - started)
        return p50_p90(spent)
    finally:
        vectors.close()


def used_memory(ports: list[int]) -> int:
    """`used_memory` summed over the primaries among `ports`."""
    total = 0
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
            if client.info("replication").get("role") == "master":
                total += int(client.info("memory")["used_memory"])
    return total


def memory_per_million(url: str, ports: list[int], scores: int, vectors: int) -> dict[str, float]:
    """MiB a million scores and a million vectors take, written through the tiers (TTL'd)."""
    before = used_memory(ports)
    tier = RedisTier(url, 5.0, cluster=True)

    async def write_scores() -> None:
        for batch in searches(scores // 100):
            await tier.set_many(dict.fromkeys(batch, 0.5), 3600)
        await tier.aclose()

    asyncio.run(write_scores())
    after_scores = used_memory(ports)
    store = RedisVectors(url, 5.0, 3600, cluster=True)
    for _ in range(vectors // 500):
        store.put_many((os.urandom(32), np.random.rand(384)) for _ in range(500))
    store.close()
    after_vectors = used_memory(ports)
    mib = 1024 * 1024
    return {"scores_written": scores, "vectors_written": vectors,
            "mib_per_million_scores": round((after_scores - before) / scores * 1e6 / mib, 1),
            "mib_per_million_vectors": round((after_vectors - after_scores) / vectors * 1e6 / mib, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=400, help="reads of 100 keys per case")
    parser.add_argument("--memory-scores", type=int, default=200_000)
    parser.add_argument("--memory-vectors", type=int, default=50_000)
    args = parser.parse_args()
    single = start_redis()
    cluster = start_redis_cluster()
    try:
        single_url = f"redis://127.0.0.1:{single.port}/0"
        result: dict[str, Any] = {"machine": machine_info(), "reads": args.reads}
        log("reading scores and vectors on one redis-server and on the cluster")
        result["single"] = {"scores": asyncio.run(score_reads(single_url, False, args.reads)),
                            "vectors": vector_reads(single_url, False, args.reads)}
        result["cluster"] = {"scores": asyncio.run(score_reads(cluster.seed_url, True, args.reads)),
                             "vectors": vector_reads(cluster.seed_url, True, args.reads)}
        cluster.flush()
        log("writing scores and vectors for the memory figures")
        result["memory"] = memory_per_million(cluster.seed_url, [n.port for n in cluster.nodes],
                                              args.memory_scores, args.memory_vectors)
    finally:
        cluster.stop()
        single.stop()
    (RESULTS / "redis_cluster_reads.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
