"""Find the user's query text inside the query DSL an app sends.

The reranker needs the words the user typed, not the DSL. Full-text clauses carry them; filters,
negations and term-level clauses do not (they select, they do not express what is relevant), so
they are ignored. When several clauses carry text, the distinct texts are joined in order. No
extraction is perfect, which is why a request can also name its query text explicitly.

Supported: match, match_phrase, match_phrase_prefix, match_bool_prefix, multi_match,
combined_fields, query_string, simple_query_string, intervals (match rule), the URL `q=` parameter,
nested inside bool (must/should), dis_max, function_score, script_score, constant_score, boosting
(positive), nested, has_child, has_parent; and the `retriever` of Elasticsearch 8.14+: the query of
a `standard` retriever, and of the standard retrievers inside compound ones (`rrf`, `linear`, and
any retriever wrapping another: `rule`, `pinned`, `rescorer`), since those are what the user typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

_MATCH_LIKE = ("match", "match_phrase", "match_phrase_prefix", "match_bool_prefix")
_QUERY_STRING_LIKE = ("query_string", "simple_query_string")
_TEXT_AT_QUERY = ("multi_match", "combined_fields")
_MAX_DEPTH = 64

# query_string syntax that carries no meaning for a reranker.
_FIELD_PREFIX = re.compile(r"(?<![\w.])[\w.*]+:(?=\S)")
_NEGATED = re.compile(r"(?:(?<=\s)|^)(?:-|!|NOT\s+)(\"[^\"]*\"|\([^)]*\)|\S+)")
_OPERATORS = re.compile(r"\b(?:AND|OR|NOT|TO)\b|&&|\|\|")
_BOOST_FUZZ = re.compile(r"[\^~]\d*(?:\.\d+)?")
_SYNTAX = re.compile(r"[+\-!(){}\[\]\"\\/|&<>=*?]")
_SPACES = re.compile(r"\s+")


def clean_query_string(text: str) -> str:
    """Plain words from Lucene/simple query syntax: no fields, operators, negations or boosts."""
    text = _NEGATED.sub(" ", text)
    text = _FIELD_PREFIX.sub("", text)
    text = _OPERATORS.sub(" ", text)
    text = _BOOST_FUZZ.sub("", text)
    text = _SYNTAX.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _match_texts(spec: dict[str, Any], found: list[str]) -> None:
    """match and its kin: `{field: text}` or `{field: {"query": text, ...}}`."""
    for value in spec.values():
        if isinstance(value, dict):
            value = value.get("query")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            found.append(str(value))


def _query_key_text(spec: dict[str, Any], found: list[str]) -> None:
    """multi_match, combined_fields: the text is at `query`."""
    if isinstance(spec.get("query"), str):
        found.append(spec["query"])


def _query_string_text(spec: dict[str, Any], found: list[str]) -> None:
    """query_string, simple_query_string: the words of `query`, without its syntax."""
    if isinstance(spec.get("query"), str):
        found.append(clean_query_string(spec["query"]))


def _interval_texts(spec: dict[str, Any], found: list[str]) -> None:
    """intervals: the `match` rule of each field carries text."""
    for rule in spec.values():
        if isinstance(rule, dict) and isinstance(rule.get("match"), dict) \
                and isinstance(rule["match"].get("query"), str):
            found.append(rule["match"]["query"])


# Clauses that carry the user's text themselves.
_LEAF_TEXTS: dict[str, Callable[[dict[str, Any], list[str]], None]] = {
    **dict.fromkeys(_MATCH_LIKE, _match_texts),
    **dict.fromkeys(_TEXT_AT_QUERY, _query_key_text),
    **dict.fromkeys(_QUERY_STRING_LIKE, _query_string_text),
    "intervals": _interval_texts,
}
# Clauses that wrap one query whose text is the user's: the key it is at.
_WRAPPED_QUERY = {"function_score": "query", "script_score": "query", "nested": "query", "has_child": "query",
                  "has_parent": "query", "constant_score": "filter", "boosting": "positive"}
# Clauses that list queries (one, or a list of them) whose texts are the user's: their keys.
_CLAUSE_LISTS = {"bool": ("must", "should"), "dis_max": ("queries",)}


def _texts(query: Any, found: list[str], depth: int = 0) -> None:
    """Append the texts of a query (and of the queries it wraps, depth first) to `found`."""
    if depth > _MAX_DEPTH or not isinstance(query, dict):
        return
    for kind, spec in query.items():
        if not isinstance(spec, dict):
            continue
        leaf = _LEAF_TEXTS.get(kind)
        if leaf is not None:
            leaf(spec, found)
        elif kind in _WRAPPED_QUERY:
            _texts(spec.get(_WRAPPED_QUERY[kind]), found, depth + 1)
        elif kind in _CLAUSE_LISTS:
            for key in _CLAUSE_LISTS[kind]:
                _each(spec.get(key), found, depth)


def _each(clauses: Any, found: list[str], depth: int) -> None:
    if isinstance(clauses, dict):
        clauses = [clauses]
    if isinstance(clauses, list):
        for clause in clauses:
            _texts(clause, found, depth + 1)


def _child_retrievers(spec: dict[str, Any]) -> list[Any]:
    """The retrievers a retriever wraps: `retriever` (rule, pinned, rescorer...) and `retrievers`
    (rrf lists retrievers; linear lists `{"retriever": ..., "weight": ...}` entries)."""
    found = [spec["retriever"]] if isinstance(spec.get("retriever"), dict) else []
    children = spec.get("retrievers")
    for child in children if isinstance(children, list) else []:
        if isinstance(child, dict) and isinstance(child.get("retriever"), dict):
            child = child["retriever"]  # no retriever kind is called "retriever"
        found.append(child)
    return found


def retriever_kinds(retriever: Any, depth: int = 0) -> Iterator[str]:
    """Every retriever kind in a retriever tree (`standard`, `rrf`, ...), outermost first."""
    if depth > _MAX_DEPTH or not isinstance(retriever, dict):
        return
    for kind, spec in retriever.items():
        yield kind
        if isinstance(spec, dict):
            for child in _child_retrievers(spec):
                yield from retriever_kinds(child, depth + 1)


def _retriever_texts(retriever: Any, found: list[str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH or not isinstance(retriever, dict):
        return
    for kind, spec in retriever.items():
        if not isinstance(spec, dict):
            continue
        if kind == "standard":
            _texts(spec.get("query"), found)
        for child in _child_retrievers(spec):
            _retriever_texts(child, found, depth + 1)


def extract_query_text(body: dict[str, Any] | None, q_param: str | None = None) -> str:
    """The query text of a search ("" when there is none, which means: do not rerank)."""
    found: list[str] = []
    if q_param:
        found.append(clean_query_string(q_param))
    if isinstance(body, dict):
        _texts(body.get("query"), found)
        _retriever_texts(body.get("retriever"), found)
    distinct: list[str] = []
    for text in (t.strip() for t in found):
        if text and text not in distinct:
            distinct.append(text)
    return " ".join(distinct)
