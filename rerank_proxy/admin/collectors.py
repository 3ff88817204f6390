"""Scrape-time metrics read from the cache, the provider wrapper and the shared tier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily

from rerank_proxy.admin.metrics import counter, gauge

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def register_collectors(runtime: Any) -> None:
    runtime.metrics.add_source(lambda: _cache_metrics(runtime))
    runtime.metrics.add_source(lambda: _provider_metrics(runtime))


def _cache_metrics(runtime: Any) -> Iterable[Any]:
    cache = runtime.cache
    if cache is None:
        return
    s = cache.stats
    yield counter("rerank_proxy_cache_hits", "Document scores answered from a cache tier.", s.hits)
    yield counter("rerank_proxy_cache_misses", "Document scores that had to be computed.", s.misses)
    yield counter("rerank_proxy_cache_coalesced", "Document scores shared with a concurrent request.", s.coalesced)
    yield counter("rerank_proxy_cache_shared_hits", "Document scores answered by the shared (Redis) tier.", s.shared_hits)
    yield counter("rerank_proxy_cache_shared_errors", "Failed or slow shared-tier operations (served as misses).", s.shared_errors)
    yield counter("rerank_proxy_provider_calls", "Calls made to the rerank provider.", s.provider_calls)
    yield counter("rerank_proxy_documents_sent", "Documents sent to the rerank provider.", s.documents_sent)
    yield counter("rerank_proxy_billed_units", "Billed units reported by the provider (Cohere search units).", s.billed_units)
    total = s.hits + s.misses + s.coalesced
    yield gauge("rerank_proxy_cache_hit_ratio", "Share of document scores not computed by this request.",
                (s.hits + s.coalesced) / total if total else 0.0)
    yield gauge("rerank_proxy_cache_entries", "Scores held in the in-process cache.", len(cache))


def _provider_metrics(runtime: Any) -> Iterable[Any]:
    reranker = runtime.reranker
    if reranker is None:
        return
    stats = getattr(reranker, "stats", None)
    snapshot = stats.snapshot() if hasattr(stats, "snapshot") else {}
    for key, value in snapshot.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield counter(f"rerank_proxy_provider_{key}", f"Provider {key.replace('_', ' ')}.", value)
    errors = snapshot.get("errors") or {}
    if errors:
        family = CounterMetricFamily("rerank_proxy_provider_errors", "Failed provider attempts by kind.",
                                     labels=["kind"])
        for kind, value in sorted(errors.items()):
            family.add_metric([str(kind)], value)
        yield family
    breaker = getattr(reranker, "breaker", None)
    if breaker is not None:
        state = str(getattr(breaker, "state", "closed"))
        yield gauge("rerank_proxy_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                    BREAKER_STATES.get(state, 0))
