"""`rerank-proxy engine up|down|status|fetch`: local Elasticsearch/OpenSearch without Docker.

    rerank-proxy engine up --engine elasticsearch            # 9.5.4 on http://127.0.0.1:9200
    rerank-proxy engine up --engine opensearch --nodes 3     # 2.19.6 on ports 9201-9203
    rerank-proxy engine up --engine opensearch --version 3.6.0 --port 9301
    rerank-proxy engine status
    rerank-proxy engine down --engine elasticsearch          # or --port P, or --all
    rerank-proxy engine fetch                                # pre-download both default builds

See `rerank_proxy/local_engines/runner.py` for ports, cache layout and environment variables.
"""

from __future__ import annotations

import argparse
import sys

from rerank_proxy.local_engines.distributions import DEFAULT_VERSIONS, KINDS, machine_default
from rerank_proxy.local_engines.runner import (
    DEFAULT_HEAP,
    DEFAULT_PORTS,
    DEFAULT_TIMEOUT_S,
    EngineInfo,
    ensure_engine,
    fetch_engine,
    health,
    running_engines,
    stop_all,
    stop_engine,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    up = actions.add_parser("up", help="start an engine (or reuse the running one) and wait until healthy")
    up.add_argument("--engine", choices=KINDS, required=True)
    up.add_argument("--version", help=f"build to run (default: {_defaults_text()})")
    up.add_argument("--port", type=int, help=f"HTTP port of node 0 (default: {_ports_text()})")
    up.add_argument("--nodes", type=int, default=1,
                    help="cluster size; node i listens on port+i, so keep clear of other engines (default: 1)")
    up.add_argument("--heap", default=DEFAULT_HEAP, help=f"JVM heap per node (default: {DEFAULT_HEAP})")
    up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help=f"seconds to wait for yellow health (default: {DEFAULT_TIMEOUT_S:.0f})")

    down = actions.add_parser("down", help="stop an engine and delete its data")
    down.add_argument("--engine", choices=KINDS,
                      help="the engine on this kind's default port (with --all: every one of this kind)")
    down.add_argument("--port", type=int, help="the engine whose node 0 listens on this port")
    down.add_argument("--all", action="store_true", help="every engine started by rerank-proxy")

    actions.add_parser("status", help="list engines started by rerank-proxy, with their health")

    fetch = actions.add_parser("fetch", help="download and unpack builds ahead of time")
    fetch.add_argument("--engine", choices=KINDS, help="only this kind (default: both)")
    fetch.add_argument("--version", help="this version instead of the default")


def run(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.action](args)
    except RuntimeError as exc:  # EngineError, JavaNotFound, a failed download
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    version = args.version
    if version is None:
        build, note = machine_default(args.engine)
        version = build.version
        if note:
            print(note, file=sys.stderr)
    info = ensure_engine(args.engine, version=version, port=args.port, nodes=args.nodes,
                         heap=args.heap, timeout_s=args.timeout)
    print(f"{info.kind} {info.version} {'already running' if info.reused else 'started'}: {' '.join(info.urls)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    if args.all:
        stopped = stop_all(kind=args.engine)
    elif args.port is not None or args.engine is not None:
        one = stop_engine(kind=args.engine, port=args.port)
        stopped = [one] if one else []
    else:
        print("error: say which engine: --engine KIND, --port PORT or --all", file=sys.stderr)
        return 2
    if not stopped:
        print("nothing to stop")
    for info in stopped:
        print(f"stopped {info.kind} {info.version} on port {info.port}")
    return 0


def _status(args: argparse.Namespace) -> int:
    engines = running_engines()
    if not engines:
        print("no engines started by rerank-proxy")
        return 0
    rows: list[tuple[str, ...]] = [("KIND", "VERSION", "NODES", "HTTP PORTS", "PIDS", "HEALTH")]
    rows += [_status_row(info) for info in engines]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _status_row(info: EngineInfo) -> tuple[str, ...]:
    pids = ",".join(str(pid) if info.node_alive(i) else "-" for i, pid in enumerate(info.pids))
    ports = ",".join(str(port) for port in info.http_ports)
    return (info.kind, info.version, str(info.nodes), ports, pids, health(info))


def _fetch(args: argparse.Namespace) -> int:
    for kind in [args.engine] if args.engine else KINDS:
        home = fetch_engine(kind, args.version)
        print(f"{kind}: {home}")
    return 0


def _defaults_text() -> str:
    return ", ".join(f"{kind} {version}" for kind, version in DEFAULT_VERSIONS.items())


def _ports_text() -> str:
    return ", ".join(f"{kind} {port}" for kind, port in DEFAULT_PORTS.items())


_ACTIONS = {"up": _up, "down": _down, "status": _status, "fetch": _fetch}
