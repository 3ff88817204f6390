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
from collections.abc import Iterator
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


def _texts(query: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH or not isinstance(query, dict):
        return
    for kind, spec in query.items():
        if kind in _MATCH_LIKE and isinstance(spec, dict):
            for value in spec.values():
                if isinstance(value, dict):
                    value = value.get("query")
                if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    yield str(value)
        elif kind in _TEXT_AT_QUERY and isinstance(spec, dict):
            if isinstance(spec.get("query"), str):
                yield spec["query"]
        elif kind in _QUERY_STRING_LIKE and isinstance(spec, dict):
            if isinstance(spec.get("query"), str):
                yield clean_query_string(spec["query"])
        elif kind == "intervals" and isinstance(spec, dict):
            for rule in spec.values():
                if isinstance(rule, dict) and isinstance(rule.get("match"), dict):
                    if isinstance(rule["match"].get("query"), str):
                        yield rule["match"]["query"]
        elif kind == "bool" and isinstance(spec, dict):
            for clause in ("must", "should"):
                yield from _each(spec.get(clause), depth)
        elif kind == "dis_max" and isinstance(spec, dict):
            yield from _each(spec.get("queries"), depth)
        elif kind in ("function_score", "script_score", "nested", "has_child", "has_parent") \
                and isinstance(spec, dict):
            yield from _texts(spec.get("query"), depth + 1)
        elif kind == "constant_score" and isinstance(spec, dict):
            yield from _texts(spec.get("filter"), depth + 1)
        elif kind == "boosting" and isinstance(spec, dict):
            yield from _texts(spec.get("positive"), depth + 1)


def _each(clauses: Any, depth: int) -> Iterator[str]:
    if isinstance(clauses, dict):
        clauses = [clauses]
    if isinstance(clauses, list):
        for clause in clauses:
            yield from _texts(clause, depth + 1)


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


def _retriever_texts(retriever: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH or not isinstance(retriever, dict):
        return
    for kind, spec in retriever.items():
        if not isinstance(spec, dict):
            continue
        if kind == "standard":
            yield from _texts(spec.get("query"))
        for child in _child_retrievers(spec):
            yield from _retriever_texts(child, depth + 1)


def extract_query_text(body: dict[str, Any] | None, q_param: str | None = None) -> str:
    """The query text of a search ("" when there is none, which means: do not rerank)."""
    found: list[str] = []
    if q_param:
        found.append(clean_query_string(q_param))
    if isinstance(body, dict):
        found.extend(_texts(body.get("query")))
        found.extend(_retriever_texts(body.get("retriever")))
    distinct: list[str] = []
    for text in (t.strip() for t in found):
        if text and text not in distinct:
            distinct.append(text)
    return " ".join(distinct)
