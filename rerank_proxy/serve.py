"""`rerank-proxy serve`: run the proxy on its own HTTP/1.1 server (uvloop), one or more workers.

Flags override the environment. WORKERS=auto (the default) starts one worker per usable CPU
(rerank_proxy/cpus.py). With WORKERS > 1 the parent checks the address, forks the workers (each
builds its own clients, caches and model, and listens on its own SO_REUSEPORT socket, so the
kernel spreads connections evenly across workers) and only supervises: it passes SIGTERM/SIGINT
on, and starts a new worker if one dies. It makes two private directories the workers share: one
of Unix sockets through which the worker that receives a metrics scrape collects the others'
(admin/peers.py), and the per-host score tier (scoring/cache/host_share.py), so that several
workers pay the provider for a score no more often than one would. One worker needs neither.

With no ADMIN_TOKEN configured, the parent generates one before the workers fork (they inherit its
settings, so all of them, and any replacement, accept the same token) and logs the console's URL
with it once (admin/startup.py).

Exit codes: 2 for any configuration error (bad value, unusable path, address in use), 3 when the
start-up itself failed (e.g. the model could not load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping

from rerank_proxy.config import ConfigError, Settings, load_settings, unknown_setting_warnings

_log = logging.getLogger("rerank_proxy")
CONFIG_ERROR = 2
STARTUP_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (env PORT, default 8080)")
    parser.add_argument("--workers", help="worker processes, an integer or auto (env WORKERS, default auto: "
                                          "one per usable CPU)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log level (env LOG_LEVEL, default info)")


def run(args: argparse.Namespace) -> int:
    overrides = {"HOST": args.host, "PORT": args.port, "WORKERS": args.workers, "LOG_LEVEL": args.log_level}
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    from rerank_proxy.admin import startup

    try:
        settings = load_settings()
        startup.check_environment(settings)
        settings, generated_token = startup.with_admin_token(settings, os.environ)
    except ConfigError as exc:
        print(f"rerank-proxy: configuration error: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    from rerank_proxy.admin import logs

    logs.setup(settings.log_level, settings.log_format)
    for warning in unknown_setting_warnings(os.environ):
        _log.warning(warning)
    _log.info("workers", extra={"fields": {"workers": settings.workers, "why": workers_reason(os.environ)}})
    try:
        # One worker listens on this socket; with several, it only holds the address (bound, not
        # listening, so the kernel never hands it a connection) and each worker listens on its own.
        sock = _bind(settings.host, settings.port, listen=settings.workers <= 1, reuse_port=settings.workers > 1)
    except OSError as exc:
        print(f"rerank-proxy: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
              "set HOST/PORT (or --host/--port) to a free address", file=sys.stderr)
        return CONFIG_ERROR
    if generated_token:
        bound_host, bound_port = sock.getsockname()[:2]
        startup.log_console_url(bound_host, bound_port, settings.admin_token)
    if settings.workers <= 1:
        return run_worker(settings, sock)
    return _supervise(settings, sock)


def workers_reason(env: Mapping[str, str]) -> str:
    """Why this many workers, for the start-up log."""
    raw = env.get("WORKERS", "auto").strip()
    if raw.lower() != "auto":
        return f"WORKERS={raw}"
    from rerank_proxy.cpus import usable_cpus

    return f"WORKERS=auto: {usable_cpus()[1]}"


def _bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.setblocking(False)
    return sock


def run_worker(settings: Settings, sock: socket.socket, peer_dir: str | None = None,
               host_dir: str | None = None) -> int:
    import uvloop

    return uvloop.run(_serve(settings, sock, peer_dir, host_dir))


async def _serve(settings: Settings, sock: socket.socket, peer_dir: str | None = None,
                 host_dir: str | None = None) -> int:
    from rerank_proxy.admin import logs, startup
    from rerank_proxy.admin.peers import PeerMetrics
    from rerank_proxy.app import ProxyApp
    from rerank_proxy.edge import ProxyServer

    app = ProxyApp(settings, host_dir=host_dir)
    server = ProxyServer(app)
    try:
        await server.start(sock=sock)
    except Exception as exc:  # noqa: BLE001 - any start-up failure: one clear line and exit 3, not a trace
        print(f"rerank-proxy: start-up failed: {logs.redact(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return STARTUP_FAILED
    settle_garbage_collector()
    runtime = app.runtime
    assert runtime is not None
    peers = None
    if peer_dir is not None:
        warmer = runtime.warmer
        peers = PeerMetrics(peer_dir, runtime.metrics, supervisor_pid=os.getppid(),
                            vectors=warmer.status if warmer is not None else None)
        await peers.start()
        runtime.metrics.peers = peers
    await startup.check_shared_cache(runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = sock.getsockname()[:2]
    model = getattr(runtime.reranker, "model", None)
    has_host_tier = runtime.cache is not None and runtime.cache.host is not None
    _log.info("listening", extra={"fields": {"host": host, "port": port, "pid": os.getpid(),
                                             **startup.summary(settings, model, host_tier=has_host_tier)}})
    await stop.wait()
    _log.info("shutting down", extra={"fields": {"pid": os.getpid()}})
    if peers is not None:
        await peers.stop()
    await server.stop()
    logs.close_access_sink()
    return 0


# Collections of the youngest generation start after this many more container objects were made than
# freed (CPython's default is 700). A search keeps a few thousand parsed objects alive while it waits,
# so with the default, 32 searches in flight set off a collection every few searches, each scanning
# all of them and promoting them towards costly full collections. Measured on the cache-miss bench
# (1 worker, 32 in flight): 0.1 ms of collection per search and pauses up to 36 ms with the defaults;
# 7 ms in all over 1,000 searches with this threshold and the start-up objects frozen.
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """After start-up: the objects made so far (modules, the model's tokenizer, settings) live as
    long as the process, so they are moved out of the collector's sight (`gc.freeze`) instead of
    being scanned by every full collection; and young collections run less often (see above)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def _supervise(settings: Settings, sock: socket.socket) -> int:
    peer_dir = tempfile.mkdtemp(prefix="rerank-proxy-workers-")  # mkdtemp: mode 0700, this user only
    host_dir = tempfile.mkdtemp(prefix="rerank-proxy-host-")
    result = _Supervisor(settings, sock, peer_dir, host_dir).run()
    shutil.rmtree(peer_dir, ignore_errors=True)
    shutil.rmtree(host_dir, ignore_errors=True)
    return result


class _Supervisor:
    """The parent of WORKERS > 1: forks the workers, passes SIGTERM/SIGINT on, replaces a dead one."""

    def __init__(self, settings: Settings, sock: socket.socket, peer_dir: str, host_dir: str) -> None:
        self.settings = settings
        self.sock = sock
        self.peer_dir = peer_dir
        self.host_dir = host_dir
        self.children: set[int] = set()
        self.stopping = False
        self.result = 0

    def run(self) -> int:
        """Until every worker has exited: 0, or STARTUP_FAILED when one could not start."""
        signal.signal(signal.SIGTERM, self.stop_workers)
        signal.signal(signal.SIGINT, self.stop_workers)
        for _ in range(self.settings.workers):
            self.spawn()
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            self.children.discard(pid)
            self.worker_exited(pid, os.waitstatus_to_exitcode(status))
        return self.result

    def spawn(self) -> None:
        settings = self.settings
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = STARTUP_FAILED
            try:
                self.sock.close()
                code = run_worker(settings, _bind(settings.host, settings.port, reuse_port=True),
                                  self.peer_dir, self.host_dir)
            finally:
                os._exit(code)
        self.children.add(pid)

    def stop_workers(self, signum: int, frame: object) -> None:
        """The signal handler: every worker is sent SIGTERM, and none is replaced any more."""
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def worker_exited(self, pid: int, code: int) -> None:
        """A worker that failed to start stops them all; one that exited otherwise is replaced."""
        if self.stopping:
            return
        if code == STARTUP_FAILED:
            self.result = STARTUP_FAILED
            self.stop_workers(signal.SIGTERM, None)
            return
        _log.warning("worker exited; starting another", extra={"fields": {"pid": pid, "exit_code": code}})
        self.spawn()
