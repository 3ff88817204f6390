"""Lookup cost of 100 document vectors in each place replicas could share them.

The choice for the shared vector tier (rerank_proxy/local/shared_vectors.py): the pod's SQLite file
(the baseline, not shared), Redis (MGET of 100 keys), or an index in the engine itself (`_mget` of
100 ids, vectors as base64 float16 in `_source`). 10,000 vectors in each, 100 random keys per
lookup, the lookups of the three interleaved in one run so machine load hits them alike.

    .venv/bin/python -m bench.vector_tiers
"""

from __future__ import annotations

import base64
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from bench.common import log, machine_info, save_json, start_engine, start_redis
from rerank_proxy.local.shared_vectors import RedisVectors
from rerank_proxy.local.vector_store import VectorStore

N, LOOKUP, ROUNDS, INDEX = 10_000, 100, 300, "rerank-proxy-bench-vectors"


def main() -> None:
    rng = np.random.default_rng(15)
    keys = [rng.bytes(32) for _ in range(N)]
    vectors = rng.standard_normal((N, 384)).astype(np.float32)
    folder = Path(tempfile.mkdtemp(prefix="vector-tiers-"))
    sqlite_store = VectorStore(folder / "v.sqlite", memory_entries=0)   # no LRU: the file's cost
    sqlite_store.put_many(zip(keys, vectors, strict=True))
    redis_service = start_redis()
    shared = RedisVectors(redis_service.url, timeout_s=1.0, ttl_s=3600)
    for start in range(0, N, 1000):
        shared.put_many(zip(keys[start:start + 1000], vectors[start:start + 1000], strict=True))
    engine_url = start_engine()
    client = httpx.Client(base_url=engine_url, timeout=60)
    client.delete(f"/{INDEX}")
    client.put(f"/{INDEX}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                  "mappings": {"dynamic": False, "properties": {}}}).raise_for_status()
    for start in range(0, N, 1000):
        lines = []
        for key, vector in zip(keys[start:start + 1000], vectors[start:start + 1000], strict=True):
            lines.append(f'{{"index":{{"_id":"{key.hex()}"}}}}')
            lines.append(f'{{"v":"{base64.b64encode(vector.astype(np.float16).tobytes()).decode()}"}}')
        client.post(f"/{INDEX}/_bulk", content="\n".join(lines) + "\n",
                    headers={"content-type": "application/x-ndjson"}).raise_for_status()
    client.post(f"/{INDEX}/_refresh").raise_for_status()

    def engine_lookup(wanted: list[bytes]) -> int:
        response = client.post(f"/{INDEX}/_mget", json={"ids": [k.hex() for k in wanted]})
        docs = response.json()["docs"]
        return sum(1 for d in docs if d.get("found") and
                   np.frombuffer(base64.b64decode(d["_source"]["v"]), dtype=np.float16).shape[0] == 384)

    tiers = {"sqlite file (per pod, baseline)": lambda w: len(sqlite_store.get_many(w)),
             "redis MGET": lambda w: len(shared.get_many(w)),
             "engine index _mget": engine_lookup}
    times: dict[str, list[float]] = {name: [] for name in tiers}
    pick = random.Random(15)
    for _ in range(20):  # connections, caches
        wanted = pick.sample(keys, LOOKUP)
        for fn in tiers.values():
            fn(wanted)
    for _ in range(ROUNDS):
        wanted = pick.sample(keys, LOOKUP)
        for name, fn in tiers.items():
            started = time.perf_counter()
            found = fn(wanted)
            times[name].append((time.perf_counter() - started) * 1000)
            assert found == LOOKUP, (name, found)
    client.delete(f"/{INDEX}")
    redis_service.stop()
    rows = {name: {"p50_ms": statistics.median(t), "p90_ms": sorted(t)[int(0.9 * len(t))]}
            for name, t in times.items()}
    save_json("vector_tiers.json", {"machine": machine_info(), "rows": rows, "redis": redis.__version__})
    base = rows["redis MGET"]["p50_ms"]
    print(f"\n| lookup of {LOOKUP} vectors (of {N:,}), {ROUNDS} rounds interleaved | p50 | p90 | p50 vs redis |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_ms']:.2f} ms | {row['p90_ms']:.2f} ms | {row['p50_ms'] / base:.2f}x |")
    log("done")


if __name__ == "__main__":
    main()
