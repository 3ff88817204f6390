"""Document vectors of the built-in model, persisted in SQLite and shared by worker processes.

Embedding a document costs 40-65 ms of CPU (128-256 tokens); looking its vector up, microseconds.
Vectors are keyed by a hash of (model, max tokens, text), so a changed document, field list or
truncation simply misses and is embedded again; stale entries age out.

* WAL mode: readers never block the (short) write transactions of other workers.
* Bounded: rows get increasing ids, the newest `max_entries` are kept and older ids are deleted in the
  same transaction as each insert. That check is one index seek, so it runs on every insert.
* A small in-process LRU sits in front for hot vectors.
* Keep the file on a local disk: SQLite's WAL needs shared memory, which network filesystems lack.
* The connection is opened lazily and reopened after a fork, so it is never shared across processes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from rerank_proxy.sqlite_busy import while_busy

_DTYPES = {"float32": np.float32, "float16": np.float16}
_CHUNK = 500  # keys per SELECT ... IN (...), well under SQLite's variable limit
# What a store's methods raise when its file is the trouble: locked or corrupt (sqlite3.Error), the
# disk or permissions (OSError), a row or file of another shape (ValueError: another model's dim).
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError, ValueError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,          -- insertion order; eviction deletes the smallest
    key BLOB NOT NULL UNIQUE,        -- vector_key(): sha256 of model, max tokens and text
    vec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def vector_key(model: str, max_tokens: int, text: str) -> bytes:
    """The store key of one text: sha256 over model id, token limit and the exact text."""
    digest = hashlib.sha256(f"{model}\x00{max_tokens}\x00".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


class VectorStore:
    """Persistent, bounded key -> vector map; safe to use from threads and processes.

    `dtype` is how vectors are stored on disk. float16 (the default) halves the file; on Cranfield
    it moves cosines by at most 5e-5 and leaves nDCG@10 unchanged to four decimals (see
    bench/relevance_offline.py). It is fixed when the file is created and read back from it
    afterwards. Reads always give float32, and so do `as_stored()` and the in-process LRU, so a
    vector scores the same whether it was just computed, cached or read from disk.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_entries: int = 1_000_000, dim: int = 384,
                 dtype: str = "float16", memory_entries: int = 20_000, busy_timeout_s: float = 10.0) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.path = Path(path).expanduser()
        self.max_entries = max_entries
        self.dim = dim
        self.dtype = dtype
        self.busy_timeout_s = busy_timeout_s
        self._memory: LRUCache[bytes, np.ndarray] | None = LRUCache(memory_entries) if memory_entries else None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    # --- connection ------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open connection of this process (caller holds the lock)."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # inherited across fork: never touch the parent's handle
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            # workers starting together open one new file at the same moment (see sqlite_busy.py)
            while_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), self.busy_timeout_s)
            conn.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last commits on power loss is fine
            # as a writer at once: two processes creating the tables together wait for each other
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('dim', ?), ('dtype', ?)", (str(self.dim), self.dtype))
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        if int(meta["dim"]) != self.dim:
            conn.close()
            raise ValueError(f"{self.path} holds {meta['dim']}-d vectors, not {self.dim}-d")
        self.dtype = meta["dtype"]  # the file decides, so every process agrees
        self._conn, self._pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # --- reads -----------------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored vectors among `keys` (missing keys are absent from the result)."""
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            wanted = self._from_memory(keys, found)
            if not wanted:
                return found
            conn = self._connection()
            dtype = _DTYPES[self.dtype]
            for chunk in _chunks(wanted, _CHUNK):
                rows = conn.execute(f"SELECT key, vec FROM vectors WHERE key IN ({_marks(len(chunk))})",
                                    chunk).fetchall()
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=dtype)
                    if vector.shape[0] == self.dim:
                        found[key] = _frozen(vector.astype(np.float32))
            if self._memory is not None:
                for key in wanted:
                    if key in found:
                        self._memory[key] = found[key]
        return found

    def missing(self, keys: Sequence[bytes]) -> list[bytes]:
        """The keys that have no stored vector, in input order (no vector is read)."""
        with self._lock:
            if self._memory is not None:
                keys = [k for k in keys if k not in self._memory]
            if not keys:
                return []
            conn = self._connection()
            present: set[bytes] = set()
            for chunk in _chunks(list(dict.fromkeys(keys)), _CHUNK):
                present.update(row[0] for row in conn.execute(
                    f"SELECT key FROM vectors WHERE key IN ({_marks(len(chunk))})", chunk))
        return [k for k in keys if k not in present]

    def count(self) -> int:
        with self._lock:
            rows: int = self._connection().execute("SELECT count(*) FROM vectors").fetchone()[0]
            return rows

    # --- writes ----------------------------------------------------------------------------------

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> int:
        """Store vectors; returns how many rows were added.

        Keys are content hashes, so a key's vector never changes: an existing key is left alone.

        One write transaction per call, which also evicts the oldest rows beyond `max_entries`.
        """
        with self._lock:
            conn = self._connection()
            dtype = _DTYPES[self.dtype]
            rows = []
            for key, vector in items:
                vector = np.asarray(vector, dtype=np.float32).reshape(-1)
                if vector.shape[0] != self.dim:
                    raise ValueError(f"vector has {vector.shape[0]} dimensions, expected {self.dim}")
                stored = vector.astype(dtype)
                rows.append((key, stored.tobytes()))
                if self._memory is not None:
                    self._memory[key] = _frozen(stored.astype(np.float32))
            if not rows:
                return 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO vectors (key, vec) VALUES (?, ?)", rows)
                added = conn.total_changes - before
                # ids are handed out as max(id)+1 and only the oldest are deleted, so they stay
                # contiguous and this keeps exactly the newest max_entries rows.
                conn.execute("DELETE FROM vectors WHERE id <= (SELECT max(id) FROM vectors) - ?",
                             (self.max_entries,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added

    def as_stored(self, vectors: np.ndarray) -> np.ndarray:
        """`vectors` as they read back from the store (rounded to its dtype), as float32."""
        return np.asarray(vectors).astype(_DTYPES[self.dtype]).astype(np.float32)

    def _from_memory(self, keys: Sequence[bytes], found: dict[bytes, np.ndarray]) -> list[bytes]:
        """Fill `found` from the LRU; returns the distinct keys still wanted."""
        wanted = []
        for key in dict.fromkeys(keys):
            vector = self._memory.get(key) if self._memory is not None else None
            if vector is None:
                wanted.append(key)
            else:
                found[key] = vector
        return wanted


def _frozen(vector: np.ndarray) -> np.ndarray:
    """Vectors (always our own copies) are shared via the LRU: make in-place edits fail loudly."""
    vector.flags.writeable = False
    return vector


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: list[bytes], size: int) -> Iterable[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
