"""Soak: a bounded mixed load through a real proxy while faults are injected on a schedule.

Parts, all real and on loopback: an Elasticsearch started by the engine runner, `rerank-proxy serve`
as its own process (so its RSS is its own), a redis-server for the shared cache, and a Cohere-
protocol test server (this project's `serve-reranker` app over a word-overlap scorer) whose
behaviour the schedule switches: healthy, 503s, slow (past the deadline), Redis stopped.

The load alternates searches (many distinct queries, some pages 2) and writes (`_create` with fresh
ids). At the end every acknowledged write is looked up by id: data lost must be 0.

    .venv/bin/python bench/soak.py --minutes 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import start_proxy, started_proxies  # noqa: E402
from rerank_proxy.local.rerank_server import build_app  # noqa: E402
from rerank_proxy.local_engines.runner import ensure_engine  # noqa: E402
from rerank_proxy.scoring.providers.base import RerankError, RerankResult  # noqa: E402

WORDS = ["jet", "engine", "noise", "wing", "flutter", "boundary", "layer", "shock", "wave", "heat", "transfer",
         "supersonic", "subsonic", "laminar", "turbulent", "pressure", "drag", "lift", "nozzle", "inlet", "blade",
         "rotor", "panel", "buckling", "plate", "shell"]
PHASES = ("healthy", "provider_503", "healthy", "provider_slow", "healthy", "redis_down")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScheduledScorer:
    """A word-overlap scorer whose failure mode the schedule sets."""

    name, model, pointwise = "soak", "overlap", True

    def __init__(self) -> None:
        self.mode = "healthy"
        self.calls: Counter[str] = Counter()

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.calls[self.mode] += 1
        if self.mode == "provider_503":
            raise RerankError("scheduled outage", retryable=True)
        if self.mode == "provider_slow":
            await asyncio.sleep(3.0)
        words = set(query.split())
        return RerankResult([len(words & set(d.split())) / (1 + len(words)) for d in documents])

    async def aclose(self) -> None:
        return None


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_redis(port: int, folder: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def load(proxy_url: str, index: str, stop: asyncio.Event, stats: dict[str, Any], worker: int) -> None:
    rng = random.Random(worker)
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            n += 1
            doc_id = f"w{worker}-{n}"
            try:
                response = await client.put(f"/{index}/_create/{doc_id}",
                                            json={"body": " ".join(rng.sample(WORDS, 6))})
                stats["writes"][response.status_code] += 1
                if response.status_code == 201:
                    stats["acked"].append(doc_id)
            except httpx.HTTPError as exc:
                stats["writes"][type(exc).__name__] += 1
            # Half the searches repeat common two-word queries (cache hits); half carry a serial
            # token, so they are new to the cache and reach the provider and its faults.
            query = " ".join(rng.sample(WORDS, 2)) + (f" q{worker}x{n}" if n % 2 else "")
            body = {"query": {"match": {"body": query}}, "size": 10, "from": 10 * rng.randint(0, 1)}
            try:
                response = await client.post(f"/{index}/_search", json=body)
                stats["searches"][response.status_code] += 1
                stats["outcomes"][response.headers.get("x-rerank", "?")] += 1
            except httpx.HTTPError as exc:
                stats["searches"][type(exc).__name__] += 1


async def main(args: argparse.Namespace) -> dict[str, Any]:
    engine = ensure_engine("elasticsearch", port=args.engine_port)
    index = "soak"
    async with httpx.AsyncClient(base_url=engine.url, timeout=60) as admin:
        await admin.delete(f"/{index}")
        await admin.put(f"/{index}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})

    scorer = ScheduledScorer()
    reranker_port, redis_port, proxy_port = free_port(), free_port(), free_port()
    reranker_server = uvicorn.Server(uvicorn.Config(build_app(scorer), host="127.0.0.1", port=reranker_port,
                                                    log_level="warning", lifespan="on"))
    reranker_task = asyncio.create_task(reranker_server.serve())
    folder = tempfile.mkdtemp(prefix="soak-")
    redis = start_redis(redis_port, folder)
    # bench.common's harness: the shipped defaults plus the test provider and the settings named here
    # (the fault schedule needs a short deadline and cooldown, Redis and a small cache); it waits for
    # /_rerank/health in a thread while this loop serves the test provider.
    proxy = await asyncio.to_thread(lambda: start_proxy(
        engine.url, provider=f"http://127.0.0.1:{reranker_port}", port=proxy_port, name="soak-proxy",
        ready="/_rerank/health", wait_workers=False, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        RERANK_DEADLINE_MS="1000", RERANK_ATTEMPT_TIMEOUT_MS="800", RERANK_BREAKER_COOLDOWN_S="5",
        CACHE_MAX_ENTRIES="20000"))
    proxy_url = proxy.url
    stats: dict[str, Any] = {"writes": Counter(), "searches": Counter(), "outcomes": Counter(), "acked": []}
    rss_start = rss_kb(proxy.pid)
    stop = asyncio.Event()
    workers = [asyncio.create_task(load(proxy_url, index, stop, stats, w)) for w in range(args.concurrency)]
    phase_s = args.minutes * 60 / len(PHASES)
    timeline = []
    started = time.monotonic()
    for phase in PHASES:
        scorer.mode = phase if phase.startswith("provider") else "healthy"
        if phase == "redis_down":
            redis.terminate()
            redis.wait()
        timeline.append({"phase": phase, "at_s": round(time.monotonic() - started, 1)})
        phase_end = time.monotonic() + phase_s
        while time.monotonic() < phase_end:
            await asyncio.sleep(min(10.0, max(0.0, phase_end - time.monotonic())))
            done = sum(stats["searches"].values())
            print(f"[{time.monotonic() - started:6.0f}s] phase={phase:<13} searches={done} "
                  f"writes={sum(stats['writes'].values())} outcomes={dict(stats['outcomes'])} "
                  f"rss={rss_kb(proxy.pid) // 1024} MB", flush=True)
        if phase == "redis_down":
            redis = start_redis(redis_port, folder)
    stop.set()
    await asyncio.gather(*workers)
    rss_end = rss_kb(proxy.pid)

    async with httpx.AsyncClient(base_url=engine.url, timeout=60) as admin:
        await admin.post(f"/{index}/_refresh")
        lost = []
        acked = stats["acked"]
        for start in range(0, len(acked), 1000):
            ids = acked[start:start + 1000]
            found = (await admin.post(f"/{index}/_mget", json={"ids": ids})).json()["docs"]
            lost += [d["_id"] for d in found if not d.get("found")]
        count = (await admin.get(f"/{index}/_count")).json()["count"]
    proxy.stop(30)
    redis.terminate()
    reranker_server.should_exit = True
    await reranker_task
    shutil.rmtree(folder, ignore_errors=True)
    return {"minutes": args.minutes, "concurrency": args.concurrency, "timeline": timeline,
            "searches": dict(stats["searches"]), "search_outcomes": dict(stats["outcomes"]),
            "writes": dict(stats["writes"]), "acknowledged_writes": len(acked), "documents_in_index": count,
            "data_lost": len(lost), "provider_calls_by_phase": dict(scorer.calls),
            "proxy_rss_mb": {"start": round(rss_start / 1024, 1), "end": round(rss_end / 1024, 1)},
            "settings_differ": started_proxies()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--engine-port", type=int, default=9460)
    parser.add_argument("--out", default=str(ROOT / "bench/results/soak.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["data_lost"] else 0)
