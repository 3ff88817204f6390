"""The per-host score tier: one LMDB environment that the workers of one `rerank-proxy serve` share.

Without it every worker keeps its own scores, so a query first seen by one worker is paid for again
by each of the others. LMDB, not SQLite: in `bench/host_tier.py` a lookup of 100 keys took about
half of SQLite's time (WAL mode, same machine, same run) and a write of 100 about a quarter, close
enough to the in-process tier to run on the event loop (docs/decisions/host-tier.md).

LMDB lets one process write at a time, and a cache miss writes twice (a claim, then the scores), so
each write is kept to a few calls into LMDB, whatever the number of keys:

* Keys (`ScoreCache.doc_keys`) begin with their query's digest, so one search's keys sit side by
  side: a claim or a store of 100 of them touches a few B-tree pages, not one page (copied on write)
  per key.
* Rows: key -> a score (score, expiry) or a claim (owner pid, owner token, lease end, then the pids
  of waiting workers), told apart by length. A claim is written where its score will be, so storing
  the score replaces the claim: no second table to clean, and the one read that finds the claims
  with waiters is the read the store needs anyway.
* Two generations instead of a per-entry eviction order: rows are written to the current table; a
  write that would take it past half the bound first drops the other table whole (one call, however
  many rows) and writes there, making it current. Reads look in the current table, then the other.
  So at most `max_entries` rows are held, the oldest writes go first (a generation at a time), and a
  write never pays for evicting rows one by one. Expired rows are unreadable at once and leave with
  their generation.
* Claims: a worker about to ask the provider for a key writes its claim in the same write
  transaction that checks the key has no live score, so two workers can never both claim one key.
  Workers that find a live claim add their pid to it, to be woken when the score lands
  (host_signals.py); a claim whose lease ran out, or whose worker is gone, is taken over.
* Expiry uses CLOCK_MONOTONIC, which is one clock for every process of the host.
* Every method may raise (a full map, a broken file): `HostShare` turns that into a miss.
* The files can be deleted under running workers (a `/tmp` cleaner): the workers would keep the
  unlinked file while a replacement worker opens a new one, and the tier would split in two.
  `replaced()` compares the file the environment has open with the one at its path, and `reopen()`
  joins whatever is there now (creating it if no one has yet).
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import lmdb

_SCORE = struct.Struct("<dd")       # score, expires
_CLAIM = struct.Struct("<iQd")      # owner pid, owner token, lease end; then waiting pids
_PID = struct.Struct("<i")
_CURRENT = b"current"               # meta: which generation table takes the writes, b"0" or b"1"
_GENERATIONS = (b"entries.0", b"entries.1")
# A row takes about 100 bytes with its share of the B-tree; the map is a sparse file, so a generous
# bound costs nothing until it is used.
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
        self.generation_size = max(1, max_entries // 2)
        self.ttl_s = ttl_s
        self.timer = timer
        self.pid = os.getpid()
        self.directory = os.fspath(directory)
        self._max_readers = max_readers
        self._tokens = itertools.count(1)
        self._open()

    def _open(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        max_entries, max_readers = self.max_entries, self._max_readers
        # writemap: a commit changes the mapped pages in place instead of copying each dirty page out
        # with pwrite (a write of 100 scores: 1.7 -> 1.1 ms here); a cache need not survive a host crash.
        self.env = lmdb.open(self.directory, map_size=max(_MIN_MAP_BYTES, max_entries * _BYTES_PER_ENTRY),
                             max_dbs=4, max_readers=max_readers, sync=False, metasync=False, readahead=False,
                             meminit=False, writemap=True)
        # A worker killed inside a read transaction leaves its reader slot behind, which would keep
        # old pages from being reused; the worker that replaces it clears such slots.
        self.env.reader_check()
        self._tables = tuple(self.env.open_db(name) for name in _GENERATIONS)
        self._meta = self.env.open_db(b"meta")
        self._identity = self._files()

    def _files(self) -> tuple[tuple[int, int] | None, ...]:
        """Which data and lock files are at the path now (LMDB's two files: both must be shared)."""
        return tuple(_identity(os.path.join(self.directory, name)) for name in ("data.mdb", "lock.mdb"))

    def replaced(self) -> bool:
        """True when the files this environment has open are no longer the ones at its path
        (deleted, or deleted and created again by another worker)."""
        return self._files() != self._identity

    def reopen(self) -> None:
        """Close this environment and open the files now at the path (the other workers' too)."""
        self.env.close()
        self._open()

    def __len__(self) -> int:
        """Rows held (scores, expired ones not yet dropped, and claims), both generations."""
        with self.env.begin() as txn:
            return sum(int(txn.stat(table)["entries"]) for table in self._tables)

    def close(self) -> None:
        self.env.close()

    def _generations(self, txn: lmdb.Transaction) -> tuple[lmdb._Database, lmdb._Database]:
        """(current, previous) tables."""
        current = 1 if txn.get(_CURRENT, db=self._meta) == b"1" else 0
        return self._tables[current], self._tables[1 - current]

    def _rows(self, txn: lmdb.Transaction, keys: Sequence[bytes]) -> tuple[lmdb._Database, dict[bytes, bytes]]:
        """The current table, and the row of each key that has one (the current generation's first).
        Keys come sorted: a cursor finds the next key on the page it is on without a walk from the root."""
        current, previous = self._generations(txn)
        rows: dict[bytes, bytes] = dict(txn.cursor(db=current).getmulti(keys))  # type: ignore[arg-type]  # bytes: buffers=False
        if len(rows) < len(keys):
            older = [key for key in keys if key not in rows]
            rows.update(txn.cursor(db=previous).getmulti(older))  # type: ignore[arg-type]  # bytes: buffers=False
        return current, rows

    # --- reads -----------------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """The live score of each key, or None."""
        now = self.timer()
        with self.env.begin() as txn:
            _, rows = self._rows(txn, sorted(keys))
        return [_live_score(rows.get(key), now) for key in keys]

    # --- writes ----------------------------------------------------------------------------------

    def set_many(self, items: Iterable[tuple[bytes, float]]) -> dict[int, list[bytes]]:
        """Store scores (each lives `ttl_s` from now); a claim on a key is replaced by its score.

        Returns the workers that waited on the replaced claims: pid -> the keys each waited for.
        """
        scores = dict(sorted(items))
        waiting: dict[int, list[bytes]] = {}
        if not scores:
            return waiting
        with self.env.begin(write=True) as txn:
            expires = self.timer() + self.ttl_s
            current, rows = self._rows(txn, list(scores))
            for key, row in rows.items():
                if len(row) > _CLAIM.size:  # a claim someone waits on
                    for pid in _waiters(row):
                        waiting.setdefault(pid, []).append(key)
            pack = _SCORE.pack
            table = self._room_for(txn, current, len(scores))
            txn.cursor(db=table).putmulti([(key, pack(score, expires)) for key, score in scores.items()])
        waiting.pop(self.pid, None)
        return waiting

    def _room_for(self, txn: lmdb.Transaction, current: lmdb._Database, count: int) -> lmdb._Database:
        """The table to write `count` rows to: the current one, or (were it to pass half the bound)
        the other one, emptied, which becomes current."""
        held = int(txn.stat(current)["entries"])
        if held == 0 or held + count <= self.generation_size:
            return current
        other = self._tables[1] if current is self._tables[0] else self._tables[0]
        txn.drop(other, delete=False)
        txn.put(_CURRENT, b"1" if other is self._tables[1] else b"0", db=self._meta)
        return other

    # --- claims ----------------------------------------------------------------------------------

    def claim(self, keys: Sequence[bytes], lease_s: float) -> Claim:
        """For each key: its score if one landed meanwhile, else a claim for this call, else (another
        worker holds a live claim) a place among that claim's waiters."""
        result = Claim(token=next(self._tokens))
        alive: dict[int, bool] = {self.pid: False}  # an own leftover claim is no one's work: take it
        wanted = sorted(set(keys))
        with self.env.begin(write=True) as txn:
            now = self.timer()
            current, rows = self._rows(txn, wanted)
            mine = _CLAIM.pack(self.pid, result.token, now + lease_s)
            fresh = []
            for key in wanted:
                row = rows.get(key)
                if row is None:
                    fresh.append((key, mine))
                    result.mine.append(key)
                    continue
                if len(row) == _SCORE.size:
                    score, expires = _SCORE.unpack(row)
                    if now < expires:
                        result.found[key] = score
                    else:
                        fresh.append((key, mine))
                        result.mine.append(key)
                    continue
                owner, _token, until = _CLAIM.unpack_from(row)
                if owner not in alive:
                    alive[owner] = _alive(owner)
                waiters = _waiters(row)
                if now < until and alive[owner]:
                    if self.pid not in waiters:
                        fresh.append((key, row + _PID.pack(self.pid)))
                    result.theirs.append(key)
                else:  # taken over: the old claim's waiters now wait on this one
                    fresh.append((key, mine + b"".join(_PID.pack(p) for p in waiters if p != self.pid)))
                    result.mine.append(key)
            if fresh:
                txn.cursor(db=self._room_for(txn, current, len(fresh))).putmulti(fresh)
        return result

    def release(self, keys: Iterable[bytes], token: int) -> dict[int, list[bytes]]:
        """Drop this call's claims without a score (the provider failed); returns their waiters."""
        waiting: dict[int, list[bytes]] = {}
        with self.env.begin(write=True) as txn:
            for table in self._tables:
                for key, row in txn.cursor(db=table).getmulti(list(keys)):
                    if len(row) < _CLAIM.size:
                        continue
                    owner, held_token, _until = _CLAIM.unpack_from(row)
                    if owner == self.pid and held_token == token:
                        txn.delete(key, db=table)
                        for pid in _waiters(row):
                            waiting.setdefault(pid, []).append(key)
        waiting.pop(self.pid, None)
        return waiting

    def claimed_by(self, key: bytes) -> tuple[int, list[int]] | None:
        """Who holds the claim on `key` and who waits on it (pids), for diagnostics."""
        with self.env.begin() as txn:
            row = self._rows(txn, [key])[1].get(key)
        if row is None or len(row) < _CLAIM.size:
            return None
        return _CLAIM.unpack_from(row)[0], _waiters(row)

    def clear(self) -> int:
        """Drop every score and claim; returns how many rows there were."""
        with self.env.begin(write=True) as txn:
            count = sum(int(txn.stat(table)["entries"]) for table in self._tables)
            for table in self._tables:
                txn.drop(table, delete=False)
        return count


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _live_score(row: bytes | None, now: float) -> float | None:
    if row is None or len(row) != _SCORE.size:
        return None
    score, expires = _SCORE.unpack(row)
    return score if now < expires else None


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
