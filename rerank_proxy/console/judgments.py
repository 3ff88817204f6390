"""Relevance judgments and saved query sets of the console, kept in one JSON file.

Judgments are what make the console's nDCG meaningful, so they must survive restarts and be
shareable: the file is plain JSON, exported as BEIR-style qrels. Several workers may share it:
every write is a read-modify-write under an exclusive `flock` and an atomic rename, and readers
reload when the file changed on disk, so no worker overwrites another's judgments.

A query is identified by (index, query text); its id is a short hash of both, stable across
restarts and machines, so exports of the same judgments always use the same query ids.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_proxy.config import Settings
from rerank_proxy.errors import ProxyError, bad_request

DEFAULT_JUDGMENTS_FILE = "~/.cache/rerank-proxy/console-judgments.json"  # CONSOLE_JUDGMENTS_FILE's default
MAX_SET_QUERIES = 10_000
_VERSION = 1


def judgments_path(settings: Settings) -> Path:
    """The file named by CONSOLE_JUDGMENTS_FILE (an empty value means the default under ~/.cache)."""
    value = settings.console_judgments_file or DEFAULT_JUDGMENTS_FILE
    return Path(value).expanduser()


def query_id(index: str, text: str) -> str:
    digest = hashlib.blake2b(f"{index}\x1f{text}".encode(), digest_size=5).hexdigest()
    return f"q{digest}"


@dataclass(frozen=True, slots=True)
class JudgedQuery:
    id: str
    index: str
    text: str
    docs: dict[str, int]


def _empty() -> dict[str, Any]:
    return {"version": _VERSION, "queries": {}, "sets": {}}


class JudgmentStore:
    """Read and change the judgments file; cheap to call per request (reloads only on change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, Any] = _empty()
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    # --- file handling -----------------------------------------------------------------------

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load(self) -> dict[str, Any]:
        stamp = self._current_stamp()
        if stamp is not None and stamp == self._stamp:
            return self._data
        if stamp is None:
            self._data, self._stamp = _empty(), None
            return self._data
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise bad_request(f"the judgments file {self.path} cannot be read ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("queries"), dict):
            raise bad_request(f"the judgments file {self.path} is not a console judgments file")
        data.setdefault("sets", {})
        self._data, self._stamp = data, stamp
        return data

    @contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        """Exclusive read-modify-write of the file (also across worker processes)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(f"{self.path}.lock", "a+")
        except OSError as exc:
            raise ProxyError(503, "console_storage_exception",
                             f"cannot write the judgments file {self.path} ({type(exc).__name__}); "
                             "set CONSOLE_JUDGMENTS_FILE to a writable path") from None
        with self._lock, lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._stamp = None  # always re-read under the lock
                data = self._load()
                yield data
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")
                os.replace(tmp, self.path)
                self._stamp = self._current_stamp()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        with self._lock:
            return self._load()

    # --- judgments ---------------------------------------------------------------------------

    def get(self, index: str, text: str) -> dict[str, int]:
        entry = self._read()["queries"].get(query_id(index, text))
        return dict(entry["docs"]) if entry else {}

    def set(self, index: str, text: str, doc_id: str, grade: int | None) -> dict[str, int]:
        """Record (or with None, forget) one judgment; returns the query's judgments."""
        qid = query_id(index, text)
        with self._writing() as data:
            entry = data["queries"].setdefault(qid, {"index": index, "text": text, "docs": {}})
            if grade is None:
                entry["docs"].pop(doc_id, None)
            else:
                entry["docs"][doc_id] = grade
            if not entry["docs"]:
                del data["queries"][qid]
            return dict(entry["docs"])

    def queries(self, index: str | None = None) -> list[JudgedQuery]:
        out = [JudgedQuery(qid, e["index"], e["text"], dict(e["docs"]))
               for qid, e in self._read()["queries"].items() if index is None or e["index"] == index]
        return sorted(out, key=lambda q: (q.index, q.text))

    # --- exports (BEIR layout: queries.jsonl + qrels/test.tsv) -------------------------------

    def qrels_tsv(self, index: str | None = None) -> str:
        lines = ["query-id\tcorpus-id\tscore"]
        for q in self.queries(index):
            lines.extend(f"{q.id}\t{doc}\t{grade}" for doc, grade in sorted(q.docs.items()))
        return "\n".join(lines) + "\n"

    def queries_jsonl(self, index: str | None = None) -> str:
        return "".join(json.dumps({"_id": q.id, "text": q.text, "metadata": {"index": q.index}},
                                  ensure_ascii=False) + "\n" for q in self.queries(index))

    def export_zip(self, index: str | None = None) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("queries.jsonl", self.queries_jsonl(index))
            archive.writestr("qrels/test.tsv", self.qrels_tsv(index))
        return buffer.getvalue()

    # --- saved query sets --------------------------------------------------------------------

    def query_sets(self) -> dict[str, list[str]]:
        return {name: list(texts) for name, texts in sorted(self._read()["sets"].items())}

    def save_set(self, name: str, texts: list[str]) -> None:
        if len(texts) > MAX_SET_QUERIES:
            raise bad_request(f"a query set holds at most {MAX_SET_QUERIES} queries")
        with self._writing() as data:
            data["sets"][name] = texts

    def delete_set(self, name: str) -> bool:
        with self._writing() as data:
            return data["sets"].pop(name, None) is not None
