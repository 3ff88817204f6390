"""One-time import of the JSON judgments file that earlier versions of the console wrote.

Judgments are people's work, so an upgrade must not lose them: the first time the database is opened
next to such a file, its judgments and query sets are copied in. The JSON file is left as it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rerank_proxy.console.store import ConsoleDB
from rerank_proxy.errors import ProxyError

_log = logging.getLogger("rerank_proxy.console")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _log.warning("console: %s is not a readable judgments file (%s); not imported", path, type(exc).__name__)
        return None
    return data if isinstance(data, dict) and isinstance(data.get("queries"), dict) else None


def import_json(db: ConsoleDB, path: Path) -> None:
    """Copy judgments and query sets of `path` into `db`, once per database."""
    data = _read(path)
    if data is None:
        return
    with db.import_once(f"json:{path.resolve()}") as conn:
        if conn is None:  # imported before: sets deleted since then stay deleted
            return
        for qid, entry in data["queries"].items():
            docs = entry.get("docs") if isinstance(entry, dict) else None
            if not isinstance(docs, dict):
                continue
            conn.execute("INSERT OR IGNORE INTO queries (id, idx, text) VALUES (?, ?, ?)",
                         (str(qid), str(entry.get("index", "")), str(entry.get("text", ""))))
            conn.executemany("INSERT OR IGNORE INTO judgments (query_id, doc_id, grade, judged_at) VALUES (?, ?, ?, 0)",
                             [(str(qid), str(doc), grade) for doc, grade in docs.items()
                              if isinstance(grade, int) and 0 <= grade <= 3])
    sets = data.get("sets")
    for name, texts in (sets.items() if isinstance(sets, dict) else ()):
        if not isinstance(texts, list):
            continue
        try:
            db.save_set(str(name), [str(t) for t in texts])
        except ProxyError as exc:  # a full store keeps the judgments; the set is reported, not half-kept
            _log.warning("console: query set %r of %s not imported: %s", name, path, exc.reason)
    _log.info("console: imported the judgments of %s into %s", path, db.path)
