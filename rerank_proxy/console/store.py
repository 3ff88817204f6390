"""The console's SQLite database: judgments and saved query sets, one small write per change.

SQLite in WAL mode lets several workers share the file (each write is one short transaction; readers
never wait for writers), and a judgment is a one-row upsert instead of a rewrite of everything. The
file is bounded with SQLite's own `max_page_count`: a write that would grow it past the limit fails
inside SQLite and is answered with a clear 507; nothing is evicted, since judgments are people's work.

Every method here is blocking: `judgments.JudgmentStore` calls them on its own thread, never on the
event loop. A `ConsoleDB` must be used from one thread only (the connection is opened in it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_proxy.errors import ProxyError
from rerank_proxy.sqlite_busy import while_busy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id TEXT PRIMARY KEY, idx TEXT NOT NULL, text TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queries_by_index ON queries (idx, text);
CREATE TABLE IF NOT EXISTS judgments (
    query_id TEXT NOT NULL REFERENCES queries (id) ON DELETE CASCADE,
    doc_id TEXT NOT NULL,
    grade INTEGER NOT NULL CHECK (grade BETWEEN 0 AND 3),
    judged_at REAL NOT NULL,
    PRIMARY KEY (query_id, doc_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS query_sets (
    name TEXT PRIMARY KEY, queries TEXT NOT NULL, size INTEGER NOT NULL, saved_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_WAL_KEEP_BYTES = 4 * 1024 * 1024  # the WAL file is cut back to this after a checkpoint
_BUSY_TIMEOUT_S = 10.0             # how long a write waits for another worker's transaction


@dataclass(frozen=True, slots=True)
class JudgedQuery:
    id: str
    index: str
    text: str
    docs: dict[str, int]


@dataclass(frozen=True, slots=True)
class SetInfo:
    name: str
    queries: int
    saved_at: float


class ConsoleDB:
    """Judgments and query sets in one SQLite file of at most `max_bytes` (page granularity)."""

    def __init__(self, path: Path, max_bytes: int, limit_hint: str = "") -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._limit_hint = limit_hint
        self._conn: sqlite3.Connection | None = None

    # --- connection --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            while_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), _BUSY_TIMEOUT_S)
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses no committed row
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_KEEP_BYTES}")
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(self.max_bytes // page_size, 16)}")
            # Taken as a writer at once: two workers creating the tables together would otherwise
            # both read the schema and then fail to upgrade, without waiting for each other.
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        except (OSError, sqlite3.Error) as exc:
            raise ProxyError(503, "console_storage_exception",
                             f"cannot open the console store {self.path} ({exc}); "
                             "set CONSOLE_JUDGMENTS_FILE to a writable path on a local disk") from None
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _failed(self, exc: sqlite3.Error) -> ProxyError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return ProxyError(507, "console_store_full_exception",
                              f"the console store {self.path} is full: it holds at most "
                              f"{self.max_bytes // (1024 * 1024)} MiB{self._limit_hint}. Delete saved query sets "
                              "(or judgments) to make room, or raise the limit")
        if code == sqlite3.SQLITE_BUSY:
            return ProxyError(503, "console_storage_exception",
                              f"the console store {self.path} stayed locked by another worker; try again")
        return ProxyError(500, "console_storage_exception", f"the console store {self.path} failed ({exc})")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; taken as a writer at once so two workers never deadlock on an upgrade."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._failed(exc) from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._connect().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    # --- judgments ---------------------------------------------------------------------------

    def get(self, query_id: str) -> dict[str, int]:
        rows = self._read("SELECT doc_id, grade FROM judgments WHERE query_id = ?", (query_id,))
        return {str(doc): int(grade) for doc, grade in rows}

    def get_many(self, query_ids: list[str]) -> dict[str, dict[str, int]]:
        """Judgments of many queries in a few reads (a batch run's stored qrels)."""
        out: dict[str, dict[str, int]] = {qid: {} for qid in query_ids}
        unique = list(out)
        for start in range(0, len(unique), 500):  # well under SQLite's limit on bound parameters
            chunk = unique[start:start + 500]
            rows = self._read(f"SELECT query_id, doc_id, grade FROM judgments WHERE query_id IN "
                              f"({', '.join('?' * len(chunk))})", tuple(chunk))
            for qid, doc, grade in rows:
                out[str(qid)][str(doc)] = int(grade)
        return out

    def set(self, query_id: str, index: str, text: str, doc_id: str, grade: int | None) -> dict[str, int]:
        """Record (or with None, forget) one judgment; a query without judgments is dropped."""
        with self._write() as conn:
            if grade is None:
                conn.execute("DELETE FROM judgments WHERE query_id = ? AND doc_id = ?", (query_id, doc_id))
                conn.execute("DELETE FROM queries WHERE id = ? AND NOT EXISTS "
                             "(SELECT 1 FROM judgments WHERE query_id = ?)", (query_id, query_id))
            else:
                conn.execute("INSERT OR IGNORE INTO queries (id, idx, text) VALUES (?, ?, ?)", (query_id, index, text))
                conn.execute("INSERT INTO judgments (query_id, doc_id, grade, judged_at) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (query_id, doc_id) DO UPDATE SET grade = excluded.grade, "
                             "judged_at = excluded.judged_at", (query_id, doc_id, grade, time.time()))
            rows = conn.execute("SELECT doc_id, grade FROM judgments WHERE query_id = ?", (query_id,)).fetchall()
        return {str(doc): int(g) for doc, g in rows}

    def queries(self, index: str | None = None) -> list[JudgedQuery]:
        where, args = ("WHERE q.idx = ?", (index,)) if index is not None else ("", ())
        rows = self._read("SELECT q.id, q.idx, q.text, j.doc_id, j.grade FROM queries q "
                          f"JOIN judgments j ON j.query_id = q.id {where} ORDER BY q.idx, q.text, j.doc_id", args)
        out: dict[str, JudgedQuery] = {}
        for qid, idx, text, doc, grade in rows:
            entry = out.get(str(qid))
            if entry is None:
                entry = out[str(qid)] = JudgedQuery(str(qid), str(idx), str(text), {})
            entry.docs[str(doc)] = int(grade)
        return list(out.values())

    def by_texts(self, texts: list[str]) -> list[JudgedQuery]:
        """The judged queries with one of these texts, in any index (the experiment report's lookup:
        a UBI record names its query text, not its index)."""
        out: dict[str, JudgedQuery] = {}
        unique = list(dict.fromkeys(texts))
        for start in range(0, len(unique), 500):  # well under SQLite's limit on bound parameters
            chunk = unique[start:start + 500]
            rows = self._read("SELECT q.id, q.idx, q.text, j.doc_id, j.grade FROM queries q "
                              "JOIN judgments j ON j.query_id = q.id "
                              f"WHERE q.text IN ({', '.join('?' * len(chunk))})", tuple(chunk))
            for qid, idx, text, doc, grade in rows:
                entry = out.setdefault(str(qid), JudgedQuery(str(qid), str(idx), str(text), {}))
                entry.docs[str(doc)] = int(grade)
        return list(out.values())

    # --- saved query sets --------------------------------------------------------------------

    def query_sets(self) -> list[SetInfo]:
        rows = self._read("SELECT name, size, saved_at FROM query_sets ORDER BY name")
        return [SetInfo(str(name), int(size), float(at)) for name, size, at in rows]

    def query_set(self, name: str) -> list[str] | None:
        rows = self._read("SELECT queries FROM query_sets WHERE name = ?", (name,))
        return list(json.loads(str(rows[0][0]))) if rows else None

    def save_set(self, name: str, texts: list[str]) -> None:
        payload = json.dumps(texts, ensure_ascii=False)
        with self._write() as conn:
            conn.execute("INSERT INTO query_sets (name, queries, size, saved_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET queries = excluded.queries, size = excluded.size, "
                         "saved_at = excluded.saved_at", (name, payload, len(texts), time.time()))

    def delete_set(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM query_sets WHERE name = ?", (name,)).rowcount > 0

    # --- bookkeeping -------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes the database uses (what `max_bytes` bounds; the WAL file comes on top, briefly)."""
        rows = self._read("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        return int(rows[0][0])

    @contextmanager
    def import_once(self, key: str) -> Iterator[sqlite3.Connection | None]:
        """A write transaction for a one-time import named `key`; None when it already ran."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone():
                yield None
                return
            yield conn
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(time.time())))
