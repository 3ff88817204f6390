"""Build the reranker RERANK_PROVIDER names, wrapped in the resilience layer.

Providers are imported only when chosen, so the HTTP-only deployments never import the local
model's dependencies (numpy, tokenizers) and vice versa.
"""

from __future__ import annotations

import importlib

from ..config import Settings
from .base import Reranker
from .resilience import ResilientReranker

# provider -> (module, class); the HTTP ones have `from_settings`, the local one takes settings.
PROVIDER_CLASSES: dict[str, tuple[str, str]] = {
    "cohere": ("proxy.rerank.cohere", "CohereReranker"),
    "cohere-v1": ("proxy.rerank.cohere", "CohereV1Reranker"),
    "compatible": ("proxy.rerank.cohere", "CompatibleReranker"),
    "tei": ("proxy.rerank.tei", "TEIReranker"),
    "voyage": ("proxy.rerank.voyage", "VoyageReranker"),
    "local": ("proxy.rerank.local", "LocalReranker"),
}

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
