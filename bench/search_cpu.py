"""CPU time per reranked search inside the proxy's search pipeline, cache hit and cache miss.

In-process harness: it builds the real runtime (`rerank_proxy.app.build_runtime`: upstream pool, Cohere
provider behind the resilience layer, score cache, `SearchPipeline`) and calls
`SearchPipeline.search` directly, so the figures are the pipeline's CPU (engine client, parse,
hit texts, cache, provider client, merge, serialise) without the HTTP server in front of it. The
engine is a real Elasticsearch (started or reused on port 9400, Cranfield indexed as in
bench/common.py); the provider is the Cohere-protocol test server (bench/count_server.py) in its
own process with no delay, so the provider client's CPU is counted and the server's is not.

CPU is `time.process_time()` over a batch of searches (this process only; the engine and the
test server are other processes), so a busy 2-core machine changes the wall time but hardly the
CPU figure. Each scenario runs sequentially and with 32 concurrent tasks, `--repeats` times;
the median and the minimum over repeats are printed and written to bench/results/search_cpu.json.
`engine_fetch` is the baseline every search pays and this layer does not own: the same
size-100 request to the engine through the upstream pool, read whole, nothing else.

    .venv/bin/python -m bench.search_cpu [--hit-searches 2000] [--miss-searches 800] [--repeats 3]

The before/after record of the hit- and miss-path work is bench/results/search_cpu_before_after.json
("before" = this script run in an export of commit 89051b1, interleaved with runs of the new code).
    .venv/bin/python -m bench.search_cpu --profile miss --concurrency 32 [--profiler pyinstrument]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from rerank_proxy.runtime import Runtime, build_runtime
from rerank_proxy.search.pipeline import Finished

from .common import (
    CRANFIELD_INDEX,
    DEFAULT_ENGINE_PORT,
    Service,
    in_process_settings,
    index_cranfield,
    load_queries,
    loadavg,
    log,
    machine_info,
    save_json,
    search_body,
    start_counting_server,
    start_engine,
    started_proxies,
)

HEADERS = {"content-type": "application/json"}
RAW_HEADERS = [(b"content-type", b"application/json")]
HIT_QUERIES = 50
_serial = itertools.count(1)

Search = Callable[[int], Awaitable[None]]


def _settings(engine: str, provider: Service, extra: list[str] | None = None) -> Any:
    """The shipped defaults with this provider, plus `extra` settings (NAME=VALUE), as a proxy started
    by bench.common's harness would load them (recorded for the results' settings_differ)."""
    chosen = dict(item.split("=", 1) for item in extra or [])
    settings, _ = in_process_settings(engine, provider, **chosen)
    return settings


async def _search(runtime: Runtime, body: bytes, expect: str) -> None:
    result = await runtime.pipeline.search("POST", CRANFIELD_INDEX, {}, HEADERS, RAW_HEADERS, body)
    if not isinstance(result, Finished) or result.status != 200 or result.outcome != expect:
        raise RuntimeError(f"expected a {expect} search, got {result!r:.300}")


def hit_search(runtime: Runtime, queries: list[str]) -> Search:
    """Cycle through the warmed queries: every score comes from the in-process cache."""
    bodies = [orjson.dumps(search_body(q)) for q in queries[:HIT_QUERIES]]
    return lambda n: _search(runtime, bodies[n % len(bodies)], "cached")


def miss_search(runtime: Runtime, queries: list[str]) -> Search:
    """A distinct query text per search (a Cranfield query plus a serial): every document is sent."""
    def run(n: int) -> Awaitable[None]:
        text = f"{queries[n % len(queries)]} {next(_serial)}"
        return _search(runtime, orjson.dumps(search_body(text)), "reranked")
    return run


def engine_fetch(runtime: Runtime, queries: list[str]) -> Search:
    """The size-100 engine request alone, through the same engine transport (the floor)."""
    bodies = [orjson.dumps(dict(search_body(q), size=100, **{"from": 0})) for q in queries[:HIT_QUERIES]]
    target = f"/{CRANFIELD_INDEX}/_search"

    async def run(n: int) -> None:
        answer = await runtime.engine.fetch("POST", target, RAW_HEADERS, bodies[n % len(bodies)])
        if answer.status != 200:
            raise RuntimeError(f"engine answered {answer.status}")
    return run


async def run_batch(search: Search, count: int, concurrency: int) -> dict[str, float]:
    """CPU and wall ms per search over `count` searches run by `concurrency` tasks."""
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < count:
            await search(n)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_ms": cpu * 1000 / count, "wall_ms": wall * 1000 / count}


async def warm(runtime: Runtime, queries: list[str]) -> None:
    for q in queries[:HIT_QUERIES]:
        result = await runtime.pipeline.search("POST", CRANFIELD_INDEX, {}, HEADERS, RAW_HEADERS,
                                               orjson.dumps(search_body(q)))
        assert isinstance(result, Finished), result
        assert result.status == 200, result
    await run_batch(hit_search(runtime, queries), 200, 1)
    await run_batch(miss_search(runtime, queries), 100, 8)
    await run_batch(engine_fetch(runtime, queries), 100, 1)


async def measure(runtime: Runtime, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    scenarios = {"engine_fetch": (engine_fetch, args.hit_searches), "hit": (hit_search, args.hit_searches),
                 "miss": (miss_search, args.miss_searches)}
    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(args.repeats):  # interleaved, so a noisy period hurts every cell alike
        for name, (factory, count) in scenarios.items():
            for conc in (1, 32):
                cell = await run_batch(factory(runtime, queries), count, conc)
                runs.setdefault(f"{name}/c{conc}", []).append(cell)
                log(f"repeat {r + 1}/{args.repeats} {name} c={conc}: {cell['cpu_ms']:.3f} CPU ms/search, "
                    f"{cell['wall_ms']:.3f} wall ms/search")
    return {key: {"cpu_ms_median": statistics.median(c["cpu_ms"] for c in cells),
                  "cpu_ms_min": min(c["cpu_ms"] for c in cells),
                  "wall_ms_median": statistics.median(c["wall_ms"] for c in cells),
                  "runs": cells} for key, cells in runs.items()}


async def profile(runtime: Runtime, queries: list[str], args: argparse.Namespace) -> None:
    factory = {"hit": hit_search, "miss": miss_search, "engine_fetch": engine_fetch}[args.profile]
    count = args.miss_searches if args.profile == "miss" else args.hit_searches
    search = factory(runtime, queries)
    if args.profiler == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        await run_batch(search, count, args.concurrency)
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False))
        return
    # The default (wall) timer: a CPU-time timer costs more per call than many of the calls it
    # times, which inflates call-heavy code; run on a quiet moment or read shares, not absolutes.
    prof = cProfile.Profile()
    prof.enable()
    await run_batch(search, count, args.concurrency)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats(args.sort)
    stats.print_stats(args.top)
    print(out.getvalue())


def add_own(cells: dict[str, Any]) -> None:
    """CPU beyond the bare engine fetch at the same concurrency: what the pipeline itself adds."""
    for key, cell in cells.items():
        name, conc = key.split("/")
        floor = cells.get(f"engine_fetch/{conc}")
        if floor is not None and name != "engine_fetch":
            cell["own_cpu_ms_median"] = cell["cpu_ms_median"] - floor["cpu_ms_median"]


def print_table(cells: dict[str, Any]) -> None:
    print(f"{'scenario':<18} {'CPU ms/search (median)':>24} {'(min)':>8} {'minus engine_fetch':>20} "
          f"{'wall ms/search':>16}")
    for key, cell in cells.items():
        own = cell.get("own_cpu_ms_median")
        print(f"{key:<18} {cell['cpu_ms_median']:>24.3f} {cell['cpu_ms_min']:>8.3f} "
              f"{'' if own is None else f'{own:.3f}':>20} {cell['wall_ms_median']:>16.3f}")


async def main_async(args: argparse.Namespace) -> None:
    engine = start_engine("elasticsearch", args.engine_port)
    index_cranfield(engine)
    queries = load_queries()
    provider = start_counting_server(0)
    try:
        runtime = await build_runtime(_settings(engine, provider, args.setting))
        try:
            await warm(runtime, queries)
            if args.profile:
                await profile(runtime, queries, args)
                return
            load_start = loadavg()
            cells = await measure(runtime, queries, args)
            add_own(cells)
            print_table(cells)
            save_json(args.output, {"machine": machine_info(), "loadavg": [load_start, loadavg()],
                                    "label": args.label, "hit_searches": args.hit_searches,
                                    "miss_searches": args.miss_searches, "repeats": args.repeats,
                                    "cells": cells, "settings_differ": started_proxies()})
        finally:
            runtime.engine.close()
            if runtime.reranker is not None:
                await runtime.reranker.aclose()
    finally:
        provider.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-port", type=int, default=DEFAULT_ENGINE_PORT)
    parser.add_argument("--hit-searches", type=int, default=2000)
    parser.add_argument("--miss-searches", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting that differs from the shipped defaults (repeatable)")
    parser.add_argument("--label", default="", help="free text stored with the results (e.g. before/after)")
    parser.add_argument("--output", default="search_cpu.json", help="file name under bench/results/")
    parser.add_argument("--profile", choices=("hit", "miss", "engine_fetch"), default=None,
                        help="profile one scenario instead of measuring")
    parser.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    parser.add_argument("--concurrency", type=int, default=1, help="tasks while profiling")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
