"""The one assembly point of a worker: what start-up builds from the settings (`Runtime`).

The reranker (behind the resilience layer), the cache tiers, the engine pool and the search
pipeline are built here and nowhere else; the server, the admin endpoints and the metrics
collectors are handed the finished `Runtime`. Providers are imported only when chosen, so the
HTTP-only deployments never import the local model's dependencies (numpy, tokenizers) and vice
versa.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rerank_proxy.config import Settings
from rerank_proxy.engine.pool import EnginePool
from rerank_proxy.experiments.query_log import QueryLog
from rerank_proxy.local.warmer import Warmer
from rerank_proxy.local.warming import warm_on_start
from rerank_proxy.metrics import Metrics
from rerank_proxy.scoring.cache.scores import ScoreCache, SharedTier
from rerank_proxy.scoring.providers.base import Preloadable, Reranker
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from rerank_proxy.search.pipeline import SearchPipeline

if TYPE_CHECKING:
    from rerank_proxy.scoring.cache.host_share import HostShare

_log = logging.getLogger("rerank_proxy")


@dataclass
class Runtime:
    """Everything built at start-up and shared by requests of one worker."""

    settings: Settings
    engine: EnginePool
    reranker: Reranker | None
    cache: ScoreCache | None
    pipeline: SearchPipeline
    metrics: Metrics
    shared_cache: SharedTier | None = None
    started_at: float = 0.0
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def guard(self) -> ResilientReranker | None:
        """The resilience layer (breaker, provider stats), unless a bare reranker was injected."""
        return self.reranker if isinstance(self.reranker, ResilientReranker) else None

    @property
    def warmer(self) -> Warmer | None:
        """The background embedder's owner (the built-in model), for write and start-up warming."""
        provider = self.guard.inner if self.guard is not None else self.reranker
        return provider if isinstance(provider, Warmer) else None


async def build_runtime(settings: Settings, reranker: Reranker | None = None,
                        shared_cache: SharedTier | None = None, host_dir: str | None = None) -> Runtime:
    """Clients, caches and the pipeline; `reranker` may be injected (tests, benchmarks); `host_dir`
    is the per-host score tier's directory when this is one of several workers."""
    if reranker is None:
        reranker = build_reranker(settings)
    if shared_cache is None:
        shared_cache = build_shared_cache(settings)
    engine = EnginePool(settings)
    cache = None
    closers: list[Callable[[], Awaitable[None]]] = []
    if reranker is not None:
        host = build_host_share(settings, host_dir)
        cache = ScoreCache(reranker, max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s,
                           shared=shared_cache, shared_timeout_s=settings.redis_timeout_ms / 1000, host=host)
        if host is not None:
            host.signals.on_flush = cache.flush  # another worker's admin flush empties this worker's tier
            closers.append(_closer(host.close))
    if isinstance(reranker, Preloadable):
        await reranker.load()  # the built-in model loads here, not on the first search
    metrics = Metrics()
    query_log = QueryLog(engine, settings.ubi_queries_index, settings.ubi_queue_max) if settings.ubi else None
    if query_log is not None:
        metrics.add_source(query_log.families)
        closers.append(query_log.aclose)
    pipeline = SearchPipeline(settings, engine, cache, query_log=query_log)
    if pipeline.shadow is not None:
        metrics.add_source(pipeline.shadow.families)
        closers.insert(0, pipeline.shadow.aclose)  # before the query log's last flush: it offers records
    runtime = Runtime(settings, engine, reranker, cache, pipeline, metrics, shared_cache, time.time(), closers)
    warmer = runtime.warmer
    if warmer is not None and settings.local_warm_on_start:
        task = asyncio.create_task(warm_on_start(warmer, settings, engine, pipeline.text_fields))
        runtime.closers.append(_canceller(task))
    if pipeline.text_fields is not None:
        runtime.closers.append(pipeline.text_fields.aclose)  # last: the warming above reads through it
    return runtime


