"""A queue of (key, text) items that serves first the owner closest to having all it waits for.

The background embedder keeps one per priority. An owner is whatever asked for the work (one
search, or one `_msearch` with all its sub-searches). A search is reranked only when every
document of its window has a vector, so documents embedded for many windows at once unlock none
of them until nearly all are done: on a busy host, where the embedder gets a small share of the
CPU, that left 2% of searches reranked after two minutes. Here the owner with the fewest documents
still missing goes first, counting the documents it shares with others (queued under the owner
that asked first), so windows complete one after another, and a search with three cold documents
is never behind a request that queued thousands.

So that a large owner is not starved by a stream of small ones, an owner queued STARVING_S ago or
more is overdue, and every other chunk goes to the oldest overdue owner. Both choices stick to an
owner until it completes (the time queued is never reset by serving), so even when every owner is
overdue, as on a busy host where all windows wait for minutes, windows still complete one after
another; a rule that served the longest-unserved owner next went round robin there, and left 2%
of searches reranked after two minutes beside three busy processes. Not thread-safe: the embedder
holds its lock around every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator

Owner = Hashable
STARVING_S = 30.0


class CompletionQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._texts: dict[bytes, str] = {}                  # queued items, oldest first
        self._waiters: dict[bytes, list[Owner]] = {}        # key -> the owners waiting for it
        self._missing: dict[Owner, dict[bytes, None]] = {}  # owner -> keys it waits for; oldest owner first
        self._queued_at: dict[Owner, float] = {}            # owner -> when it first queued
        self._overdue_turn = True                           # whether the next chunk may go to an overdue owner

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: object) -> bool:
        return key in self._texts

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._texts))

    def put(self, key: bytes, text: str, owner: Owner) -> None:
        """Queue a new item for `owner` (or add `owner` to its waiters if it is queued already)."""
        if key not in self._texts:
            self._texts[key] = text
            self._waiters[key] = []
        self.join(key, owner)

    def join(self, key: bytes, owner: Owner) -> None:
        """`owner` waits for an item already queued here (another owner asked first)."""
        waiters = self._waiters.get(key)
        if waiters is None or owner in waiters:
            return
        waiters.append(owner)
        if owner not in self._missing:
            self._missing[owner] = {}
            self._queued_at[owner] = self._clock()
        self._missing[owner][key] = None

    def pop(self, key: bytes) -> str:
        """Remove one item by key (it moves to another priority)."""
        return self._remove(key)

    def pop_newest(self) -> tuple[bytes, str]:
        """The item queued last (the one to drop when the queue is full)."""
        key = next(reversed(self._texts))
        return key, self._remove(key)

    def take(self, n: int) -> list[tuple[bytes, str]]:
        """Up to n items of the owner to serve now; its remaining items keep it in line."""
        owner = self._next_owner()
        if owner is None:
            return []
        keys = list(self._missing[owner])[:n]
        return [(key, self._remove(key)) for key in keys]

    def ahead_of(self, owner: Owner) -> int:
        """About how many items are taken before the last one `owner` waits for (0: none)."""
        mine = len(self._missing.get(owner, ()))
        if not mine:
            return 0
        return mine + sum(len(keys) for other, keys in self._missing.items() if other != owner and len(keys) < mine)

    def owners(self) -> int:
        return len(self._missing)

    def clear(self) -> None:
        self._texts.clear()
        self._waiters.clear()
        self._missing.clear()
        self._queued_at.clear()

    def _next_owner(self) -> Owner | None:
        if not self._missing:
            return None
        oldest = next(iter(self._missing))
        overdue = self._clock() - self._queued_at[oldest] >= STARVING_S
        if overdue:
            self._overdue_turn = not self._overdue_turn
            if not self._overdue_turn:  # this turn is the overdue owner's; the next one the nearest's
                return oldest
        return min(self._missing, key=lambda owner: len(self._missing[owner]))  # ties: the oldest

    def _remove(self, key: bytes) -> str:
        text = self._texts.pop(key)
        for owner in self._waiters.pop(key):
            missing = self._missing[owner]
            del missing[key]
            if not missing:
                del self._missing[owner]
                del self._queued_at[owner]
        return text
