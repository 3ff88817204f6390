"""Build what the settings name: the reranker (behind the resilience layer) and the shared cache tiers.

Providers are imported only when chosen, so the HTTP-only deployments never import the local
model's dependencies (numpy, tokenizers) and vice versa.
"""

from __future__ import annotations

import importlib
import logging
import os

from rerank_proxy.config import Settings
from rerank_proxy.scoring.providers.base import Reranker
from rerank_proxy.scoring.providers.resilience import ResilientReranker

# provider -> (module, class); the HTTP ones have `from_settings`, the local one takes settings.
PROVIDER_CLASSES: dict[str, tuple[str, str]] = {
    "cohere": ("rerank_proxy.scoring.providers.cohere", "CohereReranker"),
    "cohere-v1": ("rerank_proxy.scoring.providers.cohere", "CohereV1Reranker"),
    "compatible": ("rerank_proxy.scoring.providers.cohere", "CompatibleReranker"),
    "tei": ("rerank_proxy.scoring.providers.tei", "TEIReranker"),
    "voyage": ("rerank_proxy.scoring.providers.voyage", "VoyageReranker"),
    "local": ("rerank_proxy.local.reranker", "LocalReranker"),
}

_log = logging.getLogger("rerank_proxy")

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
    if settings.rerank_provider == "local":
        return cls(settings)
    return cls.from_settings(settings, pointwise=is_pointwise(settings.rerank_model))


def build_reranker(settings: Settings) -> Reranker | None:
    """The configured provider behind deadline/retry/breaker; None when RERANK_PROVIDER=none."""
    if settings.rerank_provider == "none":
        return None
    return ResilientReranker(build_provider(settings), settings)


def is_pointwise(model: str) -> bool:
    """False for known listwise models, also under a namespace (`jinaai/jina-reranker-v3`)."""
    name = model.lower()
    return not any(listwise in name for listwise in LISTWISE_MODELS)


def build_shared_cache(settings: Settings):  # -> RedisTier | None
    """The optional shared score tier (Redis) that replicas reuse; None without REDIS_URL."""
    if not settings.redis_url:
        return None
    from rerank_proxy.scoring.cache.redis_tier import RedisTier

    return RedisTier(settings.redis_url, settings.redis_timeout_ms / 1000)


def build_host_share(settings: Settings, host_dir: str | None):  # -> HostShare | None
    """The per-host score tier in `host_dir` (made by `serve` for several workers); None without
    one, with the cache off, or when it cannot be opened (then this worker serves from its own tier)."""
    if host_dir is None or settings.cache_max_entries == 0 or settings.rerank_provider == "none":
        return None
    from rerank_proxy.scoring.cache.host_share import HostShare
    from rerank_proxy.scoring.cache.host_signals import HostSignals
    from rerank_proxy.scoring.cache.host_tier import HostTier

    tier = signals = None
    try:
        tier = HostTier(host_dir, max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s)
        signals = HostSignals(host_dir)
        signals.start()
    except Exception as exc:
        for part in (signals, tier):
            if part is not None:
                part.close()
        _log.warning("per-host score tier unavailable; this worker keeps its scores to itself",
                     extra={"fields": {"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"}})
        return None
    return HostShare(tier, signals, lease_s=settings.rerank_deadline_ms / 1000 + CLAIM_LEASE_MARGIN_S)
