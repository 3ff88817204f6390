"""The Redis clients of the shared tiers (scores: async; vectors: sync), one server or a Cluster.

Both tiers are caches, so every client is built to give up fast: socket and connect timeouts of
REDIS_TIMEOUT_MS, no health-check round trips. With REDIS_CLUSTER the URL names a seed node and
redis-py's own cluster client follows the slots (MOVED/ASK, topology refreshes after a failover):
- `require_full_coverage=False`: a cluster with some slots unserved still serves the others
  (their keys are misses), instead of the client refusing to start;
- primaries only (no `read_from_replicas`): a score written by one replica is read back by
  another right away, not after replication lag;
- no backoff, and at most one retry for the async client (its caller bounds every call with
  REDIS_TIMEOUT_MS, and one retry after a topology refresh turns a failover's first miss into a
  hit) and none for the sync one (nothing above it bounds a call, so one attempt's socket
  timeout does).
`dynamic_startup_nodes` stays on: the seed may die, and the discovered nodes are what the next
refresh asks.

A cluster client raises `RedisClusterException`s that are not `RedisError`s (an unserved slot, no
node reachable); `mapped` turns them into `SharedTierDown`, so the tiers' callers handle one
family, `ERRORS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import RedisError
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

# What a call to Redis raises when Redis is slow, absent or refuses: the client's own errors, and
# socket errors and timeouts (TimeoutError, also asyncio's, is an OSError).
ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)

ASYNC_CLUSTER_RETRIES = 1
SYNC_CLUSTER_RETRIES = 0


class SharedTierDown(RedisError):
    """The cluster client could not serve a call (no node for a slot, no node reachable)."""


@contextmanager
def mapped() -> Iterator[None]:
    """Cluster-client failures outside `RedisError` become `SharedTierDown` (in `ERRORS`)."""
    try:
        yield
    except RedisClusterException as exc:
        raise SharedTierDown(f"{type(exc).__name__}: {exc}") from exc


def _common(timeout_s: float) -> dict[str, Any]:
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "health_check_interval": 0}


def async_client(url: str, timeout_s: float, cluster: bool) -> Any:
    """A `redis.asyncio` client for `url`: a `RedisCluster` seeded by it when `cluster`."""
    if cluster:
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry

        with mapped():
            return RedisCluster.from_url(url, require_full_coverage=False,
                                         retry=Retry(NoBackoff(), ASYNC_CLUSTER_RETRIES), **_common(timeout_s))
    import redis.asyncio as redis

    return redis.Redis.from_url(url, retry_on_timeout=False, **_common(timeout_s))


def sync_client(url: str, timeout_s: float, cluster: bool) -> Any:
    """The synchronous twin of `async_client` (same timeouts), for the vector store's threads."""
    if cluster:
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        with mapped():
            return RedisCluster.from_url(url, require_full_coverage=False,
                                         retry=Retry(NoBackoff(), SYNC_CLUSTER_RETRIES), **_common(timeout_s))
    import redis

    return redis.Redis.from_url(url, retry_on_timeout=False, **_common(timeout_s))
