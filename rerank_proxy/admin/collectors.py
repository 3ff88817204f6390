"""Scrape-time metrics read from the cache, the provider wrapper and the shared tier.

Each quantity has one owner and one name. Provider calls, documents sent and billed units are
counted by both the score cache and the resilience wrapper; the wrapper's figures are exported
(they include retries, which is what is billed) and the cache's only when there is no wrapper.
Ratios (cache hit ratio, fallback ratio) are left to PromQL: a ratio gauge cannot be summed across
workers or replicas, counters can.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, Metric

from rerank_proxy.metrics import counter, gauge
from rerank_proxy.runtime import Runtime

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

# RerankStats field -> (metric name without _total, help). Explicit, so a new field never adds an
# unreviewed family (or one that collides with another).
PROVIDER_COUNTERS = {
    "calls": ("rerank_proxy_provider_calls", "Rerank requests handed to the provider wrapper."),
    "failures": ("rerank_proxy_provider_failures", "Rerank requests that failed after retries (fell back)."),
    "attempts": ("rerank_proxy_provider_attempts", "HTTP attempts made to the provider, retries included."),
    "retries": ("rerank_proxy_provider_retries", "Provider attempts after the first."),
    "timeouts": ("rerank_proxy_provider_timeouts", "Provider attempts cut by the attempt timeout or deadline."),
    "documents_sent": ("rerank_proxy_provider_documents", "Documents sent to the provider, per attempt."),
    "billed_units": ("rerank_proxy_provider_billed_units", "Billed units reported by the provider (Cohere units)."),
    "tokens": ("rerank_proxy_provider_tokens", "Tokens reported by token-billed providers."),
    "slot_waits": ("rerank_proxy_provider_slot_waits", "Attempts that found every RERANK_MAX_CONCURRENCY slot taken."),
    "slot_wait_seconds": ("rerank_proxy_provider_slot_wait_seconds", "Time attempts waited for a concurrency slot."),
}


def register_collectors(runtime: Runtime) -> None:
    runtime.metrics.add_source(lambda: _cache_metrics(runtime))
    runtime.metrics.add_source(lambda: _provider_metrics(runtime))
    runtime.metrics.add_source(lambda: _embedder_metrics(runtime))


def _cache_metrics(runtime: Runtime) -> Iterable[Metric]:
    cache = runtime.cache
    if cache is None:
        return
    s = cache.stats
    lookups = CounterMetricFamily("rerank_proxy_cache_lookups",
                                  "Document scores looked up, by result: hit (a cache tier), coalesced "
                                  "(another request's call) or miss (computed).", labels=["result"])
    lookups.add_metric(["hit"], s.hits)
    lookups.add_metric(["coalesced"], s.coalesced)
    lookups.add_metric(["miss"], s.misses)
    yield lookups
    yield counter("rerank_proxy_cache_shared_hits", "Document scores answered by the shared (Redis) tier.",
                  s.shared_hits)
    yield counter("rerank_proxy_cache_shared_errors", "Failed or slow shared-tier operations (served as misses).",
                  s.shared_errors)
    yield gauge("rerank_proxy_cache_entries", "Scores held in the in-process cache.", len(cache))
    memo = runtime.pipeline.memo
    if memo is not None:
        yield counter("rerank_proxy_answer_memo_hits", "Searches answered with an earlier finished answer "
                      "(same request, same engine answer; CACHE_ANSWERS_MAX_MB).", memo.hits)
        yield gauge("rerank_proxy_answer_memo_bytes", "Bytes of finished answers kept for repeated searches.",
                    memo.held_bytes)
    host = cache.host
    if host is not None:
        yield counter("rerank_proxy_cache_host_hits",
                      "Document scores answered by the per-host tier the workers share.", s.host_hits)
        yield counter("rerank_proxy_cache_host_waits", "Document scores another worker's provider call answered "
                      "while this one waited (also counted as coalesced).", s.host_waits)
        yield counter("rerank_proxy_cache_host_gave_up", "Document scores computed after waiting the whole claim "
                      "lease for another worker.", host.stats.gave_up)
        yield counter("rerank_proxy_cache_host_errors", "Failed per-host tier operations (served as misses).",
                      host.stats.errors)
        yield counter("rerank_proxy_cache_host_rejoined", "Times this worker found the per-host tier's files "
                      "deleted or replaced and opened the ones there now.", host.stats.rejoined)
        entries = host.entries()
        if entries is not None:
            yield gauge("rerank_proxy_cache_host_entries", "Scores held in the per-host tier (one figure for all "
                        "workers).", entries)
    if runtime.guard is None:
        name, help_text = PROVIDER_COUNTERS["calls"]
        yield counter(name, help_text, s.provider_calls)
        name, help_text = PROVIDER_COUNTERS["documents_sent"]
        yield counter(name, help_text, s.documents_sent)
        name, help_text = PROVIDER_COUNTERS["billed_units"]
        yield counter(name, help_text, s.billed_units)


def _provider_metrics(runtime: Runtime) -> Iterable[Metric]:
    guard = runtime.guard
    if guard is None:
        return
    snapshot = guard.stats.snapshot()
    for key, (name, help_text) in PROVIDER_COUNTERS.items():
        yield counter(name, help_text, snapshot.get(key, 0))
    errors = CounterMetricFamily("rerank_proxy_provider_errors", "Failed provider attempts by kind.",
                                 labels=["kind"])
    for kind, value in sorted((snapshot.get("errors") or {}).items()):
        errors.add_metric([str(kind)], value)
    yield errors
    yield gauge("rerank_proxy_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                BREAKER_STATES.get(guard.breaker.state, 0))


def _embedder_metrics(runtime: Runtime) -> Iterable[Metric]:
    """The built-in model's background embedder: how warm the vector store is, and how fast it fills."""
    warmer = runtime.warmer
    if warmer is None:
        return
    status = warmer.status()
    yield gauge("rerank_proxy_embedder_queue_depth", "Documents waiting for the background embedder.",
                status["queue_depth"])
    yield counter("rerank_proxy_embedder_documents_embedded", "Documents embedded in the background.",
                  status["embedded"])
    yield counter("rerank_proxy_embedder_documents_dropped", "Documents dropped because the queue was full.",
                  status["dropped"])
    yield counter("rerank_proxy_embedder_documents_failed", "Documents the model failed to embed.",
                  status["failed"])
    if status.get("store_entries") is not None:
        yield gauge("rerank_proxy_vector_store_entries", "Document vectors in this process's vector store.",
                    status["store_entries"])