def _closer(close: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        close()
    return run


def _canceller(task: asyncio.Task[Any]) -> Callable[[], Awaitable[None]]:
    """A closer that stops a background task at shutdown."""
    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cancel


# provider -> (module, class); the HTTP ones have `from_settings`, the local one takes settings.
PROVIDER_CLASSES: dict[str, tuple[str, str]] = {
    "cohere": ("rerank_proxy.scoring.providers.cohere", "CohereReranker"),
    "cohere-v1": ("rerank_proxy.scoring.providers.cohere", "CohereV1Reranker"),
    "compatible": ("rerank_proxy.scoring.providers.cohere", "CompatibleReranker"),
    "tei": ("rerank_proxy.scoring.providers.tei", "TEIReranker"),
    "voyage": ("rerank_proxy.scoring.providers.voyage", "VoyageReranker"),
    "local": ("rerank_proxy.local.reranker", "LocalReranker"),
}

# A claim on a score outlives the longest provider call it stands for (RERANK_DEADLINE_MS covers
# retries and waiting for a slot) by this much, so a live claimer always finishes inside its lease.
CLAIM_LEASE_MARGIN_S = 1.0

# Models whose scores depend on the other documents in the request (listwise), so they must not
# be cached per document. jina-reranker-v3 attends across all candidates (arXiv 2509.25085).
LISTWISE_MODELS = ("jina-reranker-v3",)


def build_provider(settings: Settings) -> Reranker:
    """The bare provider (no retries, no breaker): for tools that want a single attempt."""
    try:
        module_name, class_name = PROVIDER_CLASSES[settings.rerank_provider]
    except KeyError:
        raise ValueError(f"unknown rerank provider {settings.rerank_provider!r}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Reranker
    if settings.rerank_provider == "local":
        provider = cls(settings)
    else:
        provider = cls.from_settings(settings, pointwise=is_pointwise(settings.rerank_model))
    return provider


def build_reranker(settings: Settings) -> Reranker | None:
    """The configured provider behind deadline/retry/breaker; None when RERANK_PROVIDER=none."""
    if settings.rerank_provider == "none":
        return None
    return ResilientReranker(build_provider(settings), settings)


def is_pointwise(model: str) -> bool:
    """False for known listwise models, also under a namespace (`jinaai/jina-reranker-v3`)."""
    name = model.lower()
    return not any(listwise in name for listwise in LISTWISE_MODELS)


def build_shared_cache(settings: Settings) -> SharedTier | None:
    """The optional shared score tier (Redis, or a Redis Cluster with REDIS_CLUSTER) that replicas
    reuse; None without REDIS_URL."""
    if not settings.redis_url:
        return None
    from rerank_proxy.scoring.cache.redis_tier import RedisTier

    return RedisTier(settings.redis_url, settings.redis_timeout_ms / 1000, cluster=settings.redis_cluster)


def build_host_share(settings: Settings, host_dir: str | None) -> HostShare | None:
    """The per-host score tier in `host_dir` (made by `serve` for several workers); None without
    one, with the cache off, or when it cannot be opened (then this worker serves from its own tier)."""
    if host_dir is None or settings.cache_max_entries == 0 or settings.rerank_provider == "none":
        return None
    from lmdb import Error as LmdbError

    from rerank_proxy.scoring.cache.host_share import HostShare
    from rerank_proxy.scoring.cache.host_signals import HostSignals
    from rerank_proxy.scoring.cache.host_tier import HostTier

    tier = signals = None
    try:
        tier = HostTier(host_dir, max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s)
        signals = HostSignals(host_dir)
        signals.start()
    except (OSError, LmdbError) as exc:  # the directory, its LMDB files, the wake-up socket
        for part in (signals, tier):
            if part is not None:
                part.close()
        _log.warning("per-host score tier unavailable; this worker keeps its scores to itself",
                     extra={"fields": {"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"}})
        return None
    return HostShare(tier, signals, lease_s=settings.rerank_deadline_ms / 1000 + CLAIM_LEASE_MARGIN_S)
