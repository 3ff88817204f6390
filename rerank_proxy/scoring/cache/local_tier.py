"""The in-process score tier: bounded entries, a TTL per entry, least recently used evicted first.

The same rules as cachetools' `TTLCache`, which this replaces on the search path: an entry lives
`ttl_s` from its last write, reads do not extend it but make it recently used, the least recently
used entry goes when the bound is reached, and `len()` counts live entries only (a randomized test
compares the two). It is built on two C-implemented `OrderedDict`s (recency order and write order)
and works on whole batches, with one clock read per batch: a search looks up 100 keys, and
cachetools' pure-Python `get` and `__setitem__` (about 1.2 µs per key each, against about 0.1 µs
for a lookup here) were the largest single cost of a cache-hit search in the profiles
(`python -m bench.search_cpu --profile hit`). cachetools stays the library for caches off that path.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LocalTier(Generic[K, V]):
    """A bounded TTL + LRU map with batch reads and writes."""

    def __init__(self, maxsize: int, ttl_s: float, timer: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self.timer = timer
        self._values: OrderedDict[K, V] = OrderedDict()        # least recently used first
        self._expires: OrderedDict[K, float] = OrderedDict()   # first written (first to expire) first

    def __len__(self) -> int:
        self._expire(self.timer())
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        expires = self._expires.get(cast(K, key))  # a key of another type is simply absent
        return expires is not None and self.timer() < expires

    def get(self, key: K) -> V | None:
        return self.get_many((key,))[0]

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """The live value of each key, or None; hits become the most recently used."""
        now = self.timer()
        expires_of = self._expires.get
        values = self._values
        touch = values.move_to_end
        out: list[V | None] = []
        append = out.append
        for key in keys:
            expires = expires_of(key)
            if expires is not None and now < expires:
                touch(key)
                append(values[key])
            else:
                append(None)
        return out

    def __setitem__(self, key: K, value: V) -> None:
        self.set_many(((key, value),))

    def set_many(self, items: Iterable[tuple[K, V]]) -> None:
        """Write (or rewrite) entries: each lives `ttl_s` from now and is the most recently used."""
        items = list(items)
        now = self.timer()
        self._expire(now)
        fresh = dict(items)
        values, expiry = self._values, self._expires
        if len(fresh) != len(items):  # a key twice: its last write decides its place, as one by one
            fresh = {}
            for key, value in items:
                fresh.pop(key, None)
                fresh[key] = value
        for key in fresh.keys() & expiry.keys():  # rewritten entries move to the end
            del values[key]
            del expiry[key]
        values.update(fresh)
        expiry.update(dict.fromkeys(fresh, now + self.ttl_s))
        for _ in range(len(values) - self.maxsize):
            key, _value = values.popitem(last=False)
            del expiry[key]

    def clear(self) -> None:
        self._values.clear()
        self._expires.clear()

    def _expire(self, now: float) -> None:
        """Drop the entries whose time is up (they are at the front of the write order)."""
        expiry, values = self._expires, self._values
        while expiry:
            key = next(iter(expiry))
            if now < expiry[key]:
                return
            del expiry[key]
            del values[key]
