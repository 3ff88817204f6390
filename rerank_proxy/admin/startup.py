"""What `serve` checks and says before it takes traffic, so a mistake shows in the first log lines
instead of at the first search.

- `check_environment`: a vector store the built-in model cannot write is a configuration error.
- `summary`: the one start-up line (provider, model, window, score mode, indices, cache tiers:
  memory, host when several workers share the per-host tier, redis).
- `check_shared_cache`: an unreachable Redis is a warning (the proxy serves from its in-process
  tier, as it does when Redis fails later), logged once per worker at start.
- `with_admin_token` / `log_console_url`: with no ADMIN_TOKEN (nor ADMIN_TOKEN_FILE) the parent
  generates one before any worker starts, so every worker (forked with the parent's settings, also
  a replaced one) accepts the same token, and logs the console's URL with it once, as Jupyter does:
  the console is then reachable on the defaults without a token ever being chosen by hand.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rerank_proxy import __version__
from rerank_proxy.config import ConfigError, Settings
from rerank_proxy.console.page import CONSOLE_PATH
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


GENERATED_TOKEN_BYTES = 32
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def admin_token_unset(env: Mapping[str, str]) -> bool:
    """Neither ADMIN_TOKEN nor ADMIN_TOKEN_FILE given: an empty token file stays "off", as before."""
    return not env.get("ADMIN_TOKEN", "").strip() and not env.get("ADMIN_TOKEN_FILE", "")


def with_admin_token(settings: Settings, env: Mapping[str, str]) -> tuple[Settings, bool]:
    """`settings` with a fresh random admin token when none was configured, and whether it was made."""
    if not admin_token_unset(env):
        return settings, False
    return settings.with_overrides(admin_token=secrets.token_urlsafe(GENERATED_TOKEN_BYTES)), True


def console_url(host: str, port: int, token: str) -> tuple[str, str]:
    """The console's URL with the token for a bound address, and which host it names: a wildcard
    bind cannot be browsed to, so its URL names this machine's loopback address instead."""
    shown = _WILDCARDS.get(host, host)
    note = (f"bound to {host or 'every interface'}; the URL names the loopback address, "
            "from elsewhere use this machine's name or address") if shown != host else f"bound to {host}"
    netloc = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    return f"http://{netloc}{CONSOLE_PATH}?token={token}", note


def log_console_url(host: str, port: int, token: str) -> None:
    """One start-up line on stderr with the console URL. At warning, so LOG_LEVEL=warning still shows
    it (the token changes at every start). The URL is a field, not the message, so the redaction of
    messages does not hide it; this line is the only place the generated token is ever written."""
    url, note = console_url(host, port, token)
    _log.warning("console: the URL in [console] carries an admin token generated for this run, as ADMIN_TOKEN "
                 "is not set (set it for a fixed token, or ADMIN_TOKEN=off to turn the admin endpoints off)",
                 extra={"fields": {"console": url, "host_note": note}})
