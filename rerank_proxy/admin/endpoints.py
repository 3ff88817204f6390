"""The proxy's own endpoints under /_rerank/ (a prefix no engine API uses).

- /_rerank/health   liveness: the process answers
- /_rerank/ready    readiness: this process serves (200); engine, reranker and cache state reported;
                    `?engine=required` also asks for a reachable engine (503 without one)
- /_rerank/metrics  Prometheus text format, every worker merged
- /_rerank/admin/*  cache stats and flush, effective configuration (secrets redacted), breaker
                    state and reset; bearer ADMIN_TOKEN, compared in constant time; every admin
                    endpoint answers 404 when no token is configured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rerank_proxy.admin.metrics import CONTENT_TYPE
from rerank_proxy.console.routes import console_routes
from rerank_proxy.errors import error_body
from rerank_proxy.runtime import Runtime

ENGINE_PROBE_TIMEOUT_S = 2.0


def _error(status: int, error_type: str, reason: str) -> Response:
    return Response(error_body(status, error_type, reason), status, media_type="application/json")


def build_ops_app(runtime: Runtime) -> Starlette:
    settings = runtime.settings

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def probe_engine() -> bool:
        try:
            answer = await asyncio.wait_for(runtime.engine.fetch("GET", "/_cluster/health", [], None),
                                            ENGINE_PROBE_TIMEOUT_S)
            up = answer.status < 500
        except Exception:
            up = False
        runtime.metrics.engine_up.set(1 if up else 0)
        return up

    async def ready(request: Request) -> Response:
        # Ready means this process can serve: with the engine down it still answers every client
        # with the engine-style 502, which beats every replica leaving the Service at once. The
        # engine's state is reported here and in rerank_proxy_engine_up; `?engine=required` makes
        # it a condition for probes that want the old behaviour.
        engine_ok = await probe_engine()
        breaker = runtime.guard.breaker if runtime.guard is not None else None
        shared = runtime.shared_cache
        required = request.query_params.get("engine") == "required"
        ready_now = engine_ok or not required
        body = {
            "ready": ready_now,
            "engine": "reachable" if engine_ok else "unreachable",
            "reranker": {"provider": settings.rerank_provider,
                         "model": runtime.reranker.model if runtime.reranker is not None else None,
                         "breaker": breaker.state if breaker is not None else None,
                         "vectors": runtime.warmer.status() if runtime.warmer is not None else None},
            "shared_cache": None if shared is None else ("up" if await shared.ping() else "down"),
        }
        return JSONResponse(body, 200 if ready_now else 503)

    async def metrics(request: Request) -> Response:
        await probe_engine()
        return Response(await runtime.metrics.render_all(), media_type=CONTENT_TYPE)

    def admin(handler):
        async def guarded(request: Request) -> Response:
            token = settings.admin_token
            if not token:
                return _error(404, "resource_not_found_exception", "admin endpoints are disabled (no ADMIN_TOKEN)")
            sent = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                return _error(401, "security_exception", "missing or invalid admin token")
            return await handler(request)
        return guarded

    async def cache_stats(request: Request) -> Response:
        cache = runtime.cache
        if cache is None:
            return JSONResponse({"enabled": False})
        stats = dataclasses.asdict(cache.stats)
        host = None
        if cache.host is not None:
            host = {"entries": cache.host.entries(), **dataclasses.asdict(cache.host.stats),
                    "lost_wakeups": cache.host.signals.lost}
        return JSONResponse({"enabled": cache.enabled, "entries": len(cache),
                             "max_entries": settings.cache_max_entries, "ttl_s": settings.cache_ttl_s,
                             "shared": bool(runtime.shared_cache), "host": host, **stats})

    async def cache_flush(request: Request) -> Response:
        local = runtime.cache.flush() if runtime.cache is not None else 0
        host = 0
        if runtime.cache is not None and runtime.cache.host is not None:
            try:
                host = runtime.cache.host.flush()  # and the other workers empty their in-process tiers
            except Exception:
                return _error(503, "cache_flush_exception",
                              "the in-process cache was flushed; the per-host cache could not be")
        shared = 0
        if runtime.shared_cache is not None:
            try:
                shared = await runtime.shared_cache.flush()
            except Exception:
                return _error(503, "cache_flush_exception",
                              "the in-process cache was flushed; the shared cache could not be reached")
        return JSONResponse({"flushed": {"local": local, "host": host, "shared": shared}})

    async def config(request: Request) -> Response:
        return JSONResponse(settings.redacted())

    async def breaker_state(request: Request) -> Response:
        guard = runtime.guard
        return JSONResponse({"breaker": guard.breaker.state if guard is not None else None})

    async def breaker_reset(request: Request) -> Response:
        guard = runtime.guard
        if guard is not None:
            guard.breaker.reset()
        return JSONResponse({"breaker": guard.breaker.state if guard is not None else None})

    async def not_found(request: Request) -> Response:
        return _error(404, "resource_not_found_exception", f"no proxy endpoint [{request.url.path}]")

    routes = [
        Route("/_rerank/health", health, methods=["GET", "HEAD"]),
        Route("/_rerank/ready", ready, methods=["GET", "HEAD"]),
        Route("/_rerank/metrics", metrics, methods=["GET"]),
        Route("/_rerank/admin/cache", admin(cache_stats), methods=["GET"]),
        Route("/_rerank/admin/cache/flush", admin(cache_flush), methods=["POST"]),
        Route("/_rerank/admin/config", admin(config), methods=["GET"]),
        Route("/_rerank/admin/breaker", admin(breaker_state), methods=["GET"]),
        Route("/_rerank/admin/breaker/reset", admin(breaker_reset), methods=["POST"]),
        *console_routes(runtime, admin),
        Route("/_rerank/{rest:path}", not_found),
    ]
    return Starlette(routes=routes)
