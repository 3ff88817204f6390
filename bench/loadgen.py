"""A bounded asyncio HTTP load generator, run as its own process by the benchmarks.

    python -m bench.loadgen SPEC.json OUT.json

SPEC (JSON):
- `mode: "list"`: send `requests` (each {url, method, body?, headers?, tag?}) in order, cycling until
  `count` requests were sent (default: each once), with `concurrency` in flight; one record per
  request: [i, tag, start_s, latency_ms, status, {captured headers}].
- `mode: "mix"`: for `duration_s`, with `concurrency` in flight, draw a kind by `weights`
  ({"search": w, "get": w, "bulk": w}); searches use a distinct query each (a query of `queries`
  plus a number), gets a random id of `get_ids`, bulks the `bulk_body`. Records per kind: latencies
  and status counts only (a long run would make per-request records too big).
Both bounded by `max_s` (hard stop). Progress goes to stderr every `progress_s` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from typing import Any

import aiohttp


def _progress(message: str) -> None:
    print(f"[loadgen {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run_list(spec: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    requests = spec["requests"]
    count = int(spec.get("count") or len(requests))
    capture = [h.lower() for h in spec.get("capture_headers", [])]
    concurrency = int(spec.get("concurrency", 1))
    max_s = float(spec.get("max_s", 3600))
    progress_s = float(spec.get("progress_s", 5))
    counter = itertools.count()
    records: list[list[Any]] = []
    t0 = time.perf_counter()
    prepared = [(r["method"], r["url"], r.get("body").encode() if isinstance(r.get("body"), str) else None,
                 r.get("headers") or {}, r.get("tag", "")) for r in requests]

    async def worker() -> None:
        while True:
            i = next(counter)
            if i >= count or time.perf_counter() - t0 > max_s:
                return
            method, url, body, headers, tag = prepared[i % len(prepared)]
            start = time.perf_counter()
            try:
                async with session.request(method, url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
                    captured = {h: response.headers.get(h, "") for h in capture}
            except Exception as exc:  # recorded, not fatal: the benchmark reports errors
                status, captured = 0, {"error": f"{type(exc).__name__}: {exc}"[:200]}
            end = time.perf_counter()
            records.append([i, tag, round(start - t0, 6), (end - start) * 1000, status, captured])

    async def reporter() -> None:
        while True:
            await asyncio.sleep(progress_s)
            done = len(records)
            _progress(f"{done}/{count} requests, {done / (time.perf_counter() - t0):.0f}/s")

    task = asyncio.create_task(reporter())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    task.cancel()
    elapsed = time.perf_counter() - t0
    records.sort(key=lambda r: r[0])
    return {"mode": "list", "elapsed_s": elapsed, "concurrency": concurrency, "records": records}


async def run_mix(spec: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    rng = random.Random(spec.get("seed", 1))
    base = spec["base_url"]
    duration = float(spec["duration_s"])
    concurrency = int(spec.get("concurrency", 8))
    progress_s = float(spec.get("progress_s", 10))
    weights = spec["weights"]
    kinds = list(weights)
    queries = spec["queries"]
    search_path = spec["search_path"]
    get_paths = [spec["get_path"].format(id=i) for i in spec["get_ids"]]
    bulk = spec["bulk_body"].encode()
    serial = itertools.count(1)
    stats = {k: {"latencies_ms": [], "status": {}} for k in kinds}
    headers_json = {"content-type": "application/json"}
    headers_nd = {"content-type": "application/x-ndjson"}
    t0 = time.perf_counter()

    async def one(kind: str) -> None:
        if kind == "search":
            n = next(serial)
            query = f"{queries[n % len(queries)]} {n}"
            body = json.dumps({"query": {"multi_match": {"query": query, "fields": ["title^2", "text"]}}}).encode()
            method, url, data, headers = "POST", base + search_path, body, headers_json
        elif kind == "get":
            method, url, data, headers = "GET", base + rng.choice(get_paths), None, {}
        else:
            method, url, data, headers = "POST", base + "/_bulk", bulk, headers_nd
        start = time.perf_counter()
        try:
            async with session.request(method, url, data=data, headers=headers) as response:
                await response.read()
                status = str(response.status)
        except Exception as exc:
            status = type(exc).__name__
        entry = stats[kind]
        entry["latencies_ms"].append(round((time.perf_counter() - start) * 1000, 3))
        entry["status"][status] = entry["status"].get(status, 0) + 1

    async def worker() -> None:
        while time.perf_counter() - t0 < duration:
            await one(rng.choices(kinds, [weights[k] for k in kinds])[0])

    async def reporter() -> None:
        while True:
            await asyncio.sleep(progress_s)
            counts = {k: len(v["latencies_ms"]) for k, v in stats.items()}
            _progress(f"{time.perf_counter() - t0:.0f}/{duration:.0f}s {counts}")

    task = asyncio.create_task(reporter())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    task.cancel()
    return {"mode": "mix", "elapsed_s": time.perf_counter() - t0, "concurrency": concurrency, "stats": stats}


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    concurrency = int(spec.get("concurrency", 1))
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1) * 2, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout_s", 30)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        if spec.get("mode", "list") == "mix":
            return await run_mix(spec, session)
        return await run_list(spec, session)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    try:
        import uvloop
        out = uvloop.run(main_async(spec))
    except ImportError:
        out = asyncio.run(main_async(spec))
    with open(sys.argv[2], "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
