"""Pass-through benchmark: what the proxy adds to requests it does not rerank.

`GET /bench-small/_doc/{id}` (a ~50-byte document), a `_bulk` of 1,000 small documents and (with
`--ops ... search_bypass`) a `size: 0` search the proxy relays without reranking, at
concurrency 1 and 32, sent by wrk (a separate process) straight to the engine, through nginx as a
plain reverse proxy (bench/nginx.conf: keepalive upstream, worker_processes auto, its default
access log to a file), and through rerank-proxy on its shipped defaults (nothing set but the
engine: WORKERS=auto, LOG_LEVEL=info with an access line per request, the built-in model) and the
same with LOG_LEVEL=warning, which prices the access log. The targets are interleaved within each
round and the rounds repeated; a cell's figure is the median over rounds.

    .venv/bin/python -m bench.passthrough [--duration 8] [--bulk-duration 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import (
    SMALL_INDEX,
    Service,
    bulk_body,
    cpu_seconds,
    engine_version,
    index_small,
    loadavg,
    log,
    machine_info,
    median,
    run_wrk,
    save_json,
    start_engine,
    start_nginx,
    start_proxy,
    started_proxies,
)

TARGETS = ("engine", "nginx", "proxy_defaults", "proxy_no_access_log")
CONCURRENCY = (1, 32)
PCTS = [str(p) for p in range(1, 100)] + ["99.5", "99.9", "99.99"]


def operations() -> dict[str, list[tuple[str, str, bytes, dict[str, str]]]]:
    return {
        "get": [("GET", f"/{SMALL_INDEX}/_doc/{i}", b"", {}) for i in range(0, 1000, 7)],
        "bulk_1000": [("POST", "/_bulk", bulk_body(1000), {"Content-Type": "application/x-ndjson"})],
        # A search the proxy does not rerank (size 0): read whole at the edge, then relayed.
        "search_bypass": [("POST", f"/{SMALL_INDEX}/_search", b'{"size": 0, "query": {"match_all": {}}}',
                           {"Content-Type": "application/json"})],
    }


def _cpu(services: list[Service]) -> float:
    total = 0.0
    for s in services:
        pids = {s.pid, *s.child_pids()}
        total += sum(cpu_seconds(p) for p in pids)
    return total


def measure(urls: dict[str, str], cpu_of: dict[str, list[Service]], duration: float, rounds: int,
            ops: list[str], bulk_duration: float) -> dict[str, Any]:
    requests = operations()
    cells: dict[str, dict[str, Any]] = {}
    for _target, url in urls.items():   # warm every path (connection pools, JIT of the engine)
        for op in ops:
            run_wrk(url, requests[op], connections=4, duration_s=2)
    for r in range(rounds):
        for op in ops:
            for conc in CONCURRENCY:
                for target, url in urls.items():
                    key = f"{op}/c{conc}/{target}"
                    before = _cpu(cpu_of.get(target, []))
                    secs = max(duration, bulk_duration) if op.startswith("bulk") else duration
                    report = run_wrk(url, requests[op], connections=conc, duration_s=secs)
                    used = _cpu(cpu_of.get(target, [])) - before
                    report.pop("stdout", None)
                    lat = report["latency_us"]["percentiles"]
                    rps = report["requests"] / (report["duration_us"] / 1e6)
                    errors = sum(report["errors"].values())
                    cells.setdefault(key, {"runs": []})["runs"].append({
                        "p50_ms": lat["50"] / 1000, "p99_ms": lat["99"] / 1000, "rps": rps,
                        "requests": report["requests"], "errors": report["errors"],
                        "cpu_ms_per_request": (used * 1000 / report["requests"]
                                               if report["requests"] and cpu_of.get(target) else None),
                        "percentiles_ms": {p: lat[p] / 1000 for p in PCTS}, "loadavg": loadavg()})
                    log(f"round {r + 1}/{rounds} {key}: p50 {lat['50'] / 1000:.2f} ms, p99 {lat['99'] / 1000:.2f} ms, "
                        f"{rps:.0f} req/s{f', {errors} errors' if errors else ''}")
    for _key, cell in cells.items():
        # a run in which no request completed (an engine stall longer than the run) has no latency
        # figures; it is kept in "runs" and counted, and left out of the medians
        cell["stalled_runs"] = sum(1 for x in cell["runs"] if not x["requests"])
        runs = [x for x in cell["runs"] if x["requests"]] or cell["runs"]
        cell["p50_ms"] = median(x["p50_ms"] for x in runs)
        cell["p99_ms"] = median(x["p99_ms"] for x in runs)
        cell["rps"] = median(x["rps"] for x in runs)
        cpu = [x["cpu_ms_per_request"] for x in runs if x["cpu_ms_per_request"] is not None]
        cell["cpu_ms_per_request"] = median(cpu) if cpu else None
        cell["errors"] = sum(sum(x["errors"].values()) for x in runs)
        cell["percentiles_ms"] = {p: median(x["percentiles_ms"][p] for x in runs) for p in PCTS}
    return cells


def derive(cells: dict[str, Any], ops: list[str], targets: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    for op in ops:
        for conc in CONCURRENCY:
            base = cells[f"{op}/c{conc}/engine"]
            nginx = cells.get(f"{op}/c{conc}/nginx")
            for target in targets:
                cell = cells[f"{op}/c{conc}/{target}"]
                row = {"p50_ms": cell["p50_ms"], "p99_ms": cell["p99_ms"], "rps": cell["rps"],
                       "added_p50_ms": cell["p50_ms"] - base["p50_ms"], "added_p99_ms": cell["p99_ms"] - base["p99_ms"],
                       "rps_vs_engine": cell["rps"] / base["rps"],
                       "rps_vs_nginx": cell["rps"] / nginx["rps"] if nginx else None,
                       "cpu_ms_per_request": cell["cpu_ms_per_request"], "errors": cell["errors"],
                       "stalled_runs": cell["stalled_runs"]}
                table[f"{op}/c{conc}/{target}"] = row
                if not target.startswith("proxy") or nginx is None:
                    continue
                if conc == 1:
                    gap = row["added_p50_ms"] - (nginx["p50_ms"] - base["p50_ms"])
                    checks.append({"check": f"{op} c=1 {target}: added p50 within 1 ms of nginx's",
                                   "value_ms": gap, "met": gap <= 1.0})
                else:
                    checks.append({"check": f"{op} c=32 {target}: throughput >= 80% of nginx's",
                                   "value": row["rps_vs_nginx"], "met": row["rps_vs_nginx"] >= 0.8})
        for conc in CONCURRENCY:
            logged, quiet = cells.get(f"{op}/c{conc}/proxy_defaults"), cells.get(f"{op}/c{conc}/proxy_no_access_log")
            if logged and quiet:
                cost = 1 - logged["rps"] / quiet["rps"]
                checks.append({"check": f"{op} c={conc}: the access log costs at most 5% of throughput",
                               "value": cost, "met": cost <= 0.05})
    return {"table": table, "checks": checks}


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = start_engine(port=args.engine_port)
    index_small(engine)
    services: list[Service] = []
    try:
        nginx = start_nginx(engine)
        services.append(nginx)
        shipped = start_proxy(engine, provider=None, name="proxy-defaults")
        services.append(shipped)
        quiet = start_proxy(engine, provider=None, name="proxy-no-access-log", LOG_LEVEL="warning")
        services.append(quiet)
        urls = {"engine": engine, "nginx": nginx.url, "proxy_defaults": shipped.url, "proxy_no_access_log": quiet.url}
        cpu_of = {"nginx": [nginx], "proxy_defaults": [shipped], "proxy_no_access_log": [quiet]}
        results: dict[str, Any] = {"machine": machine_info(), "engine": f"elasticsearch {engine_version(engine)}",
                                   "params": vars(args)}
        cells = measure(urls, cpu_of, args.duration, args.rounds, args.ops, args.bulk_duration)
        results["cells"] = cells
        results.update(derive(cells, args.ops, list(urls)))
        results["machine"]["loadavg_at_end"] = list(os.getloadavg())
        results["settings_differ"] = started_proxies()
    finally:
        for s in reversed(services):
            s.stop()
    save_json("passthrough.json", results)
    for check in results["checks"]:
        log(f"{'MET' if check['met'] else 'NOT MET'}: {check['check']} "
            f"({check.get('value_ms', check.get('value')):.3f})")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (default 8)")
    p.add_argument("--bulk-duration", type=float, default=12.0, help="seconds per wrk run of _bulk (default 12)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--ops", nargs="+", default=["get", "search_bypass"], choices=["get", "bulk_1000", "search_bypass"])
    p.add_argument("--engine-port", type=int, default=9400)
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
