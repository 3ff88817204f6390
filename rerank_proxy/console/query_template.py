"""The app's own search as a template: its DSL with `{{query}}` where the user's text goes.

Reranking is judged on the candidates the app really retrieves (its filters, boosts and fields), not
on a generic multi_match, so both columns, query-set runs and BEIR runs send this template with each
query filled in. The template is JSON whose strings may hold the placeholder; the query is put into
every such string (keys too) as a string value, which is JSON-escaped substitution: a query holding
quotes or backslashes stays one string and can never change the template's structure.

A template is either a whole search body (it has `query`, `knn` or `retriever` at the top) or one
query clause. The console sets `size` (the rerank window) and `_source` (the hit-text fields) itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from rerank_proxy.errors import bad_request, parse_error

PLACEHOLDER = "{{query}}"
MAX_TEMPLATE_CHARS = 100_000
BODY_KEYS = frozenset({"query", "knn", "retriever"})
_PLACEHOLDER = re.compile(r"\{\{\s*query\s*\}\}")
_EXAMPLE = '{"multi_match": {"query": "{{query}}", "fields": ["title^2", "body"]}}'


@dataclass(frozen=True, slots=True)
class QueryTemplate:
    """A parsed template; `render` gives the JSON the engine is sent for one query."""

    source: Any
    whole_body: bool
    placeholders: int

    def render(self, query: str) -> Any:
        try:
            return _fill(self.source, query)
        except RecursionError:
            raise parse_error("[query_template] is nested too deeply") from None

    def search_body(self, query: str, size: int, source: dict[str, Any] | None) -> dict[str, Any]:
        """The search for one query: the app's body (or clause) with the console's size and _source."""
        rendered = self.render(query)
        body: dict[str, Any] = dict(rendered) if self.whole_body else {"query": rendered}
        body.pop("from", None)  # the console compares the first `size` candidates
        body["size"] = size
        if source is not None:
            body["_source"] = source
        return body


def _fill(node: Any, query: str) -> Any:
    if isinstance(node, str):
        return _PLACEHOLDER.sub(lambda _: query, node)
    if isinstance(node, dict):
        return {_fill(key, query): _fill(value, query) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, query) for item in node]
    return node


def _count(node: Any) -> int:
    if isinstance(node, str):
        return len(_PLACEHOLDER.findall(node))
    if isinstance(node, dict):
        return sum(_count(key) + _count(value) for key, value in node.items())
    if isinstance(node, list):
        return sum(_count(item) for item in node)
    return 0


def parse_template(value: Any) -> QueryTemplate | None:
    """A QueryTemplate from a request's [query_template]: JSON text or an object (400 if invalid)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if len(value) > MAX_TEMPLATE_CHARS:
            raise bad_request(f"[query_template] is longer than {MAX_TEMPLATE_CHARS} characters")
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise parse_error(f"[query_template] is not JSON once {PLACEHOLDER} is filled in (put the "
                              f"placeholder inside a string, e.g. {_EXAMPLE}): {exc}") from None
    if not isinstance(value, dict) or not value:
        raise bad_request(f"[query_template] must be a JSON object: a search body or one query clause, e.g. {_EXAMPLE}")
    whole_body = bool(BODY_KEYS & value.keys())
    if not whole_body and len(value) != 1:
        raise bad_request("[query_template] must be a search body (with [query], [knn] or [retriever]) "
                          f"or one query clause; got the keys {', '.join(sorted(map(str, value)))}")
    try:
        placeholders = _count(value)
    except RecursionError:
        raise parse_error("[query_template] is nested too deeply") from None
    if not placeholders:
        raise bad_request(f"[query_template] has no {PLACEHOLDER} placeholder: without it every query would "
                          "run the same search (use [dsl] for one fixed clause)")
    return QueryTemplate(value, whole_body, placeholders)
