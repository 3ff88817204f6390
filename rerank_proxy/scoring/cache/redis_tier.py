"""The shared score tier in Redis, so several proxy replicas reuse each other's scores.

Scores are stored as 8-byte doubles (bit-exact: a replica reading Redis answers exactly what the
writer did) with the cache TTL, under `rrp:s:{<hex of the query head>}<rest of the key>`. The head
is the part of a score key (`ScoreCache.doc_keys`) that names (provider, model, query), so it is
the same for every document of one search; as a Redis Cluster hash tag it puts one search's keys
in one slot, and its MGET goes to one node in one round trip (hex, because raw bytes may hold a
brace). The format is the same on one Redis, so a single server can become a cluster; keys of the
format before it (`rrp:s:<16 bytes>`) are no longer read, just misses until their TTL ends.

Every call is bounded by the caller's timeout (ScoreCache); a slow or absent Redis, or a cluster
that lost a node or answers CLUSTERDOWN, is a cache miss, never a failed search, and the client
reconnects (and on a cluster, finds the new primaries) by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from rerank_proxy.scoring.cache.redis_client import ERRORS, async_client, mapped

__all__ = ["CLAIM_PREFIX", "ERRORS", "QUERY_HEAD_BYTES", "RedisTier", "redis_key"]

_PREFIX = b"rrp:s:"
# Replicas' claims on scores being computed (redis_claims.py): flushed with the scores, so a search
# right after a flush does not wait on claims of scores that will never be read.
CLAIM_PREFIX = b"rrp:c:"
_FLOAT = struct.Struct("<d")
QUERY_HEAD_BYTES = 6  # of a score key, the part that names the query (scores.py, _KEY_HEAD)
_FLUSH_BATCH = 1000
_PING_BUDGET = 5       # a ping may refresh a cluster's topology first: a few round trips, still bounded


def redis_key(key: bytes) -> bytes:
    """A score key as stored: the query head as a hash tag, then the rest."""
    return b"%s{%s}%s" % (_PREFIX, key[:QUERY_HEAD_BYTES].hex().encode(), key[QUERY_HEAD_BYTES:])


def _one_head(keys: Sequence[bytes]) -> bool:
    """True when every key has the same query head (one search's keys: one slot)."""
    head = keys[0][:QUERY_HEAD_BYTES] if keys else b""
    return all(k[:QUERY_HEAD_BYTES] == head for k in keys)


class RedisTier:
    """A `SharedTier` on one Redis (or a Redis-protocol server), or a Redis Cluster seeded by REDIS_URL."""

    def __init__(self, url: str, timeout_s: float, cluster: bool = False) -> None:
        self.cluster = cluster
        self.timeout_s = timeout_s
        self.client = async_client(url, timeout_s, cluster)

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        names = [redis_key(k) for k in keys]
        with mapped():
            if self.cluster and not _one_head(keys):
                values = await self.client.mget_nonatomic(names)  # several searches' keys: one MGET per slot
            else:
                values = await self.client.mget(names)
        return [_FLOAT.unpack(v)[0] if isinstance(v, bytes) and len(v) == 8 else None for v in values]

    async def set_many(self, items: dict[bytes, float], ttl_s: float) -> None:
        if not items:
            return
        ttl_ms = max(1, int(ttl_s * 1000))
        with mapped():
            async with self.client.pipeline(transaction=False) as pipe:
                for key, score in items.items():
                    pipe.set(redis_key(key), _FLOAT.pack(score), px=ttl_ms)
                await pipe.execute()

    async def flush(self) -> int:
        """Delete every shared score and claim (admin flush); returns how many scores were removed.
        On a cluster `scan_iter` walks every primary (redis-py sends SCAN to all primaries and
        follows each one's cursor), and a batch's DEL is split by slot."""
        await self._delete_matching(CLAIM_PREFIX)
        return await self._delete_matching(_PREFIX)

    async def _delete_matching(self, prefix: bytes) -> int:
        removed = 0
        batch: list[bytes] = []
        with mapped():
            async for key in self.client.scan_iter(match=prefix + b"*", count=1000):
                batch.append(key)
                if len(batch) >= _FLUSH_BATCH:
                    removed += await self.client.delete(*batch)
                    batch.clear()
            if batch:
                removed += await self.client.delete(*batch)
        return removed

    async def ping(self) -> bool:
        """Up when Redis answers; on a cluster, when a node answers that the cluster serves every
        slot (`cluster_state:ok`). The cluster's own verdict, not a PING of the primaries this client
        knows: after a failover its node list may still hold the dead primary until a refresh."""
        try:
            with mapped():
                reply = self.client.cluster_info() if self.cluster else self.client.ping()
                answer = await asyncio.wait_for(reply, self.timeout_s * _PING_BUDGET)
        except ERRORS:
            return False
        if self.cluster:
            return isinstance(answer, dict) and answer.get("cluster_state") == "ok"
        return bool(answer)

    async def aclose(self) -> None:
        await self.client.aclose()
