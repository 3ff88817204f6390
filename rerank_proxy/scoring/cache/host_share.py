"""What the workers of one host share, as the ScoreCache uses it: the host tier and cross-worker coalescing.

Coalescing across workers (`resolve`): before asking the provider, a worker claims the keys it
misses (host_tier.py). For keys another worker already claimed it waits: for that worker's
wake-up (host_signals.py), or at most RECHECK_S before it looks again, which also notices a claim
whose worker died (its claim is then taken over) or a lost wake-up. Waiting is bounded by
`lease_s`, the longest a live claimer can take (the rerank deadline, plus a margin); past it the
worker calls the provider itself. So a dead or stuck worker delays a search, never stalls it.

Every failure of the tier is a miss: it is counted in `stats.errors` and the worker computes the
scores itself, as it would with one worker. The first failure of each kind (exception type) is
logged with its traceback, so a bug is not a silent miss forever, and a failing tier does not
write a line per search.

Files deleted under the running workers (a `/tmp` cleaner) would split the tier: each worker keeps
the file it has open while a replacement worker creates a new one. So at most every FILE_CHECK_S,
on use, a worker checks that its files are still the ones at the path; if not it logs it, opens
what is there now (creating it if no one has yet) and binds its wake-up socket again: within a
second of the deletion every worker shares one tier again, the scores in the old file lost.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from rerank_proxy.scoring.cache.first_of_kind import FirstOfKind
from rerank_proxy.scoring.cache.host_signals import HostSignals
from rerank_proxy.scoring.cache.host_tier import Claim, HostTier

# How long a waiter trusts the wake-up before it looks at the claims again. Only a lost wake-up or
# a claimer that died mid-call ends a wait this way; the usual wake-up comes within a millisecond
# of the scores being stored (bench/host_tier.py).
RECHECK_S = 0.25
# How often a worker checks that the tier's files are still the ones it has open: a stat of two
# files, once a second at most, on use.
FILE_CHECK_S = 1.0

log = logging.getLogger(__name__)

# positions (into the keys given to `resolve`) -> their scores, from the provider; it also stores them.
Compute = Callable[[list[int]], Awaitable[list[float]]]


@dataclass(slots=True)
class HostStats:
    gave_up: int = 0     # scores computed here after waiting `lease_s` for another worker
    errors: int = 0      # failed host-tier operations (served as misses)
    rejoined: int = 0    # times the tier's files were found replaced and opened again


@dataclass(slots=True)
class Resolved:
    """`resolve`'s answer: a score per key; `from_host` the positions another worker provided."""

    scores: list[float]
    from_host: list[int] = field(default_factory=list)
    found: int = 0       # already stored when claimed
    waited: int = 0      # stored by another worker while this one waited


