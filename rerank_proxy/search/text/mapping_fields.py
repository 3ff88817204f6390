"""Which `_source` fields an index mapping types as prose, and picking their strings out of a hit.

The engines keep exact values (`keyword`: SKUs, brand and category codes, ids) apart from analysed
prose (`text`), and the mapping says which is which. A reranker reads prose and bills every token,
so by default a hit's text is made of the prose fields only. The console's field pickers walk
mappings the same way with a wider type set (see `console/engine.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any

from rerank_proxy.search.text.prose import is_serialised_json

# `search_as_you_type` is a text field with extra shingle sub-fields, its `_source` value the same
# prose; `semantic_text` keeps the original prose in `_source` (the embeddings are the engine's).
RERANK_TEXT_TYPES = frozenset({"text", "match_only_text", "search_as_you_type", "semantic_text"})


def field_paths(properties: Any, types: Collection[str], prefix: str = "") -> Iterator[str]:
    """Dotted `_source` paths of the fields typed one of `types`, objects and nested fields included.

    A multi-field (`"fields": {"text": {"type": "text"}}`) is not a `_source` path of its own: it
    indexes the value of the field that declares it, so a keyword with a text multi-field counts as
    text under the keyword's path (its owner chose to search it as prose).
    """
    if not isinstance(properties, dict):
        return
    for name, spec in properties.items():
        if not isinstance(spec, dict):
            continue
        path = f"{prefix}{name}"
        multi = spec.get("fields")
        multi_types = [s.get("type") for s in multi.values() if isinstance(s, dict)] if isinstance(multi, dict) else []
        if spec.get("type", "object") in types or any(t in types for t in multi_types):
            yield path
        yield from field_paths(spec.get("properties"), types, f"{path}.")


def answer_paths(answer: Any, types: Collection[str]) -> set[str]:
    """The paths of a whole `GET /<name>/_mapping` answer: the union over every index it lists
    (an alias, a data stream or a pattern name several)."""
    paths: set[str] = set()
    for entry in answer.values() if isinstance(answer, dict) else ():
        mappings = entry.get("mappings") if isinstance(entry, dict) else None
        if isinstance(mappings, dict):
            paths.update(field_paths(mappings.get("properties"), types))
    return paths


class _Node:
    __slots__ = ("children", "leaf")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.leaf = False


class TextPaths:
    """A set of `_source` paths, compiled into a tree so a document is walked once, in its own order.

    Document order (not the mapping's, which the engines list alphabetically) keeps the text what
    the all-strings default made of it minus the exact-value fields: a title written first stays
    first, and survives the RERANK_MAX_CHARS cut.
    """

    __slots__ = ("_root", "paths")

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(sorted(set(paths)))
        self._root = _Node()
        for path in self.paths:
            node = self._root
            for part in path.split("."):
                node = node.children.setdefault(part, _Node())
            node.leaf = True

    def __bool__(self) -> bool:
        return bool(self.paths)

    def __repr__(self) -> str:
        return f"TextPaths({list(self.paths)!r})"

    def strings_into(self, source: Any, out: list[str], keep_json: bool = False) -> None:
        """Append the non-empty strings found at these paths in `source`, in document order;
        strings that are serialised JSON only with `keep_json` (see `prose.is_serialised_json`)."""
        if isinstance(source, dict):
            _walk(source, self._root, out, keep_json)


def _child(node: _Node, key: str) -> _Node | None:
    """The node of one `_source` key; a literal dotted key (`{"a.b": ...}`) descends several levels."""
    found = node.children.get(key)
    if found is None and "." in key:
        found = node
        for part in key.split("."):
            found = found.children.get(part)
            if found is None:
                return None
    return found


def _walk(source: dict[str, Any], node: _Node, out: list[str], keep_json: bool) -> None:
    for key, value in source.items():
        child = _child(node, key)
        if child is None:
            continue
        if child.leaf:
            _leaf_strings(value, out, keep_json)
        if child.children:
            if isinstance(value, dict):
                _walk(value, child, out, keep_json)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        _walk(item, child, out, keep_json)


def _leaf_strings(value: Any, out: list[str], keep_json: bool) -> None:
    """A text field's value: a string or an array of them. Objects are skipped: the engines would
    not index one as prose (an old-format `semantic_text` value holds model ids and embeddings)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped and (keep_json or not is_serialised_json(stripped)):
            out.append(stripped)
    elif isinstance(value, list):
        for item in value:
            _leaf_strings(item, out, keep_json)
