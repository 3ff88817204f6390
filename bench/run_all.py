"""Run every benchmark in one go, then rebuild the plots and BENCHMARKS.md tables.

    .venv/bin/python -m bench.run_all [--memory-duration 600] [--only passthrough search cost memory profile]
    .venv/bin/python -m bench.run_all --quick      # short runs, to check the machinery (numbers not for reporting)

Needs: the venv with the `bench` extra (matplotlib) and py-spy, and the Debian packages wrk, nginx,
redis-server. Starts (or reuses) an Elasticsearch on --engine-port (9400) with the engine runner
(rerank_proxy/local_engines/runner.py); `--stop-engine` stops it at the end.
"""

from __future__ import annotations

import argparse
import time

from . import cost, memory, passthrough, profile, report, search_latency
from .common import ensure_tools, log, save_json

STEPS = ("passthrough", "search", "cost", "memory", "profile")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--memory-duration", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="short runs to check the machinery")
    p.add_argument("--engine-port", type=int, default=9400)
    p.add_argument("--stop-engine", action="store_true")
    args = p.parse_args()
    ensure_tools("wrk", "nginx", "redis-server")
    port = ["--engine-port", str(args.engine_port)]
    quick = args.quick
    plan = {
        "passthrough": (passthrough,
                        (["--duration", "3", "--bulk-duration", "3", "--rounds", "1"] if quick else []) + port),
        "search": (search_latency, (["--duration", "3", "--rounds", "1", "--miss-count", "300", "--miss-count-c1", "50"]
                                    if quick else []) + port),
        "cost": (cost, (["--searches", "300", "--latency-samples", "30"] if quick else ["--searches", "2000"]) + port),
        "memory": (memory, ["--duration", "30" if quick else str(args.memory_duration), *port]),
        "profile": (profile, (["--duration", "8"] if quick else []) + port),
    }
    timings = {}
    for step in args.only:
        module, argv = plan[step]
        log(f"=== {step}: python -m {module.__name__} {' '.join(argv)}")
        started = time.time()
        module.run(module.parser().parse_args(argv))
        timings[step] = {"command": f".venv/bin/python -m {module.__name__} {' '.join(argv)}",
                         "seconds": round(time.time() - started)}
        log(f"=== {step} done in {timings[step]['seconds']} s")
    import json

    from .common import RESULTS
    previous = RESULTS / "run_all.json"
    steps = json.loads(previous.read_text())["steps"] if previous.exists() else {}
    steps.update(timings)
    save_json("run_all.json", {"steps": steps, "quick": quick})
    report.main()
    if args.stop_engine:
        from rerank_proxy.local_engines.runner import stop_engine
        stop_engine("elasticsearch", args.engine_port)


if __name__ == "__main__":
    main()
