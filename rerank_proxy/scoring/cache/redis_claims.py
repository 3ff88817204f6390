"""Claims in Redis on scores being computed, so replicas missing the same score at once pay once.

The in-process coalescing (scores.py) and the host tier (host_share.py) stop one process's or one
host's duplicates; replicas on other hosts only meet in Redis. Before a provider call, a replica
claims each score it is about to compute: `SET rrp:c:{head}rest <nothing> NX PX lease`, the claim
key in the same hash-tag slot as its score key (`redis_tier.redis_key`), so one search's claims,
like its scores, are one node's and one round trip. A score whose claim another replica holds is
waited for in the shared tier, within a bounded wait; when it does not come (that replica is slow,
failed, or died and its lease has not run out), this replica computes it itself.

Redis trouble is never a reason to wait: a claim that fails or times out counts as won (compute),
as every shared-tier failure is a miss, and for a second after one no claim is asked for.

A claim whose call failed is released at once (its waiters compute without waiting out the
bound). One whose score was written is left to its lease: a replica that read the score key just
before it was written, and claims now, finds the claim taken and the score there, instead of
winning a released claim and paying again. The lease (LEASE_MS) also bounds how long a dead
replica's claims keep others waiting, and no wait is longer than WAIT_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rerank_proxy.scoring.cache.redis_client import mapped
from rerank_proxy.scoring.cache.redis_tier import CLAIM_PREFIX, RedisTier, redis_key

LEASE_MS = 5_000          # a claim outlives any provider call a waiter would still wait for
WAIT_S = 2.0              # the longest a replica waits for another's score before computing it itself
QUIET_S = 1.0             # after a failed claim, misses compute without asking Redis for this long
_POLL_FIRST_S = 0.005     # the first look after a lost claim; then 1.5 times longer each time
_POLL_MAX_S = 0.05
_SCORE = b"rrp:s:"

Lookup = Callable[[list[bytes]], Awaitable[list[float | None]]]


def claim_key(key: bytes) -> bytes:
    """The claim on a score key: the stored score key's hash tag and rest, under its own prefix."""
    return CLAIM_PREFIX + redis_key(key)[len(_SCORE):]


class RedisClaims:
    """Claims on the client of a `RedisTier` (one Redis or a cluster); each call bounded by `timeout_s`."""

    def __init__(self, tier: RedisTier, timeout_s: float, *, lease_ms: int = LEASE_MS,
                 wait_s: float = WAIT_S) -> None:
        self.client: Any = tier.client
        self.timeout_s = timeout_s
        self.lease_ms = lease_ms
        self.wait_s = wait_s
        self._failed_at = -QUIET_S

    async def claim(self, keys: Sequence[bytes]) -> list[bool]:
        """For each key, True when this replica should compute it (it won the claim, or Redis failed:
        now, or less than QUIET_S ago, so a Redis that times out costs a miss one timeout, not two)."""
        if time.monotonic() - self._failed_at < QUIET_S:
            return [True] * len(keys)
        try:
            return await asyncio.wait_for(self._set_nx(keys), self.timeout_s)
        except Exception:  # noqa: BLE001 - no claim is no reason to wait: compute
            self._failed_at = time.monotonic()
            return [True] * len(keys)

    async def _set_nx(self, keys: Sequence[bytes]) -> list[bool]:
        with mapped():
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(claim_key(key), b"", nx=True, px=self.lease_ms)
                replies = await pipe.execute()
        return [bool(r) for r in replies]

    async def release(self, keys: Sequence[bytes]) -> None:
        """Drop this replica's claims (its call failed); a failure leaves them to their lease."""
        if not keys:
            return
        try:
            await asyncio.wait_for(self._delete(keys), self.timeout_s)
        except Exception:  # noqa: BLE001 - a claim left behind ends with its lease
            return

    async def _delete(self, keys: Sequence[bytes]) -> None:
        with mapped():
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(claim_key(key))
                await pipe.execute()

    async def _held(self, keys: Sequence[bytes]) -> list[bool]:
        with mapped():
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(claim_key(key))
                replies = await pipe.execute()
        return [bool(r) for r in replies]

    async def wait(self, keys: Sequence[bytes], lookup: Lookup) -> list[float | None]:
        """The scores of `keys` as other replicas write them (`lookup`: the shared tier's read),
        until all are there, their claims are gone without a score, Redis fails, or `wait_s` ends;
        None for each one still missing then (the caller computes those)."""
        found: list[float | None] = [None] * len(keys)
        pending = list(range(len(keys)))
        deadline = time.monotonic() + self.wait_s
        pause = _POLL_FIRST_S
        while pending:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, _POLL_MAX_S)
            try:
                # the claims first: one released after this look has its score written already
                held = await asyncio.wait_for(self._held([keys[i] for i in pending]), self.timeout_s)
            except Exception:  # noqa: BLE001 - Redis failing while we wait: compute what is missing
                break
            values = await lookup([keys[i] for i in pending])
            for i, value in zip(pending, values):
                found[i] = value
            # still missing: wait on while claimed; released without a score (its call failed): compute now
            pending = [i for i, h in zip(pending, held) if h and found[i] is None]
            if time.monotonic() >= deadline:
                break
        return found


def claims_for(shared: object, timeout_s: float) -> RedisClaims | None:
    """Claims for a shared tier that is Redis; None for any other tier (nothing to claim in)."""
    return RedisClaims(shared, timeout_s) if isinstance(shared, RedisTier) else None
