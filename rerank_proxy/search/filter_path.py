"""`filter_path` response filtering, done by the proxy on the final (reranked, paginated) response.

Why: the proxy needs every candidate's `_id`, `_score` and `_source` to rerank, so the candidate
request cannot carry the client's `filter_path`; the client must still get exactly the keys the
engine would have left. The rules below were checked against Elasticsearch 9 and OpenSearch 2:

- a comma-separated list of dotted paths; entries are trimmed, empty entries ignored;
- `*` inside a segment matches any run of characters (`hits.hits._*`, `aggregations.*.buckets`);
  `**` matches any number of levels, zero included (`**.value`, `hits.**._id`);
- arrays are transparent: a path continues into every element; elements (and arrays, and
  objects) left with nothing are dropped, a matched value is kept whole, even if empty;
- entries starting with `-` are exclusions, applied to what the inclusions kept (only exclusions:
  to the whole response);
- the root object is always written, possibly `{}`.

The engines differ in one point, on exclusions: Elasticsearch drops a container only when the
exclusions emptied it (an originally empty `{}`/`[]` stays), OpenSearch drops every container on
an exclusion path that ends up empty (originally empty ones too). `apply(..., opensearch=True)`
gives OpenSearch's rule.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

Pattern = tuple[str, ...]
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class FilterPath:
    includes: tuple[Pattern, ...]
    excludes: tuple[Pattern, ...]


def parse(value: str | None) -> FilterPath | None:
    """The filter of a `filter_path` parameter; None when it filters nothing (absent or empty).

    Raises ValueError for an entry the engines disagree on (a lone `-`: Elasticsearch ignores it,
    OpenSearch answers 400), so the caller can let the engine answer such a request itself."""
    if value is None:
        return None
    includes: list[Pattern] = []
    excludes: list[Pattern] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith("-"):
            entry = entry[1:]
            if not entry:
                raise ValueError("filter_path entry [-] is empty")
            excludes.append(tuple(entry.split(".")))
        else:
            includes.append(tuple(entry.split(".")))
    if not includes and not excludes:
        return None
    return FilterPath(tuple(includes), tuple(excludes))


@lru_cache(maxsize=1024)
def _glob(segment: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in segment.split("*")), re.DOTALL)


def _advance(patterns: frozenset[Pattern], key: str) -> frozenset[Pattern]:
    """The patterns left to match below `key`; an empty pattern in the result means: matched."""
    out: set[Pattern] = set()
    stack = list(patterns)
    while stack:
        pattern = stack.pop()
        if not pattern:
            continue
        head = pattern[0]
        if head == "**":
            out.add(pattern)              # `**` goes on matching deeper levels
            if len(pattern) == 1:
                out.add(())               # a trailing `**` matches every key below it
            else:
                stack.append(pattern[1:])  # ... or matches zero levels
        elif head == key or ("*" in head and _glob(head).fullmatch(key)):
            out.add(pattern[1:])
    return frozenset(out)


def _include(value: Any, patterns: frozenset[Pattern]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            below = _advance(patterns, key)
            if () in below:
                out[key] = child
            elif below:
                kept = _include(child, below)
                if kept is not _MISSING:
                    out[key] = kept
        return out if out else _MISSING
    if isinstance(value, list):
        items = [kept for item in value if isinstance(item, (dict, list))
                 for kept in [_include(item, patterns)] if kept is not _MISSING]
        return items if items else _MISSING
    return _MISSING  # a scalar reached by only part of a path


def _exclude(value: Any, patterns: frozenset[Pattern], opensearch: bool) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            below = _advance(patterns, key)
            if () in below:
                continue
            if below:
                child = _exclude(child, below, opensearch)
                if child is _MISSING:
                    continue
            out[key] = child
        return _MISSING if not out and (value or opensearch) else out
    if isinstance(value, list):
        items = [kept for item in value
                 for kept in [_exclude(item, patterns, opensearch) if isinstance(item, (dict, list)) else item]
                 if kept is not _MISSING]
        return _MISSING if not items and (value or opensearch) else items
    return value


def apply(document: dict[str, Any], fp: FilterPath | None, *, opensearch: bool = False) -> dict[str, Any]:
    """The response as the engine would have filtered it (a new object; `document` is not changed
    except that kept sub-trees are shared, not copied)."""
    if fp is None:
        return document
    result: Any = document
    if fp.includes:
        result = _include(document, frozenset(fp.includes))
        if result is _MISSING:
            return {}
    if fp.excludes:
        root = result
        result = _exclude(root, frozenset(fp.excludes), opensearch)
        if result is _MISSING:
            return {}
    return dict(result) if result is document else result
