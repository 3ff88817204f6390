"""The documents inside a write request the proxy relays: `_bulk`, `_doc`, `_create`, `_update`.

Pure parsing, no I/O: the proxy already holds the request body, so documents written through it
can be queued for embedding without asking the engine for them again. Anything that does not parse
yields nothing (the engine, not this module, answers the client about a bad write).

An `_update` yields its `doc` (or `upsert`); a partial `doc` makes the same text as the stored
document only when it carries every field the index's rule reads, otherwise its vector is simply
never looked up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

_SOURCE_ACTIONS = ("index", "create")


@dataclass(frozen=True, slots=True)
class WrittenDoc:
    index: str
    id: str | None       # None when the engine assigns it
    source: dict[str, Any]


def is_write(method: str, path: str) -> bool:
    """Whether a request can carry documents (decided from its head, before any body is kept)."""
    if method not in ("POST", "PUT"):
        return False
    parts = [p for p in path.split("?", 1)[0].strip("/").split("/") if p]
    if parts and parts[-1] == "_bulk" and len(parts) <= 2:
        return True
    return 2 <= len(parts) <= 3 and not parts[0].startswith(("_", ".")) \
        and parts[1] in ("_doc", "_create", "_update")


def written_docs(method: str, path: str, body: bytes) -> Iterator[WrittenDoc]:
    """The documents a write request carries; nothing for other requests or unparsable bodies."""
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/") if p]
    if method not in ("POST", "PUT") or not parts or not body:
        return
    if parts[-1] == "_bulk" and len(parts) <= 2:
        yield from _bulk(parts[0] if len(parts) == 2 else None, body)
        return
    if len(parts) < 2 or parts[0].startswith(("_", ".")):
        return
    index, endpoint, doc_id = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if len(parts) > 3 or endpoint not in ("_doc", "_create", "_update"):
        return
    data = _json(body)
    if endpoint == "_update":
        source = _update_source(data)
        if source is not None and doc_id is not None:
            yield WrittenDoc(index, doc_id, source)
    elif isinstance(data, dict) and (doc_id is not None or endpoint == "_doc"):
        yield WrittenDoc(index, doc_id, data)


def _bulk(default_index: str | None, body: bytes) -> Iterator[WrittenDoc]:
    lines = iter(line for line in body.split(b"\n") if line.strip())
    for line in lines:
        action = _json(line)
        if not isinstance(action, dict) or len(action) != 1:
            return  # the engine rejects the whole request; nothing after this line is reliable
        kind, meta = next(iter(action.items()))
        if kind == "delete":
            continue
        payload = _json(next(lines, b""))
        if not isinstance(meta, dict) or kind not in (*_SOURCE_ACTIONS, "update"):
            return
        index = meta.get("_index", default_index)
        doc_id = meta.get("_id")
        if not isinstance(index, str) or not index or index.startswith("."):
            continue
        source = _update_source(payload) if kind == "update" else payload
        if isinstance(source, dict):
            yield WrittenDoc(index, str(doc_id) if doc_id is not None else None, source)


def _update_source(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    for key in ("doc", "upsert"):
        part = data.get(key)
        if isinstance(part, dict):
            return part
    return None


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
