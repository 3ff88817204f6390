"""Relevance judgments and saved query sets of the console, as the routes use them.

Judgments are what make the console's nDCG meaningful, so they must survive restarts, be shared by
the proxy's workers and be exportable (BEIR-style qrels). They live in a bounded SQLite file
(`store.ConsoleDB`); every call here runs on the store's own thread, so a judgment, a large query
set or an export never holds up the event loop (health checks, searches) while the disk works.

A query is identified by (index, query text); its id is a short hash of both, stable across
restarts and machines, so exports of the same judgments always use the same query ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rerank_proxy.config import Settings
from rerank_proxy.console.legacy import import_json
from rerank_proxy.console.store import ConsoleDB, JudgedQuery, SetInfo
from rerank_proxy.errors import bad_request

DEFAULT_JUDGMENTS_FILE = "~/.cache/rerank-proxy/console-judgments.json"  # CONSOLE_JUDGMENTS_FILE's default
DEFAULT_STORE_MAX_MB = 64  # CONSOLE_STORE_MAX_MB's default: judgments plus saved query sets
MAX_SET_QUERIES = 10_000
_T = TypeVar("_T")

__all__ = ["JudgedQuery", "JudgedTexts", "JudgmentStore", "SetInfo", "judged_texts", "judgments_path", "query_id",
           "store_for"]


def judgments_path(settings: Settings) -> Path:
    """The database named by CONSOLE_JUDGMENTS_FILE (an empty value means the default under ~/.cache).

    A `.json` name is the JSON file of earlier versions: the database is kept beside it as `.sqlite3`
    and the JSON file is imported into it once."""
    value = settings.console_judgments_file or DEFAULT_JUDGMENTS_FILE
    path = Path(value).expanduser()
    return path.with_suffix(".sqlite3") if path.suffix == ".json" else path


def legacy_path(settings: Settings) -> Path | None:
    path = Path(settings.console_judgments_file or DEFAULT_JUDGMENTS_FILE).expanduser()
    return path if path.suffix == ".json" else None


def store_max_bytes(settings: Settings) -> int:
    """CONSOLE_STORE_MAX_MB in bytes."""
    megabytes = settings.console_store_max_mb
    return int(max(float(megabytes), 1.0) * 1024 * 1024)


def query_id(index: str, text: str) -> str:
    digest = hashlib.blake2b(f"{index}\x1f{text}".encode(), digest_size=5).hexdigest()
    return f"q{digest}"


def _qrels_tsv(queries: list[JudgedQuery]) -> str:
    lines = ["query-id\tcorpus-id\tscore"]
    for q in queries:
        lines.extend(f"{q.id}\t{doc}\t{grade}" for doc, grade in sorted(q.docs.items()))
    return "\n".join(lines) + "\n"


def _queries_jsonl(queries: list[JudgedQuery]) -> str:
    return "".join(json.dumps({"_id": q.id, "text": q.text, "metadata": {"index": q.index}},
                              ensure_ascii=False) + "\n" for q in queries)


def _zip(queries: list[JudgedQuery]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("queries.jsonl", _queries_jsonl(queries))
        archive.writestr("qrels/test.tsv", _qrels_tsv(queries))
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class JudgedTexts:
    """Judgments found by query text alone: `qrels` by text, and the texts judged in more than one
    index (`ambiguous`), which a lookup without an index cannot place."""

    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    ambiguous: frozenset[str] = frozenset()


def _by_text(found: list[JudgedQuery]) -> JudgedTexts:
    indices: dict[str, set[str]] = {}
    for q in found:
        indices.setdefault(q.text, set()).add(q.index)
    ambiguous = frozenset(text for text, names in indices.items() if len(names) > 1)
    return JudgedTexts({q.text: q.docs for q in found if q.text not in ambiguous and q.docs}, ambiguous)


class JudgmentStore:
    """The console's judgments and query sets; every method runs on one thread of its own.

    One thread owns the SQLite connection (a connection must stay on the thread that opened it),
    and serialises this worker's writes; other workers are serialised by SQLite's file lock.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_STORE_MAX_MB * 1024 * 1024,
                 legacy: Path | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._db = ConsoleDB(path, max_bytes, " (CONSOLE_STORE_MAX_MB)")
        self._legacy = legacy
        self._opened = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-store")

    def _open(self) -> ConsoleDB:
        if not self._opened:
            if self._legacy is not None:
                import_json(self._db, self._legacy)
            self._opened = True
        return self._db

    async def _run(self, work: Callable[[ConsoleDB], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: work(self._open()))

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=False)

    # --- judgments ---------------------------------------------------------------------------

    async def get(self, index: str, text: str) -> dict[str, int]:
        qid = query_id(index, text)
        return await self._run(lambda db: db.get(qid))

    async def get_many(self, index: str, texts: list[str]) -> dict[str, dict[str, int]]:
        """Judgments of each text (by text), in one trip to the store's thread."""
        ids = {text: query_id(index, text) for text in texts}
        found = await self._run(lambda db: db.get_many(list(ids.values())))
        return {text: found[qid] for text, qid in ids.items()}

    async def by_texts(self, texts: list[str], index: str | None = None) -> JudgedTexts:
        """Judgments of these query texts in `index`, or in whichever one index judged each text."""
        if index is not None:
            found = await self.get_many(index, texts)
            return JudgedTexts({text: docs for text, docs in found.items() if docs})
        return _by_text(await self._run(lambda db: db.by_texts(texts)))

    async def set(self, index: str, text: str, doc_id: str, grade: int | None) -> dict[str, int]:
        """Record (or with None, forget) one judgment; returns the query's judgments."""
        qid = query_id(index, text)
        return await self._run(lambda db: db.set(qid, index, text, doc_id, grade))

    async def queries(self, index: str | None = None) -> list[JudgedQuery]:
        return await self._run(lambda db: db.queries(index))

    async def size_bytes(self) -> int:
        return await self._run(lambda db: db.size_bytes())

    # --- exports (BEIR layout: queries.jsonl + qrels/test.tsv) -------------------------------

    async def qrels_tsv(self, index: str | None = None) -> str:
        return await self._run(lambda db: _qrels_tsv(db.queries(index)))

    async def queries_jsonl(self, index: str | None = None) -> str:
        return await self._run(lambda db: _queries_jsonl(db.queries(index)))

    async def export_zip(self, index: str | None = None) -> bytes:
        return await self._run(lambda db: _zip(db.queries(index)))

    # --- saved query sets --------------------------------------------------------------------

    async def query_sets(self) -> list[SetInfo]:
        return await self._run(lambda db: db.query_sets())

    async def query_set(self, name: str) -> list[str] | None:
        return await self._run(lambda db: db.query_set(name))

    async def save_set(self, name: str, texts: list[str]) -> None:
        if len(texts) > MAX_SET_QUERIES:
            raise bad_request(f"a query set holds at most {MAX_SET_QUERIES} queries")
        await self._run(lambda db: db.save_set(name, texts))

    async def delete_set(self, name: str) -> bool:
        return await self._run(lambda db: db.delete_set(name))


def store_for(settings: Settings) -> JudgmentStore:
    """The store CONSOLE_JUDGMENTS_FILE and CONSOLE_STORE_MAX_MB describe."""
    return JudgmentStore(judgments_path(settings), store_max_bytes(settings), legacy_path(settings))


async def judged_texts(settings: Settings, texts: list[str], index: str | None = None) -> JudgedTexts:
    """The console's judgments of these query texts, read through a connection of its own (as another
    worker reads the file); nothing when no judgments file exists, which is then not created."""
    legacy = legacy_path(settings)
    if not texts or not (judgments_path(settings).exists() or (legacy is not None and legacy.exists())):
        return JudgedTexts()
    store = store_for(settings)
    try:
        return await store.by_texts(texts, index)
    finally:
        await store.aclose()
