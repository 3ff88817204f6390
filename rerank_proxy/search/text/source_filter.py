"""Apply a client's `_source` filtering to hits the proxy fetched whole.

The proxy needs each hit's text even when the client asked for `_source: false` or a few fields,
so candidates are fetched with the full `_source` and the client's filter is applied here, with
the engines' semantics: patterns match full dotted paths, `*` matches any characters, an included
object keeps everything below it, excludes win over includes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rerank_proxy.errors import bad_request


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """What the client asked for. `fetch=False` drops `_source` entirely."""

    fetch: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.fetch and not self.includes and not self.excludes


IDENTITY = SourceFilter()


def _as_patterns(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip()) if "," in value else (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise bad_request(f"[_source] {what} must be a string or an array of strings", "parsing_exception")


def from_body(spec: Any) -> SourceFilter:
    """The filter a search body's `_source` value asks for."""
    if spec is None or spec is True:
        return IDENTITY
    if spec is False:
        return SourceFilter(fetch=False)
    if isinstance(spec, (str, list)):
        return SourceFilter(includes=_as_patterns(spec, "includes"))
    if isinstance(spec, dict):
        includes = spec.get("includes", spec.get("include"))
        excludes = spec.get("excludes", spec.get("exclude"))
        return SourceFilter(includes=_as_patterns(includes, "includes"),
                            excludes=_as_patterns(excludes, "excludes"))
    raise bad_request("[_source] must be a boolean, a string, an array or an object", "parsing_exception")


def from_params(source: str | None, includes: str | None, excludes: str | None) -> SourceFilter | None:
    """The filter the URL parameters ask for, or None when the URL says nothing about `_source`."""
    if source is None and includes is None and excludes is None:
        return None
    fetch = True
    inc: tuple[str, ...] = ()
    if source is not None:
        lowered = source.strip().lower()
        if lowered in ("false", "0", "no", "off"):
            fetch = False
        elif lowered not in ("true", "1", "yes", "on", ""):
            inc = _as_patterns(source, "includes")
    if includes is not None:
        inc = _as_patterns(includes, "includes")
    return SourceFilter(fetch=fetch, includes=inc, excludes=_as_patterns(excludes, "excludes"))


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if part == "*" else re.escape(part)
                              for part in re.split(r"(\*)", pattern)) + r"\Z")


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(_regex(p).match(path) for p in patterns)


def _may_match_below(path: str, patterns: tuple[str, ...]) -> bool:
    """Could a pattern match something inside the object at `path`?"""
    prefix = path + "."
    for pattern in patterns:
        if "*" in pattern:
            head = pattern.split("*", 1)[0]
            if prefix.startswith(head) or head.startswith(prefix):
                return True
        elif pattern.startswith(prefix):
            return True
    return False


def _filter(value: Any, path: str, included: bool, flt: SourceFilter) -> tuple[bool, Any]:
    """(keep, what is kept) of the value at `path`; `included` when an include matched above it."""
    if path and flt.excludes and _matches(path, flt.excludes):
        return False, None
    if path and not included and _matches(path, flt.includes):
        included = True
    if isinstance(value, dict):
        return _filter_object(value, path, included, flt)
    if isinstance(value, list):
        return _filter_list(value, path, included, flt)
    return included, value


def _filter_object(value: dict[str, Any], path: str, included: bool, flt: SourceFilter) -> tuple[bool, Any]:
    """An object is kept when it is included, or when something kept is inside it."""
    if not included and not (_may_match_below(path, flt.includes) if path else True):
        return False, None
    out = {}
    for key, child in value.items():
        keep, filtered = _filter(child, f"{path}.{key}" if path else key, included, flt)
        if keep:
            out[key] = filtered
    return (bool(out) or included), out


def _filter_list(value: list[Any], path: str, included: bool, flt: SourceFilter) -> tuple[bool, Any]:
    """The items of an array share its path; objects left empty are dropped unless included."""
    if not included and not any(isinstance(v, (dict, list)) for v in value):
        return False, None
    items = []
    for child in value:
        keep, filtered = _filter(child, path, included, flt)
        if keep and not (isinstance(filtered, dict) and not filtered and not included):
            items.append(filtered)
    return (bool(items) or included), items


def apply(source: Any, flt: SourceFilter) -> Any:
    """The `_source` the client would have got from the engine with this filter."""
    if flt.is_identity or not isinstance(source, dict):
        return source
    if not flt.includes:
        flt = SourceFilter(fetch=True, includes=("*",), excludes=flt.excludes)
    _, out = _filter(source, "", False, flt)
    return out
