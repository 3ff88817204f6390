"""The per-host score tier: one LMDB environment that the workers of one `rerank-proxy serve` share.

Without it every worker keeps its own scores, so a query first seen by one worker is paid for again
by each of the others. LMDB, not SQLite: in `bench/host_tier.py` a lookup of 100 keys took about a
quarter of SQLite's time (WAL mode, same machine, same run) and a write of 100 about half, close
enough to the in-process tier to run on the event loop (BENCHMARKS.md, "Workers of one host").

* Entries: key -> (score, write sequence number, expiry). A second table maps sequence number ->
  (expiry, key), so eviction takes the oldest writes first, in the same write transaction, and
  expired entries at the front are dropped as later writes pass them.
* Claims: a worker about to ask the provider for a key records a claim (its pid, a token, a lease
  end) in the same write transaction that checks the key has no score, so two workers can never
  both claim one key. Workers that find a live claim add their pid to it, to be woken when the
  score lands (host_signals.py); a claim whose lease ran out, or whose worker is gone, is taken over.
* Expiry uses CLOCK_MONOTONIC, which is one clock for every process of the host.
* Every method may raise (a full map, a broken file): `HostShare` turns that into a miss.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import lmdb

_ENTRY = struct.Struct("<dQd")      # score, sequence number, expires
_CLAIM = struct.Struct("<iQd")      # owner pid, owner token, lease end; then waiting pids
_PID = struct.Struct("<i")
_SEQ = struct.Struct(">Q")          # big-endian, so the order table iterates oldest first
_EXPIRES = struct.Struct("<d")      # an order row: expires, then the key
_SEQ_KEY = b"seq"
# An entry takes about 125 bytes in the two tables (25 MB at 200,000 entries, after 300,000 writes
# with eviction); the map is a sparse file, so a generous bound costs nothing until it is used.
_BYTES_PER_ENTRY = 1024
_MIN_MAP_BYTES = 64 << 20


@dataclass(slots=True)
class Claim:
    """What one `claim` call found for each key."""

    token: int
    found: dict[bytes, float] = field(default_factory=dict)   # a score is there: nothing to compute
    mine: list[bytes] = field(default_factory=list)           # claimed by this call: compute them
    theirs: list[bytes] = field(default_factory=list)         # a live claim of another worker: wait


class HostTier:
    """Bounded TTL scores and compute claims in an LMDB directory; open it in the process that uses it."""

    def __init__(self, directory: str | os.PathLike[str], *, max_entries: int, ttl_s: float,
                 timer: Callable[[], float] = time.monotonic, max_readers: int = 512) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.timer = timer
        self.pid = os.getpid()
        self._tokens = itertools.count(1)
        # writemap: a commit changes the mapped pages in place instead of copying each dirty page out
        # with pwrite (a write of 100 scores: 1.7 -> 1.1 ms here); a cache need not survive a host crash.
        self.env = lmdb.open(os.fspath(directory), map_size=max(_MIN_MAP_BYTES, max_entries * _BYTES_PER_ENTRY),
                             max_dbs=4, max_readers=max_readers, sync=False, metasync=False, readahead=False,
                             meminit=False, writemap=True)
        # A worker killed inside a read transaction leaves its reader slot behind, which would keep
        # old pages from being reused; the worker that replaces it clears such slots.
        self.env.reader_check()
        self._entries = self.env.open_db(b"entries")
        self._order = self.env.open_db(b"order")
        self._claims = self.env.open_db(b"claims")
        self._meta = self.env.open_db(b"meta")

    def __len__(self) -> int:
        with self.env.begin(db=self._entries) as txn:
            return int(txn.stat(self._entries)["entries"])

    def close(self) -> None:
        self.env.close()

    # --- reads -----------------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """The live score of each key, or None."""
        now = self.timer()
        with self.env.begin(db=self._entries) as txn:
            found = dict(txn.cursor().getmulti(keys))
        unpack = _ENTRY.unpack
        out: list[float | None] = []
        for key in keys:
            raw = found.get(key)
            if raw is None:
                out.append(None)
            else:
                score, _seq, expires = unpack(raw)
                out.append(score if now < expires else None)
        return out

    # --- writes ----------------------------------------------------------------------------------

    def set_many(self, items: Iterable[tuple[bytes, float]]) -> dict[int, list[bytes]]:
        """Store scores (each lives `ttl_s` from now), drop their claims, evict past the bound.

        Returns the workers waiting on the dropped claims: pid -> the keys each waited for.
        """
        scores = dict(items)
        waiting: dict[int, list[bytes]] = {}
        if not scores:
            return waiting
        with self.env.begin(write=True) as txn:
            now = self.timer()
            expires = now + self.ttl_s
            raw_seq = txn.get(_SEQ_KEY, db=self._meta)
            seq = _SEQ.unpack(raw_seq)[0] if raw_seq is not None else 0
            entries, order = txn.cursor(db=self._entries), txn.cursor(db=self._order)
            for _key, old in entries.getmulti(scores):  # a rewrite: its old place in the order goes
                txn.delete(_SEQ.pack(_ENTRY.unpack(old)[1]), db=self._order)
            rows, places = [], []
            tail = _EXPIRES.pack(expires)
            for key, score in scores.items():
                seq += 1
                rows.append((key, _ENTRY.pack(score, seq, expires)))
                places.append((_SEQ.pack(seq), tail + key))
            entries.putmulti(rows)
            order.putmulti(places, append=True)  # sequence numbers only grow
            if txn.stat(self._claims)["entries"]:
                pop = txn.pop
                claims, plain = self._claims, _CLAIM.size
                for key in scores:
                    claim = pop(key, db=claims)
                    if claim is not None and len(claim) > plain:  # someone waits on it
                        for pid in _waiters(claim):
                            waiting.setdefault(pid, []).append(key)
            txn.put(_SEQ_KEY, _SEQ.pack(seq), db=self._meta)
            self._evict(txn, order, now, expired_budget=2 * len(scores))
        waiting.pop(self.pid, None)
        return waiting

    def _evict(self, txn: lmdb.Transaction, order: lmdb.Cursor, now: float, expired_budget: int) -> None:
        """Drop the oldest writes: all beyond the bound, and up to `expired_budget` expired ones
        (bounded so that one write never pays for a long idle period at once)."""
        count = int(txn.stat(self._entries)["entries"])
        positioned = order.first()
        while positioned:
            place = order.value()
            over = count > self.max_entries
            if not over and not (expired_budget > 0 and _EXPIRES.unpack_from(place)[0] <= now):
                return
            txn.delete(place[_EXPIRES.size:], db=self._entries)
            count -= 1
            if not over:
                expired_budget -= 1
            order.delete()  # moves to the next row
            positioned = bool(order.key())

    # --- claims ----------------------------------------------------------------------------------

    def claim(self, keys: Sequence[bytes], lease_s: float) -> Claim:
        """For each key: its score if one landed meanwhile, else a claim for this call, else (another
        worker holds a live claim) a place among that claim's waiters."""
        result = Claim(token=next(self._tokens))
        alive: dict[int, bool] = {self.pid: False}  # an own leftover claim is no one's work: take it
        wanted = list(dict.fromkeys(keys))
        with self.env.begin(write=True) as txn:
            now = self.timer()
            stored = dict(txn.cursor(db=self._entries).getmulti(wanted))
            claims = txn.cursor(db=self._claims)
            held_by = dict(claims.getmulti(wanted))
            mine = _CLAIM.pack(self.pid, result.token, now + lease_s)
            fresh = []
            for key in wanted:
                raw = stored.get(key)
                if raw is not None:
                    score, _seq, expires = _ENTRY.unpack(raw)
                    if now < expires:
                        result.found[key] = score
                        continue
                held = held_by.get(key)
                if held is None:
                    fresh.append((key, mine))
                    result.mine.append(key)
                    continue
                owner, _token, until = _CLAIM.unpack_from(held)
                if owner not in alive:
                    alive[owner] = _alive(owner)
                waiters = _waiters(held)
                if now < until and alive[owner]:
                    if self.pid not in waiters:
                        fresh.append((key, held + _PID.pack(self.pid)))
                    result.theirs.append(key)
                else:  # taken over: the old claim's waiters now wait on this one
                    fresh.append((key, mine + b"".join(_PID.pack(p) for p in waiters if p != self.pid)))
                    result.mine.append(key)
            if fresh:
                claims.putmulti(fresh)
        return result

    def release(self, keys: Iterable[bytes], token: int) -> dict[int, list[bytes]]:
        """Drop this call's claims without a score (the provider failed); returns their waiters."""
        waiting: dict[int, list[bytes]] = {}
        with self.env.begin(write=True, db=self._claims) as txn:
            for key in keys:
                held = txn.get(key)
                if held is None:
                    continue
                owner, held_token, _until = _CLAIM.unpack_from(held)
                if owner == self.pid and held_token == token:
                    txn.delete(key)
                    for pid in _waiters(held):
                        waiting.setdefault(pid, []).append(key)
        waiting.pop(self.pid, None)
        return waiting

    def claimed_by(self, key: bytes) -> tuple[int, list[int]] | None:
        """Who holds the claim on `key` and who waits on it (pids), for diagnostics."""
        with self.env.begin(db=self._claims) as txn:
            held = txn.get(key)
        return None if held is None else (_CLAIM.unpack_from(held)[0], _waiters(held))

    def clear(self) -> int:
        """Drop every score and claim; returns how many scores there were."""
        with self.env.begin(write=True) as txn:
            count = int(txn.stat(self._entries)["entries"])
            for db in (self._entries, self._order, self._claims):
                txn.drop(db, delete=False)
        return count


def _waiters(claim: bytes) -> list[int]:
    return [pid for (pid,) in _PID.iter_unpack(claim[_CLAIM.size:])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid: not our worker
        return False
    return True
