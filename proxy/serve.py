"""`rerank-proxy serve`: run the proxy with uvicorn (uvloop + httptools).

Flags override the environment. uvicorn's own `Server` and `Date` headers are switched off so the
responses clients see carry exactly the engine's headers plus the documented X-Rerank ones.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (env PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (env WORKERS, default 1)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log level (env LOG_LEVEL, default info)")


def run(args: argparse.Namespace) -> int:
    overrides = {"HOST": args.host, "PORT": args.port, "WORKERS": args.workers, "LOG_LEVEL": args.log_level}
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"rerank-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from .ops import logs

    logs.setup(settings.log_level)
    uvicorn.run("proxy.serve:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, loop="uvloop", http="httptools", lifespan="on",
                access_log=False, server_header=False, date_header=False, proxy_headers=False,
                log_config=None, log_level=settings.log_level,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None, timeout_keep_alive=75)
    return 0


def create_app():
    """uvicorn factory: each worker reads (already validated) settings and builds its app."""
    from .app import ProxyApp
    from .ops import logs

    settings = load_settings()
    logs.setup(settings.log_level)
    return ProxyApp(settings)
