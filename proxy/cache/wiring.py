"""Build the optional shared cache tier from the settings."""

from __future__ import annotations

from ..config import Settings


def build_shared_cache(settings: Settings):  # -> RedisTier | None
    if not settings.redis_url:
        return None
    from .redis_tier import RedisTier

    return RedisTier(settings.redis_url, settings.redis_timeout_ms / 1000)
