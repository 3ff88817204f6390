"""Turn hits into the texts the reranker scores: each hit's `_source` under its own index's rule.

`hit_texts` is used by the search pipeline, the console's compare, `rerank-proxy warm` and the
proxy's own warming, so all of them produce byte-identical text (the local vector store and the
score cache are keyed by a hash of it). A rule that names no fields nor template takes its index's
text-typed fields from the mapping (`TextPaths`, looked up by the caller) when it has them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from rerank_proxy.config import IndexRule
from rerank_proxy.search.text.mapping_fields import TextPaths
from rerank_proxy.search.text.prose import is_serialised_json

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")

RuleFor = Callable[[str], IndexRule | None]


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


def _flatten_into(value: Any, out: list[str]) -> None:
    """A field's value as text parts: strings (stripped, non-empty), numbers, lists of them."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped:
            out.append(stripped)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append(str(value))
    elif isinstance(value, list):
        for item in value:
            _flatten_into(item, out)


def _flatten(value: Any) -> list[str]:
    out: list[str] = []
    _flatten_into(value, out)
    return out


def _strings_into(values: Iterable[Any], out: list[str], keep_json: bool = False) -> None:
    """Every non-empty string among `values`, depth first, in key order (the default text);
    serialised JSON only with `keep_json`.

    Appends to one list and recurses only into containers: this runs for every hit of every
    search, and nested generators cost several times more per string (bench/search_cpu.py).
    """
    for value in values:
        if isinstance(value, str):
            stripped = value.strip()
            if stripped and (keep_json or not is_serialised_json(stripped)):
                out.append(stripped)
        elif isinstance(value, dict):
            _strings_into(value.values(), out, keep_json)
        elif isinstance(value, list):
            _strings_into(value, out, keep_json)


def _default_parts(source: Any, paths: TextPaths | None, keep_json: bool) -> list[str]:
    """The strings at `paths`, else every string: the text a rule naming no fields makes."""
    parts: list[str] = []
    if paths is not None:
        paths.strings_into(source, parts, keep_json)
    elif isinstance(source, dict):  # the usual case, without the one-element detour
        _strings_into(source.values(), parts, keep_json)
    else:
        _strings_into((source,), parts, keep_json)
    return parts


@lru_cache(maxsize=256)
def _template_parts(template: str) -> tuple[str, ...]:
    """The template split once into literal, field, literal, field, ... (fields at odd positions)."""
    return tuple(_PLACEHOLDER.split(template))


def _render(template: str, source: Any) -> str:
    """What `_PLACEHOLDER.sub` would produce, without a regex pass and a callback per hit."""
    parts = _template_parts(template)
    out = list(parts)
    for i in range(1, len(parts), 2):
        out[i] = " ".join(_flatten(lookup(source, parts[i].strip())))
    return "".join(out)


def hit_text(source: Any, rule: IndexRule, paths: TextPaths | None = None) -> str:
    """The rerank text of a document: template, else the listed fields, else the strings at
    `paths` (its index's text fields), else all string fields.

    Missing or empty fields are skipped (a template renders them as empty), so a document is never
    dropped and never misaligned; the result is cut to `rule.max_chars` characters. Without named
    fields, strings that are serialised JSON are left out unless nothing else is there (`prose`).
    """
    if rule.template:
        text = _render(rule.template, source)
    elif rule.fields:
        parts: list[str] = []
        for name in rule.fields:
            _flatten_into(lookup(source, name), parts)
        text = "\n".join(parts)
    else:
        parts = _default_parts(source, paths, keep_json=False)
        text = "\n".join(parts or _default_parts(source, paths, keep_json=True))
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




class RuleMemo:
    """`Settings.rule_for`, memoised: it pattern-matches every rule, and runs for every hit."""

    def __init__(self, rule_for: RuleFor, max_entries: int = 10_000) -> None:
        self._rule_for = rule_for
        self._max_entries = max_entries
        self._rules: dict[str, IndexRule | None] = {}

    def __call__(self, index: str) -> IndexRule | None:
        try:
            return self._rules[index]
        except KeyError:
            if len(self._rules) > self._max_entries:
                self._rules.clear()
            rule = self._rules[index] = self._rule_for(index)
            return rule


MappedFields = Mapping[str, TextPaths | None]


