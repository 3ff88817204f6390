"""Document vectors shared by every replica, in the Redis the deployment already runs (REDIS_URL).

The SQLite store is per pod (an `emptyDir` in the Kubernetes manifests), so every new replica and
every rollout started cold. With this tier in front of it, a vector embedded by any replica is one
MGET away for all the others, and a rolled pod starts warm. Redis was chosen over an index in the
engine by measured lookup cost of 100 vectors: 9.2 ms p50 for an MGET, 81 ms for the engine's `_mget`
(bench/vector_tiers.py, docs/decisions/vector-tiers.md).

`TieredVectorStore` keeps the `VectorStore` interface: reads go local file first, then Redis for the
misses (and copy what Redis had into the file); writes go to both. Redis being slow or down is a
miss, logged at most once a minute, never a failed search: the local store keeps working alone.
Values are the float16 bytes the file stores (768 bytes for 384 dimensions), under
`rrp:v:<32-byte key>` with a TTL (LOCAL_VECTOR_SHARED_TTL_S) so Redis memory follows the corpus.
With REDIS_CLUSTER the same keys live on a Redis Cluster (`RedisVectors`, docs/decisions/redis-cluster.md).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from rerank_proxy.local.vector_store import VectorStore
from rerank_proxy.scoring.cache.redis_client import ERRORS, SharedTierDown, mapped, sync_client

log = logging.getLogger(__name__)
PREFIX = b"rrp:v:"


class RedisVectors:
    """key -> float16 vector bytes in Redis; a synchronous client, used from the store threads.

    On a Redis Cluster (`cluster`) a vector's key has no hash tag: the documents of one search are
    spread over every slot, so a read is redis-py's `mget_nonatomic` (one MGET per slot, pipelined
    per node) and a write a pipeline, which the cluster client splits by node. The cluster client
    connects when it is built, so it is built on first use (and again after a failed build): a
    cluster down at start-up is a miss, not a proxy that cannot start. A call that failed keeps
    the tier off for `COOL_DOWN_S`: the sync cluster client sleeps a fixed 0.25 s before it gives
    up on a CLUSTERDOWN, and nothing above it bounds a call, so without this every search would
    pay that while the cluster is down.
    """

    COOL_DOWN_S = 1.0

    def __init__(self, url: str, timeout_s: float, ttl_s: float, dim: int = 384, cluster: bool = False,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.cluster = cluster
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.dim = dim
        self._client: Any = None
        self._lock = threading.Lock()
        self._timer = timer
        self._off_until = -math.inf

    @property
    def client(self) -> Any:
        """The client, built on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = sync_client(self.url, self.timeout_s, self.cluster)
        return self._client

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        if not keys:
            return {}
        names = [PREFIX + k for k in keys]
        values = self._call(lambda c: c.mget_nonatomic(names) if self.cluster else c.mget(names))
        found = {}
        for key, blob in zip(keys, values, strict=True):
            if isinstance(blob, bytes) and len(blob) == self.dim * 2:
                found[key] = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        blobs = [(PREFIX + key, np.asarray(vector, dtype=np.float16).tobytes()) for key, vector in items]
        if not blobs:
            return

        def write(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            for name, blob in blobs:
                pipe.set(name, blob, px=self.ttl_ms)
            pipe.execute()
        self._call(write)

    def count(self) -> int:
        """Vectors in Redis (a SCAN, on a cluster of every primary: for status pages, not the request path)."""
        return int(self._call(lambda c: sum(1 for _ in c.scan_iter(match=PREFIX + b"*", count=1000))))

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(client)` with cluster failures mapped to `RedisError`s; while cooling down after a
        failure, a `SharedTierDown` without calling Redis."""
        if self._timer() < self._off_until:
            raise SharedTierDown("the shared vector tier failed less than a second ago")
        try:
            with mapped():
                return fn(self.client)
        except ERRORS:
            self._off_until = self._timer() + self.COOL_DOWN_S
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class TieredVectorStore:
    """A local `VectorStore` with a shared tier behind it; same methods, same float32 results."""

    def __init__(self, local: VectorStore, shared: Any) -> None:
        self.local = local
        self.shared = shared
        self.path = local.path
        self.shared_hits = 0
        self.shared_errors = 0
        self._warned_at = -math.inf
        # Redis refusing, unreachable or slow (its own errors, and the socket's: OSError, TimeoutError).
        self._tier_errors: tuple[type[Exception], ...] = ERRORS

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found = self.local.get_many(keys)
        wanted = [k for k in dict.fromkeys(keys) if k not in found]
        if not wanted:
            return found
        from_shared = self._shared("read", self.shared.get_many, wanted) or {}
        if from_shared:
            self.shared_hits += len(from_shared)
            self.local.put_many(from_shared.items())
            found.update(from_shared)
        return found

    def missing(self, keys: Sequence[bytes]) -> list[bytes]:
        found = self.get_many(keys)
        return [k for k in keys if k not in found]

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> int:
        items = list(items)
        self._shared("write", self.shared.put_many, items)
        return self.local.put_many(items)

    def as_stored(self, vectors: np.ndarray) -> np.ndarray:
        return self.local.as_stored(vectors)

    def count(self) -> int:
        return self.local.count()

    def close(self) -> None:
        self.local.close()
        self._shared("close", self.shared.close)

    def _shared(self, action: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._tier_errors as exc:  # a miss, never a failed search
            self.shared_errors += 1
            now = time.monotonic()
            if now - self._warned_at >= 60.0:
                self._warned_at = now
                log.warning("shared vector tier %s failed (%s); using the local store alone", action, exc)
            return None


def build_store(settings: Any) -> VectorStore | TieredVectorStore:
    """The local file, with the Redis tier in front when REDIS_URL is set and the TTL is not 0."""
    local = VectorStore(settings.local_vector_store, max_entries=settings.local_vector_store_max_entries)
    if not settings.redis_url or not settings.local_vector_shared_ttl_s:
        return local
    shared = RedisVectors(settings.redis_url, settings.redis_timeout_ms / 1000,
                          settings.local_vector_shared_ttl_s, cluster=settings.redis_cluster)
    return TieredVectorStore(local, shared)
