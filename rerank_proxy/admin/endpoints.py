"""The proxy's own endpoints under /_rerank/ (a prefix no engine API uses).

- /_rerank/         the landing page: these endpoints, listed from the route table (admin/landing.py)
- /_rerank/health   liveness: the process answers
- /_rerank/ready    readiness: this process serves (200); engine, reranker and cache state reported;
                    `?engine=required` also asks for a reachable engine (503 without one)
- /_rerank/metrics  Prometheus text format, every worker merged
- /_rerank/admin/*  cache stats and flush, effective configuration (secrets redacted), breaker
                    state and reset, the experiment report; bearer ADMIN_TOKEN, compared in constant time; every admin
                    endpoint answers 404 when they are off (ADMIN_TOKEN=off; `serve` generates a
                    token when none is configured).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from rerank_proxy.admin.landing import LANDING_PATH, Landing
from rerank_proxy.console.judgments import judged_texts
from rerank_proxy.console.params import index_name
from rerank_proxy.console.routes import Handler, console_routes
from rerank_proxy.described_route import DescribedRoute
from rerank_proxy.errors import ProxyError, error_body
from rerank_proxy.experiments.ubi_report import UBI_EVENTS_INDEX, ubi_report
from rerank_proxy.metrics import CONTENT_TYPE
from rerank_proxy.runtime import Runtime

ENGINE_PROBE_TIMEOUT_S = 2.0


def _error(status: int, error_type: str, reason: str) -> Response:
    return Response(error_body(status, error_type, reason), status, media_type="application/json")


def build_ops_app(runtime: Runtime) -> Starlette:
    return Starlette(routes=OpsEndpoints(runtime).routes())


class OpsEndpoints:
    """The handlers of /_rerank/*, bound to one worker's runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def routes(self) -> list[BaseRoute]:
        admin = self.admin_route
        served: list[BaseRoute] = [
            DescribedRoute("/_rerank/health", self.health, methods=["GET", "HEAD"],
                           meaning="liveness: the process answers"),
            DescribedRoute("/_rerank/ready", self.ready, methods=["GET", "HEAD"],
                           meaning="readiness, with engine, reranker and shared-cache state; "
                                   "?engine=required also needs a reachable engine"),
            DescribedRoute("/_rerank/metrics", self.metrics, methods=["GET"],
                           meaning="Prometheus metrics, every worker merged"),
            admin("/_rerank/admin/cache", self.cache_stats, "GET", "score cache statistics"),
            admin("/_rerank/admin/cache/flush", self.cache_flush, "POST", "empty every score cache tier"),
            admin("/_rerank/admin/config", self.config, "GET", "effective configuration, secrets redacted"),
            admin("/_rerank/admin/breaker", self.breaker_state, "GET", "the reranker's circuit breaker state"),
            admin("/_rerank/admin/breaker/reset", self.breaker_reset, "POST", "close the circuit breaker"),
            admin("/_rerank/admin/experiment", self.experiment_report, "GET",
                  "the online experiment's report per arm, from the UBI queries and click events "
                  "(?events=INDEX, default ubi_events; ?index=INDEX: whose console judgments score "
                  "the shadow lists)"),
            *console_routes(self.runtime, self.admin),
        ]
        landing = Landing(served)
        return [
            DescribedRoute(LANDING_PATH, landing.view, methods=["GET", "HEAD"],
                           meaning="this list (HTML for browsers, else JSON)"),
            Route(LANDING_PATH.rstrip("/"), landing.redirect, methods=["GET", "HEAD"]),
            *served,
            Route("/_rerank/{rest:path}", self.not_found),
        ]

    # --- health, readiness, metrics ----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def probe_engine(self) -> bool:
        runtime = self.runtime
        try:
            answer = await asyncio.wait_for(runtime.engine.fetch("GET", "/_cluster/health", [], None),
                                            ENGINE_PROBE_TIMEOUT_S)
            up = answer.status < 500
        except (ProxyError, TimeoutError, OSError):  # the pool's errors for an engine it cannot use
            up = False
        runtime.metrics.engine_up.set(1 if up else 0)
        return up

    async def ready(self, request: Request) -> Response:
        # Ready means this process can serve: with the engine down it still answers every client
        # with the engine-style 502, which beats every replica leaving the Service at once. The
        # engine's state is reported here and in rerank_proxy_engine_up; `?engine=required` makes
        # it a condition for probes that want the old behaviour.
        engine_ok = await self.probe_engine()
        required = request.query_params.get("engine") == "required"
        ready_now = engine_ok or not required
        body = {
            "ready": ready_now,
            "engine": "reachable" if engine_ok else "unreachable",
            "reranker": await self._reranker_report(),
            "shared_cache": await self._shared_cache_report(),
        }
        return JSONResponse(body, 200 if ready_now else 503)

    async def _reranker_report(self) -> dict[str, Any]:
        runtime = self.runtime
        breaker = runtime.guard.breaker if runtime.guard is not None else None
        return {"provider": self.settings.rerank_provider,
                "model": runtime.reranker.model if runtime.reranker is not None else None,
                "breaker": breaker.state if breaker is not None else None,
                "vectors": await self._vectors_report()}

    async def _vectors_report(self) -> dict[str, Any] | None:
        """The embedder's queue and store over every worker, as the metrics are (one worker's
        queue alone is a different figure on each probe)."""
        warmer = self.runtime.warmer
        if warmer is None:
            return None
        peers = self.runtime.metrics.peers
        if peers is None:
            return {"workers": 1, **warmer.status()}
        return await peers.merged_vectors()

    async def _shared_cache_report(self) -> str | None:
        shared = self.runtime.shared_cache
        if shared is None:
            return None
        return "up" if await shared.ping() else "down"

    async def metrics(self, request: Request) -> Response:
        await self.probe_engine()
        return Response(await self.runtime.metrics.render_all(), media_type=CONTENT_TYPE)

    # --- admin -------------------------------------------------------------------------------------

    def admin_route(self, path: str, handler: Handler, method: str, meaning: str) -> DescribedRoute:
        return DescribedRoute(path, self.admin(handler), methods=[method], meaning=meaning, token=True)

    def admin(self, handler: Handler) -> Handler:
        """`handler` behind the ADMIN_TOKEN bearer check (404 for every admin endpoint when they are off)."""
        async def guarded(request: Request) -> Response:
            token = self.settings.admin_token
            if not token:
                return _error(404, "resource_not_found_exception",
                              "admin endpoints are disabled (ADMIN_TOKEN=off, or no token given)")
            sent = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                return _error(401, "security_exception", "missing or invalid admin token")
            return await handler(request)
        return guarded

    async def cache_stats(self, request: Request) -> Response:
        runtime, settings = self.runtime, self.settings
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

    async def cache_flush(self, request: Request) -> Response:
        local = self.runtime.cache.flush() if self.runtime.cache is not None else 0
        host = self._flush_host_tier()
        if host is None:
            return _error(503, "cache_flush_exception",
                          "the in-process cache was flushed; the per-host cache could not be")
        shared = await self._flush_shared_tier()
        if shared is None:
            return _error(503, "cache_flush_exception",
                          "the in-process cache was flushed; the shared cache could not be reached")
        return JSONResponse({"flushed": {"local": local, "host": host, "shared": shared}})

    def _flush_host_tier(self) -> int | None:
        """Entries removed from the per-host tier (0 without one), None when it could not be flushed."""
        cache = self.runtime.cache
        if cache is None or cache.host is None:
            return 0
        from lmdb import Error as LmdbError

        try:
            return cache.host.flush()  # and the other workers empty their in-process tiers
        except (OSError, LmdbError):  # the tier's LMDB files, the wake-up sockets
            return None

    async def _flush_shared_tier(self) -> int | None:
        """Entries removed from the shared tier (0 without one), None when it could not be reached."""
        shared = self.runtime.shared_cache
        if shared is None:
            return 0
        from redis import RedisError

        try:
            return await shared.flush()
        except (RedisError, OSError):  # Redis refused, or is unreachable or slow (TimeoutError)
            return None

    async def config(self, request: Request) -> Response:
        return JSONResponse(self.settings.redacted())

    async def experiment_report(self, request: Request) -> Response:
        """The report, the shadow lists scored against the console's judgments: of `?index=` when
        given, else of whichever one index judged each query text (a UBI record names no index)."""
        events = request.query_params.get("events", UBI_EVENTS_INDEX)
        named = request.query_params.get("index")
        try:
            judgments = functools.partial(judged_texts, self.settings, index=index_name(named) if named else None)
            report = await ubi_report(self.runtime.engine, self.settings.ubi_queries_index, events,
                                      judgments=judgments)
        except ProxyError as exc:
            return Response(exc.body(), exc.status, media_type="application/json")
        return JSONResponse({"experiment": str(self.settings.rerank_experiment), **report})

    async def breaker_state(self, request: Request) -> Response:
        guard = self.runtime.guard
        return JSONResponse({"breaker": guard.breaker.state if guard is not None else None})

    async def breaker_reset(self, request: Request) -> Response:
        guard = self.runtime.guard
        if guard is not None:
            guard.breaker.reset()
        return JSONResponse({"breaker": guard.breaker.state if guard is not None else None})

    async def not_found(self, request: Request) -> Response:
        return _error(404, "resource_not_found_exception", f"no proxy endpoint [{request.url.path}]")
