"""Turn one hit's `_source` into the text the reranker scores.

Used by the search pipeline and by `rerank-proxy warm`, so both produce byte-identical text (the
local vector store and the score cache are keyed by a hash of it).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ..config import IndexRule

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def lookup(source: Any, dotted: str) -> Any:
    """`a.b.c` inside nested objects; also accepts literal dotted keys (`{"a.b": ...}`)."""
    if not isinstance(source, dict):
        return None
    if dotted in source:
        return source[dotted]
    head, _, rest = dotted.partition(".")
    if rest and head in source:
        value = source[head]
        if isinstance(value, list):
            found = [lookup(v, rest) for v in value]
            return [f for f in found if f is not None] or None
        return lookup(value, rest)
    return None


def _flatten(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, list):
        for item in value:
            yield from _flatten(item)


def _all_strings(value: Any) -> Iterator[str]:
    """Every non-empty string of a document, depth first, in key order (the default text)."""
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_strings(item)


def hit_text(source: Any, rule: IndexRule) -> str:
    """The rerank text of a document: template, else the listed fields, else all string fields.

    Missing or empty fields are skipped (a template renders them as empty), so a document is never
    dropped and never misaligned; the result is cut to `rule.max_chars` characters.
    """
    if rule.template:
        text = _PLACEHOLDER.sub(lambda m: " ".join(_flatten(lookup(source, m.group(1).strip()))),
                                rule.template)
    elif rule.fields:
        text = "\n".join(part for f in rule.fields for part in _flatten(lookup(source, f)))
    else:
        text = "\n".join(_all_strings(source))
    return text[: rule.max_chars]


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a template refers to (what `_source` must contain)."""
    return tuple(m.group(1).strip() for m in _PLACEHOLDER.finditer(template))


def needed_source_fields(rule: IndexRule) -> tuple[str, ...] | None:
    """The `_source` fields the proxy needs to fetch; None means the whole `_source`."""
    if rule.template:
        return template_fields(rule.template)
    if rule.fields:
        return rule.fields
    return None


