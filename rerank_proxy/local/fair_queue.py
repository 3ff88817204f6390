"""A queue of (key, text) items taken in turn across owners, first in first out within each owner.

The background embedder keeps one per priority. An owner is whatever asked for the work (one
search, or one `_msearch` with all its sub-searches): taking a chunk from each owner in turn means
a request that queued thousands of documents delays another request's ten by a few chunks, not by
its whole backlog. Not thread-safe: the embedder holds its lock around every call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator

Owner = Hashable


class FairQueue:
    def __init__(self) -> None:
        self._by_owner: OrderedDict[Owner, OrderedDict[bytes, str]] = OrderedDict()
        self._owner_of: dict[bytes, Owner] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def __contains__(self, key: bytes) -> bool:
        return key in self._owner_of

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._owner_of))

    def put(self, key: bytes, text: str, owner: Owner) -> None:
        self._by_owner.setdefault(owner, OrderedDict())[key] = text
        self._owner_of[key] = owner

    def pop(self, key: bytes) -> str:
        """Remove one item by key (it moves to another priority); its owner keeps its turn."""
        owner = self._owner_of.pop(key)
        items = self._by_owner[owner]
        text = items.pop(key)
        if not items:
            del self._by_owner[owner]
        return text

    def pop_newest(self) -> tuple[bytes, str]:
        """The newest item of the owner that joined last (the one whose backlog is youngest)."""
        owner, items = next(reversed(self._by_owner.items()))
        key, text = items.popitem(last=True)
        del self._owner_of[key]
        if not items:
            del self._by_owner[owner]
        return key, text

    def take(self, n: int) -> list[tuple[bytes, str]]:
        """Up to n of the oldest items of the owner whose turn it is; that owner goes to the back."""
        if not self._by_owner:
            return []
        owner, items = self._by_owner.popitem(last=False)
        chunk = [items.popitem(last=False) for _ in range(min(n, len(items)))]
        for key, _ in chunk:
            del self._owner_of[key]
        if items:
            self._by_owner[owner] = items
        return chunk

    def ahead_of(self, owner: Owner) -> int:
        """Items taken before the last of `owner`'s, taking turns: each other owner contributes at
        most as many as `owner` has queued (0 when it has none queued)."""
        mine = len(self._by_owner.get(owner, ()))
        if not mine:
            return 0
        return sum(min(len(items), mine) for items in self._by_owner.values())

    def owners(self) -> int:
        return len(self._by_owner)

    def clear(self) -> None:
        self._by_owner.clear()
        self._owner_of.clear()
