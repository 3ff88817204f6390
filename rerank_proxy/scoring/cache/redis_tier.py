"""The shared score tier in Redis, so several proxy replicas reuse each other's scores.

Scores are stored as 8-byte doubles (bit-exact: a replica reading Redis answers exactly what the
writer did) under `rrp:s:<16-byte key>` with the cache TTL. Every call is
bounded by the caller's timeout (ScoreCache); a slow or absent Redis is a cache miss, never a failed
search, and the client reconnects by itself when Redis comes back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import redis.asyncio as redis
from redis import RedisError

_PREFIX = b"rrp:s:"
_FLOAT = struct.Struct("<d")
# What a call to Redis raises when Redis is slow, absent or refuses: the client's own errors, and
# socket errors and timeouts (TimeoutError, also asyncio's, is an OSError).
ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


class RedisTier:
    """A `SharedTier` on one Redis (or a Redis-protocol server) named by REDIS_URL."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           health_check_interval=0, retry_on_timeout=False)

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        values = await self.client.mget([_PREFIX + k for k in keys])
        return [_FLOAT.unpack(v)[0] if isinstance(v, bytes) and len(v) == 8 else None for v in values]

    async def set_many(self, items: dict[bytes, float], ttl_s: float) -> None:
        if not items:
            return
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self.client.pipeline(transaction=False) as pipe:
            for key, score in items.items():
                pipe.set(_PREFIX + key, _FLOAT.pack(score), px=ttl_ms)
            await pipe.execute()

    async def flush(self) -> int:
        """Delete every shared score (admin flush); returns how many were removed."""
        removed = 0
        async for key in self.client.scan_iter(match=_PREFIX + b"*", count=1000):
            removed += await self.client.delete(key)
        return removed

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except ERRORS:
            return False

    async def aclose(self) -> None:
        await self.client.aclose()
