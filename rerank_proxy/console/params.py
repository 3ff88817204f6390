"""Validation of what the console's pages send: one place that turns JSON into typed options.

Everything the console does to the engine or a provider starts from these options, so bad input is
rejected here with a 400 in the engine's error shape, before any request goes out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rerank_proxy.console.query_template import QueryTemplate, parse_template
from rerank_proxy.errors import bad_request

PROVIDERS = ("configured", "lexical", "local")
SCORE_MODES = ("auto", "rerank", "blend")
MAX_WINDOW = 1000          # the console is interactive: larger windows belong in offline runs
MAX_SIZE = 50
MAX_QUERY_CHARS = 2000
MAX_FIELDS = 50
MAX_TEMPLATE_CHARS = 2000

# Index names (and aliases/patterns) as the engines accept them, minus hidden/system ones and
# comma lists: the console compares one target at a time.
_INDEX = re.compile(r"^[^\s\\/?\"<>|,#:.+_-][^\s\\/?\"<>|,#:]{0,254}$")
_FIELD = re.compile(r"^[\w@$-][\w.@$*-]{0,199}$")
_MODEL = re.compile(r"^[\w][\w./:@+-]{0,199}$")


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """One comparison: what to search, how to build hit text, and who scores."""

    index: str
    query: str
    provider: str = "configured"
    model: str = ""                        # empty: the provider's configured/default model
    window: int | None = None              # None: the index rule's window (capped at MAX_WINDOW)
    fields: tuple[str, ...] | None = None  # None: the index rule's fields
    template: str | None = None            # None: the index rule's template
    score_mode: str = "auto"
    blend_weight: float | None = None
    size: int = 10
    dsl: dict[str, Any] | None = None      # one fixed query clause; None: multi_match on the text
    query_template: QueryTemplate | None = None  # the app's DSL with {{query}}; wins over multi_match


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def index_name(value: Any) -> str:
    if not isinstance(value, str) or not _INDEX.match(value) or value in (".", ".."):
        raise bad_request("[index] must be one index, alias or pattern name (no system indices, no lists)")
    return value


def query_text(value: Any, name: str = "query") -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"[{name}] must be a non-empty string")
    if len(value) > MAX_QUERY_CHARS:
        raise bad_request(f"[{name}] is longer than {MAX_QUERY_CHARS} characters")
    return " ".join(value.split())


def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"[{name}] must be an integer from {lo} to {hi}")
    return value


def _fields(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or len(value) > MAX_FIELDS or \
            not all(isinstance(f, str) and _FIELD.match(f) for f in value):
        raise bad_request(f"[fields] must be a list of at most {MAX_FIELDS} field names")
    return tuple(value)


def parse_compare(body: Any, need_query: bool = True) -> CompareOptions:
    """CompareOptions from a compare/metrics/batch request body (400 on anything invalid).

    Metrics and batch runs bring their own queries: `need_query=False` accepts a body without one,
    and refuses a fixed [dsl], which would run the same search for every query.
    """
    body = require_object(body)
    provider = body.get("provider") or "configured"
    if provider not in PROVIDERS:
        raise bad_request(f"[provider] must be one of {', '.join(PROVIDERS)}")
    model = body.get("model") or ""
    if not isinstance(model, str) or (model and not _MODEL.match(model)):
        raise bad_request("[model] must be a model name")
    score_mode = body.get("score_mode") or "auto"
    if score_mode not in SCORE_MODES:
        raise bad_request(f"[score_mode] must be one of {', '.join(SCORE_MODES)}")
    weight = body.get("blend_weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not 0.0 <= weight <= 1.0):
        raise bad_request("[blend_weight] must be a number from 0 to 1")
    template = body.get("template")
    if template is not None and (not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS):
        raise bad_request(f"[template] must be a string of at most {MAX_TEMPLATE_CHARS} characters")
    dsl = body.get("dsl")
    if dsl is not None and (not isinstance(dsl, dict) or len(dsl) != 1):
        raise bad_request("[dsl] must be one query clause, e.g. {\"match\": {\"title\": \"...\"}}")
    query_template = parse_template(body.get("query_template"))
    if dsl is not None and query_template is not None:
        raise bad_request("give [dsl] (one fixed clause) or [query_template] (with {{query}}), not both")
    if dsl is not None and not need_query:
        raise bad_request("[dsl] is one fixed clause, the same search for every query: give a [query_template] "
                          "with {{query}} where each query's text goes")
    if query_template is not None and need_query and not body.get("query"):
        raise bad_request("[query] must be a non-empty string: the query template needs the text for {{query}}")
    return CompareOptions(
        index=index_name(body.get("index")),
        query=query_text(body.get("query")) if body.get("query") or (dsl is None and need_query) else "",
        provider=provider,
        model=model,
        window=_int(body, "window", 1, MAX_WINDOW),
        fields=_fields(body.get("fields")),
        template=template or None,
        score_mode=score_mode,
        blend_weight=float(weight) if weight is not None else None,
        size=_int(body, "size", 1, MAX_SIZE) or 10,
        dsl=dsl,
        query_template=query_template,
    )
