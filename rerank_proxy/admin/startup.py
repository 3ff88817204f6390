"""What `serve` checks and says before it takes traffic, so a mistake shows in the first log lines
instead of at the first search.

- `check_environment`: a vector store the built-in model cannot write is a configuration error.
- `summary`: the one start-up line (provider, model, window, score mode, indices, cache tiers:
  memory, host when several workers share the per-host tier, redis).
- `check_shared_cache`: an unreachable Redis is a warning (the proxy serves from its in-process
  tier, as it does when Redis fails later), logged once per worker at start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rerank_proxy import __version__
from rerank_proxy.config import ConfigError, Settings
from rerank_proxy.scoring.final import resolve_mode

_log = logging.getLogger("rerank_proxy")


def check_environment(settings: Settings) -> None:
    """Raise ConfigError for settings that point at places this process cannot use."""
    if settings.rerank_provider != "local":
        return
    path = Path(settings.local_vector_store).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    except OSError as exc:
        raise ConfigError(f"LOCAL_VECTOR_STORE={settings.local_vector_store!r}: cannot create its directory "
                          f"({exc.strerror or exc}); accepted: a file path in a writable directory") from None
    if not writable:
        raise ConfigError(f"LOCAL_VECTOR_STORE={settings.local_vector_store!r}: not writable by this process; "
                          "accepted: a file path in a writable directory")


def summary(settings: Settings, model: str | None, host_tier: bool = False) -> dict[str, Any]:
    tiers = ["memory"] if settings.rerank_provider != "none" else []
    if host_tier and tiers:
        tiers.append("host")
    if settings.redis_url and tiers:
        tiers.append("redis")
    return {"version": __version__, "provider": settings.rerank_provider, "model": model or settings.rerank_model,
            "window": settings.rerank_window,
            "score_mode": resolve_mode(None, settings.rerank_score_mode, settings.rerank_provider),
            "indices": list(settings.rerank_indices), "rules": len(settings.rerank_rules),
            "cache_tiers": tiers, "workers": settings.workers, "upstreams": len(settings.upstream_urls)}


async def check_shared_cache(runtime: Any) -> bool:
    shared = runtime.shared_cache
    if shared is None:
        return True
    if await shared.ping():
        return True
    _log.warning("shared cache (REDIS_URL) unreachable at start-up; serving from the in-process tier until it answers",
                 extra={"fields": {"pid": os.getpid()}})
    return False