class HostShare:
    """The host tier and the wake-ups of one worker."""

    def __init__(self, tier: HostTier, signals: HostSignals, *, lease_s: float, recheck_s: float = RECHECK_S,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self.signals = signals
        self.lease_s = lease_s
        self.recheck_s = recheck_s
        self.timer = timer
        self.stats = HostStats()
        self._next_file_check = timer() + FILE_CHECK_S
        self._logged = FirstOfKind()

    def _failed(self, operation: str, exc: Exception) -> None:
        """A tier operation failed (served as a miss): counted; logged the first time of its kind."""
        self.stats.errors += 1
        if not self._logged.first(exc):
            return
        log.warning("the per-host score tier failed (%s: %s); served as a miss. Later failures of this "
                    "kind are only counted (rerank_proxy_cache_host_errors_total)", operation, type(exc).__name__,
                    exc_info=exc, extra={"fields": {"pid": os.getpid(), "operation": operation}})

    def rejoin_if_replaced(self) -> bool:
        """Open the tier's files again if they were deleted or replaced; True when it did."""
        now = self.timer()
        if now < self._next_file_check:
            return False
        self._next_file_check = now + FILE_CHECK_S
        try:
            if not self.tier.replaced():
                return False
            log.warning("the per-host score tier's files in %s were deleted or replaced under this worker; "
                        "opening the files there now so the workers share one tier again (its scores are "
                        "computed again)", self.tier.directory, extra={"fields": {"pid": os.getpid()}})
            self.tier.reopen()
            self.signals.restart()
        except Exception as exc:  # noqa: BLE001 - a tier failure is a miss (counted, each kind logged once)
            self._failed("rejoin", exc)
            return False
        self.stats.rejoined += 1
        return True

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        self.rejoin_if_replaced()
        try:
            found = self.tier.get_many(keys)
        except Exception as exc:  # noqa: BLE001 - a tier failure is a miss (counted, each kind logged once)
            self._failed("get_many", exc)
            return [None] * len(keys)
        return found

    def store(self, items: list[tuple[bytes, float]]) -> None:
        """Write scores and wake the workers that waited for them."""
        if not items:
            return
        try:
            waiting = self.tier.set_many(items)
        except Exception as exc:  # noqa: BLE001 - a tier failure is a miss (counted, each kind logged once)
            self._failed("store", exc)
            return
        if waiting:
            self.signals.wake(waiting)

    def entries(self) -> int | None:
        try:
            return len(self.tier)
        except Exception as exc:  # noqa: BLE001 - a tier failure is a miss (counted, each kind logged once)
            self._failed("entries", exc)
            return None

    def flush(self) -> int:
        """Empty the host tier and tell the other workers to empty their in-process tiers."""
        count = self.tier.clear()
        self.signals.broadcast_flush()
        return count

    def close(self) -> None:
        self.signals.close()
        self.tier.close()

    async def resolve(self, keys: Sequence[bytes], compute: Compute) -> Resolved:
        """A score for each of `keys` (distinct), computed here only where no other worker is at it."""
        scores: list[float | None] = [None] * len(keys)
        result = Resolved(scores=[])
        pending = list(range(len(keys)))
        give_up_at = self.timer() + self.lease_s
        first = True
        while pending:
            claim = self._claim([keys[i] for i in pending])
            if claim is None:
                mine, theirs = pending, []
            else:
                _take_found(claim, keys, pending, scores, result, first)
                claimed = set(claim.mine)
                mine = [i for i in pending if keys[i] in claimed]
                theirs = [i for i in pending if scores[i] is None and keys[i] not in claimed]
            # Registered in the same step of the event loop as the claim: wake-ups are read only by
            # the loop, so none can arrive in between, and only the keys waited for are watched.
            with self.signals.watch(keys[i] for i in theirs) as watch:
                if mine:
                    for i, score in zip(mine, await self._compute(compute, keys, mine, claim)):
                        scores[i] = score
                if theirs and self.timer() >= give_up_at:
                    self.stats.gave_up += len(theirs)
                    for i, score in zip(theirs, await compute(theirs)):
                        scores[i] = score
                    theirs = []
                elif theirs:
                    await watch.wait(min(self.recheck_s, give_up_at - self.timer()))
            pending = theirs
            first = False
        result.scores = [s for s in scores if s is not None]
        if len(result.scores) != len(keys):
            raise AssertionError("resolve left a key without a score")
        return result

    def _claim(self, keys: list[bytes]) -> Claim | None:
        try:
            return self.tier.claim(keys, self.lease_s)
        except Exception as exc:  # noqa: BLE001 - a tier failure is a miss (counted, each kind logged once)
            self._failed("claim", exc)
            return None

    async def _compute(self, compute: Compute, keys: Sequence[bytes], positions: list[int],
                       claim: Claim | None) -> list[float]:
        """The provider's scores for `positions`; on failure the claims go, and their waiters are woken."""
        try:
            return await compute(positions)
        except BaseException:
            if claim is not None:
                try:
                    self.signals.wake(self.tier.release([keys[i] for i in positions], claim.token))
                except Exception as exc:  # noqa: BLE001 - then waiters wait out the lease (counted, each kind logged once)
                    self._failed("release", exc)
            raise


def _take_found(claim: Claim, keys: Sequence[bytes], pending: list[int], scores: list[float | None],
                result: Resolved, first: bool) -> None:
    """The scores a claim found already stored: into `scores`, counted as found (the first look)
    or as waited for (stored by another worker meanwhile)."""
    for i in pending:
        score = claim.found.get(keys[i])
        if score is not None:
            scores[i] = score
            result.from_host.append(i)
    if first:
        result.found += len(claim.found)
    else:
        result.waited += len(claim.found)