def _rule_of(index: Any, default: IndexRule, rule_for: RuleFor | None) -> IndexRule:
    if rule_for is None or not index:
        return default
    return rule_for(str(index)) or default


def mapped_indices(hits: Sequence[Any], default: IndexRule, rule_for: RuleFor | None = None) -> set[str]:
    """The `_index` names of the hits whose text comes from their index mapping (see `hit_texts`)."""
    return {str(hit["_index"]) for hit, rule, _ in _with_rules(hits, default, rule_for, None)
            if hit is not None and hit.get("_index") and rule.text_from_mapping}


def hit_texts(hits: Sequence[Any], default: IndexRule, rule_for: RuleFor | None = None,
              mapped: MappedFields | None = None) -> list[str]:
    """The rerank text of each hit: under `rule_for(its _index)`, else under `default`.

    Without `rule_for` (an explicit rule, e.g. the console's field override) every hit uses
    `default`; so does a hit with no `_index`. A rule with `text_from_mapping` takes the hit's
    index's entry of `mapped` (from `TextFieldCache.resolve(mapped_indices(...))`); without one it is
    every string. The rule is looked up once per run of hits from the same index, not once per
    hit; a hit that is not an object has the empty text.
    """
    return [hit_text(hit.get("_source"), rule, paths) if hit is not None else ""
            for hit, rule, paths in _with_rules(hits, default, rule_for, mapped)]


def _with_rules(hits: Sequence[Any], default: IndexRule, rule_for: RuleFor | None,
                mapped: MappedFields | None) -> Iterator[tuple[dict[str, Any] | None, IndexRule, TextPaths | None]]:
    """Each hit (None if it is not an object) with the rule and mapped fields its text follows,
    looked up once per run of hits from the same index."""
    last_index: Any = None
    rule = default
    paths: TextPaths | None = None
    for hit in hits:
        if not isinstance(hit, dict):
            yield None, default, None
            continue
        index = hit.get("_index") or ""
        if index != last_index:
            last_index = index
            rule = _rule_of(index, default, rule_for)
            paths = mapped.get(str(index)) if mapped is not None and rule.text_from_mapping and index else None
        yield hit, rule, paths


class VersionedTexts:
    """Hit texts and their digests, remembered by document version: a cache hit need not rebuild
    and rehash 100 texts (about half of its CPU, bench/search_cpu.py).

    The candidate fetch asks for `seq_no_primary_term`: `(_index, _id, _seq_no, _primary_term)`
    names one version of one document, so its text under a given rule cannot change. Hits without
    those fields (an engine that omits them) are built as usual. Bounded: past `max_entries` the
    memo starts over, which costs one rebuild per document.
    """

    def __init__(self, digest: Callable[[str], bytes], max_entries: int = 50_000) -> None:
        self._digest = digest
        self._max_entries = max_entries
        # (rule, mapped fields) identify how the text was built: another rule or a refreshed
        # mapping rebuilds it.
        self._memo: dict[tuple[Any, ...], tuple[IndexRule, TextPaths | None, str, bytes]] = {}

    def __len__(self) -> int:
        return len(self._memo)

    def texts(self, hits: Sequence[Any], default: IndexRule, rule_for: RuleFor | None = None,
              mapped: MappedFields | None = None) -> tuple[list[str], list[bytes]]:
        """`hit_texts(hits, default, rule_for, mapped)`, and the digest of each text."""
        texts: list[str] = []
        digests: list[bytes] = []
        memo = self._memo
        for hit, rule, paths in _with_rules(hits, default, rule_for, mapped):
            if hit is None:
                texts.append("")
                digests.append(self._digest(""))
                continue
            key = (hit.get("_index") or "", hit.get("_id"), hit.get("_seq_no"), hit.get("_primary_term"))
            versioned = key[2] is not None and key[3] is not None
            known = memo.get(key) if versioned else None
            if known is not None and known[0] is rule and known[1] is paths:
                texts.append(known[2])
                digests.append(known[3])
                continue
            text = hit_text(hit.get("_source"), rule, paths)
            digest = self._digest(text)
            if versioned:
                if len(memo) >= self._max_entries:
                    memo.clear()
                memo[key] = (rule, paths, text, digest)
            texts.append(text)
            digests.append(digest)
        return texts, digests
