"""Intercept and rewrite: decide whether a search is reranked, and what to ask the engine for.

Pure functions of (targets, URL parameters, body, headers, settings), so every rule here is unit-
and property-tested without an engine.

Pagination (documented in docs/pagination.md): the proxy reranks the lexical top `window` hits.
- a page inside the window (`from + size <= window`) is cut from the reranked window;
- a page that straddles the end of the window gets the reranked hits up to the window, then the
  engine's own hits from rank `window` on (fetched in the same request);
- a page that starts at or past the window is the engine's own page, untouched (bypass).
So paging through all results never shows a hit twice and never skips one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import orjson

from rerank_proxy.config import IndexRule, Settings
from rerank_proxy.errors import bad_request
from rerank_proxy.experiments.ubi import UbiRequest, pop_ubi
from rerank_proxy.search import filter_path as filter_paths
from rerank_proxy.search.text import source_filter
from rerank_proxy.search.text.query_text import extract_query_text, retriever_kinds

OPTIONS_KEY = "rerank"
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "enabled": (bool,), "query": (str,), "explain": (bool,), "window": (int,),
    "score_mode": (str,), "blend_weight": (int, float),
}
DEFAULT_SIZE = 10
_NON_JSON_FORMATS = ("yaml", "cbor", "smile")


@dataclass(slots=True)
class RerankOptions:
    """Per-request overrides: the `rerank` body extension and the X-Rerank-* headers."""

    enabled: bool = True
    query: str | None = None
    explain: bool = False
    window: int | None = None
    score_mode: str | None = None
    blend_weight: float | None = None


@dataclass(slots=True)
class Plan:
    """A search that will be reranked: what to fetch and how to cut the page."""

    target: str                       # path + query string for the candidate request
    body: dict[str, Any]              # candidate request body
    query_text: str
    window: int
    page_from: int
    page_size: int
    rule: IndexRule
    source: source_filter.SourceFilter
    options: RerankOptions
    pretty: bool = False
    filter_path: filter_paths.FilterPath | None = None  # applied by the proxy to the final response
    body_changed: bool = False  # the client's body had the `rerank` extension (now removed)
    # The candidates carry `_seq_no`/`_primary_term` (document versions name their texts, see
    # `hit_text.VersionedTexts`); removed from the page unless the client asked for them.
    strip_versions: bool = False
    ubi: UbiRequest | None = None  # the UBI extension (`ext.ubi`, now removed): answered and recorded


@dataclass(slots=True)
class Bypass:
    """A search forwarded as is (apart from the stripped `rerank` extension)."""

    reason: str
    body: dict[str, Any] | None = None
    body_changed: bool = False
    ubi: UbiRequest | None = None  # the UBI extension (`ext.ubi`, now removed): its query id answered


def match_search_path(raw_path: str) -> tuple[str | None, str] | None:
    """(targets, "search"|"msearch") for a search endpoint, else None.

    `raw_path` is the path as sent, still percent-encoded: each segment is decoded exactly once,
    as the engines do, so `/a%252Cb/_search` searches the one index `a%2Cb` (never `a` and `b`)
    and `/docs/%5Fsearch` is the search the engine will run."""
    parts = raw_path.split("/")
    if parts[0] != "":
        return None
    parts = parts[1:]
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing slash
    if len(parts) not in (1, 2):
        return None
    decoded = [unquote(part) if "%" in part else part for part in parts]
    kind = decoded[-1]
    targets = decoded[0] if len(decoded) == 2 else None
    if kind not in ("_search", "_msearch") or (targets is not None and (targets[:1] in ("", "_") or "/" in targets)):
        return None
    return targets, kind[1:]


def parse_options(body: dict[str, Any] | None, headers: dict[str, str]) -> tuple[RerankOptions, bool]:
    """Pop the `rerank` extension from the body (the engine would reject it) and read headers."""
    opts = RerankOptions()
    changed = False
    if isinstance(body, dict) and OPTIONS_KEY in body:
        _set_body_options(opts, body.pop(OPTIONS_KEY))
        changed = True
    _set_header_options(opts, headers)
    _check_option_ranges(opts)
    return opts, changed


def _set_body_options(opts: RerankOptions, raw: Any) -> None:
    """The body's `rerank` value: a boolean (enabled or not) or an object of known, typed options."""
    if isinstance(raw, bool):
        raw = {"enabled": raw}
    if not isinstance(raw, dict):
        raise bad_request("[rerank] must be an object or a boolean", "parsing_exception")
    for key, value in raw.items():
        types = OPTION_TYPES.get(key)
        if types is None:
            raise bad_request(f"unknown rerank option [{key}]; accepted: {', '.join(OPTION_TYPES)}",
                              "parsing_exception")
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise bad_request(f"rerank option [{key}] has the wrong type ({type(value).__name__})",
                              "parsing_exception")
        setattr(opts, key, value)


def _set_header_options(opts: RerankOptions, headers: dict[str, str]) -> None:
    """X-Rerank (on/off), X-Rerank-Query (percent-encoded), X-Rerank-Explain."""
    header = headers.get("x-rerank")
    if header is not None:
        lowered = header.strip().lower()
        if lowered in ("off", "false", "0", "no", "bypass"):
            opts.enabled = False
        elif lowered not in ("on", "true", "1", "yes", ""):
            raise bad_request("header [X-Rerank] must be on or off")
    if "x-rerank-query" in headers:
        opts.query = unquote(headers["x-rerank-query"])
    if headers.get("x-rerank-explain", "").strip().lower() in ("1", "true", "on", "yes"):
        opts.explain = True


def _check_option_ranges(opts: RerankOptions) -> None:
    if opts.window is not None and not 1 <= opts.window <= 10_000:
        raise bad_request("rerank option [window] must be between 1 and 10000")
    if opts.score_mode is not None and opts.score_mode not in ("rerank", "blend", "lexical"):
        raise bad_request("rerank option [score_mode] must be rerank, blend or lexical")
    if opts.blend_weight is not None and not 0.0 <= opts.blend_weight <= 1.0:
        raise bad_request("rerank option [blend_weight] must be between 0 and 1")


class EngineMustAnswer(Exception):  # named as a decision, not an error
    """A search body the proxy must not rewrite: the engine answers the client's own bytes, so
    what the client gets (its error type and reason, or a success) is exactly the engine's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_MAX_REWRITE_DEPTH = 200  # orjson writes at most 254 levels; the proxy's own wrapping needs a few


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise EngineMustAnswer("duplicate_key")
    return out


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed body, counting no further than `limit` + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_client_body(raw: bytes) -> Any:
    """A client's search body, or EngineMustAnswer when the proxy cannot rewrite it faithfully.

    The engines answer such bodies themselves, and differently from each other: duplicate keys
    are a 400 (`x_content_parse_exception` on Elasticsearch, `json_parse_exception` on
    OpenSearch), a lone surrogate (`"\\ud800"`) is accepted, 300 levels of `bool` are a 400 on
    Elasticsearch and a 200 on OpenSearch. orjson refuses lone surrogates and keeps the last of
    duplicate keys, and cannot write more than 254 levels, so re-serialising any of these would
    answer something the engine would not."""
    value = read_client_body(raw)
    ensure_rewritable(raw, value)
    return value


def read_client_body(raw: bytes) -> Any:
    """A client's search body as parsed (None when blank); EngineMustAnswer if it is not JSON.
    Enough to plan a search that is then relayed as sent (`ensure_rewritable` before any rewrite)."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EngineMustAnswer("invalid_json") from None


def ensure_rewritable(raw: bytes, value: Any) -> None:
    """EngineMustAnswer when `value` (parsed from `raw`) cannot be re-serialised as the engine would
    read `raw`: too deep for orjson to write, or with a key given twice. Run only before a rewrite:
    both take a second look at the whole body (the duplicate check a slower, pure-Python parse)."""
    if _depth(value, _MAX_REWRITE_DEPTH) > _MAX_REWRITE_DEPTH:
        raise EngineMustAnswer("too_deep")
    if isinstance(value, dict):
        json.loads(raw, object_pairs_hook=_reject_duplicates)


def _int_param(params: dict[str, str], name: str) -> int | None:
    if name not in params:
        return None
    try:
        return int(params[name])
    except ValueError:
        raise bad_request(f"Failed to parse int parameter [{name}] with value [{params[name]}]") from None


_INT_RANGE = range(-(2**31), 2**31)


def _body_int(body: dict[str, Any], name: str) -> int | None:
    """`from`/`size` as the engines read them: ints, also written `1e3`, `3.0`, `3.5` (truncated)
    or as strings of those; anything else (out of int range, not a number) the engine answers."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise EngineMustAnswer("from_size") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise EngineMustAnswer("from_size")
    number = int(value)
    if number not in _INT_RANGE:
        raise EngineMustAnswer("from_size")
    return number


def _stored_fields(body_value: Any, param: str | None) -> str:
    """Which stored_fields a search asks for: "" (none given), "none" (`_none_`) or "some"."""
    if body_value is None and param is None:
        return ""
    names: list[Any] = []
    for value in (body_value, param):
        if isinstance(value, str):
            names += value.split(",")
        elif isinstance(value, list):
            names += value
    return "none" if "_none_" in names else "some"


def _sorts_by_score(sort: Any) -> bool:
    """True when a `sort` value orders by relevance only (then reranking is still meaningful)."""
    if sort is None:
        return True
    items = sort if isinstance(sort, list) else [sort]
    for item in items:
        if item == "_score":
            continue
        if isinstance(item, dict) and list(item) == ["_score"]:
            order = item["_score"]
            order = order.get("order", "desc") if isinstance(order, dict) else order
            if order == "desc":
                continue
        if isinstance(item, str) and item in ("_score:desc",):
            continue
        return False
    return True


def resolve_rule(targets: str | None, settings: Settings) -> IndexRule | None:
    """The rule for the searched targets; None (no reranking) unless every target is configured."""
    names = [t.strip() for t in (targets or "_all").split(",") if t.strip()]
    rules = []
    for name in names:
        if name.startswith("-"):
            continue  # an exclusion narrows the search; it does not need a rule
        if name in ("_all", "*"):
            name = "*"
        elif name.startswith(".") or ":" in name:
            return None  # system/hidden indices and cross-cluster targets are never reranked
        rule = settings.rule_for(name)
        if rule is None:
            return None
        rules.append(rule)
    return rules[0] if rules else None


def plan_search(targets: str | None, params: dict[str, str], body: dict[str, Any] | None,
                headers: dict[str, str], settings: Settings) -> Plan | Bypass:
    """Decide the fate of one search (also one sub-search of an `_msearch`)."""
    body = {} if body is None else body
    if not isinstance(body, dict):
        return Bypass("invalid_json")  # the engine's own answer to a body that is not an object
    ubi = pop_ubi(body)  # every engine but OpenSearch with the UBI plugin refuses it
    options, changed = parse_options(body, headers)
    changed = changed or ubi is not None
    reason = _request_bypass(options, params, body, settings)
    decision = Bypass(reason, body, changed) if reason is not None else \
        _plan_window(targets, params, body, options, changed, settings)
    decision.ubi = ubi
    return decision


def _request_bypass(options: RerankOptions, params: dict[str, str], body: dict[str, Any],
                    settings: Settings) -> str | None:
    """Why a search is never reranked, told by its options and its kind alone (None: it may be)."""
    if not options.enabled:
        return "disabled"
    if settings.rerank_provider == "none":
        return "no_provider"
    if params.get("format", "").lower() in _NON_JSON_FORMATS:
        return "format"
    if "scroll" in params or "scroll" in body:
        return "scroll"
    if body.get("pit") is not None or "pit" in params:
        return "pit"
    if body.get("search_after") is not None:
        return "search_after"
    return None


def _plan_window(targets: str | None, params: dict[str, str], body: dict[str, Any], options: RerankOptions,
                 changed: bool, settings: Settings) -> Plan | Bypass:
    """The rest of the decision: what the client gets back, its order, its page, its index and text."""
    try:
        client_filter = filter_paths.parse(params.get("filter_path"))
    except ValueError:
        return Bypass("filter_path", body, changed)  # an entry the engines disagree on: the engine answers it
    stored = _stored_fields(body.get("stored_fields"), params.get("stored_fields"))
    if stored == "none":
        # `_none_` drops every stored field, `_source` included, and the engines refuse `_source`
        # next to it: the text cannot be had, so the engine answers.
        return Bypass("stored_fields_none", body, changed)
    retriever = body.get("retriever")
    kinds = list(retriever_kinds(retriever))
    sort = _client_sort(params, body)
    reason = _order_bypass(retriever, kinds, sort)
    if reason is not None:
        return Bypass(reason, body, changed)
    try:
        size = _page_number(params, body, "size", DEFAULT_SIZE)
        start = _page_number(params, body, "from", 0)
    except EngineMustAnswer as exc:
        return Bypass(exc.reason, body, changed)
    _check_page(size, start)
    if size == 0:
        return Bypass("size_0", body, changed)
    rule = resolve_rule(targets, settings)
    if rule is None:
        return Bypass("index_not_configured", body, changed)
    query_text = _query_text(options, body, params)
    if not query_text:
        return Bypass("no_query_text", body, changed)
    window = _window(options, rule, retriever, kinds)
    if start >= window:
        return Bypass("past_window", body, changed)
    client_source = _client_source(params, body, stored)
    return Plan(target=_candidate_target(targets, params),
                body=_candidate_body(body, params, stored, sort, window, start + size),
                query_text=query_text, window=window, page_from=start, page_size=size, rule=rule,
                source=client_source, options=options, pretty="pretty" in params and params["pretty"] != "false",
                filter_path=client_filter, body_changed=changed, strip_versions=not _asks_versions(params, body))


def _client_sort(params: dict[str, str], body: dict[str, Any]) -> Any:
    """The client's sort: the URL's (`a,_score:desc`, relevance entries dropped) or the body's."""
    sort = params.get("sort") if "sort" in params else body.get("sort")
    if isinstance(sort, str) and "sort" in params:
        sort = [s for s in sort.split(",") if s]
        sort = [s for s in sort if s not in ("_score", "_score:desc")] or None
    return sort


def _order_bypass(retriever: Any, kinds: list[str], sort: Any) -> str | None:
    """Why the hits' order is not the proxy's to change (None: it is)."""
    if "text_similarity_reranker" in kinds:
        return "engine_reranker"  # the engine reranks it already: twice is waste
    standard = retriever.get("standard") if isinstance(retriever, dict) else None
    if isinstance(standard, dict) and not _sorts_by_score(standard.get("sort")):
        return "sort"
    if isinstance(standard, dict) and standard.get("search_after") is not None:
        return "search_after"
    return None if _sorts_by_score(sort) else "sort"


def _page_number(params: dict[str, str], body: dict[str, Any], name: str, default: int) -> int:
    """`size` or `from`: the URL's, else the body's, else `default`."""
    number = _int_param(params, name)
    number = _body_int(body, name) if number is None else number
    return default if number is None else number


def _check_page(size: int, start: int) -> None:
    if size < 0:
        raise bad_request(f"[size] parameter cannot be negative, found [{size}]")
    if start < 0:
        raise bad_request(f"[from] parameter cannot be negative but was [{start}]")


def _query_text(options: RerankOptions, body: dict[str, Any], params: dict[str, str]) -> str:
    """The text the hits are reranked against: the client's own, else the one found in the query."""
    query_text = options.query if options.query is not None else extract_query_text(body, params.get("q"))
    return query_text.strip()


def _window(options: RerankOptions, rule: IndexRule, retriever: Any, kinds: list[str]) -> int:
    """How many of the engine's top hits are reranked."""
    window = options.window or rule.window
    compound = retriever.get(kinds[0]) if isinstance(retriever, dict) and kinds[0:1] in (["rrf"], ["linear"]) else None
    rank_window = compound.get("rank_window_size") if isinstance(compound, dict) else None
    if isinstance(rank_window, int) and not isinstance(rank_window, bool) and rank_window > 0:
        # A compound retriever never ranks more than its rank_window_size: neither can the proxy.
        window = min(window, rank_window)
    return window


def _client_source(params: dict[str, str], body: dict[str, Any], stored: str) -> source_filter.SourceFilter:
    """The `_source` filtering the client asked for (the URL's wins), applied by the proxy to the page."""
    client_source = source_filter.from_params(params.get("_source"), params.get("_source_includes"),
                                              params.get("_source_excludes"))
    if client_source is not None:
        return client_source
    if stored == "some" and body.get("_source") is None:
        # With stored_fields the engines return `_source` only when it is asked for.
        return source_filter.SourceFilter(fetch=False)
    return source_filter.from_body(body.get("_source"))


def _candidate_body(body: dict[str, Any], params: dict[str, str], stored: str, sort: Any, window: int,
                    page_end: int) -> dict[str, Any]:
    """The body of the candidate request: hits 0 .. the window (or the page's end), whole."""
    candidate = dict(body)
    candidate["from"] = 0
    candidate["size"] = max(window, page_end)
    candidate.pop("_source", None)
    if stored == "some":
        candidate["_source"] = True  # stored_fields alone would leave the hits without their text
    if sort is not None and "sort" in candidate:
        candidate.pop("sort")
    if "seq_no_primary_term" not in params:
        candidate["seq_no_primary_term"] = True
    return candidate


def _asks_versions(params: dict[str, str], body: dict[str, Any]) -> bool:
    return bool(body.get("seq_no_primary_term")) or params.get("seq_no_primary_term") in ("", "true")


# filter_path is the proxy's to apply: the candidates must keep _id, _score and _source.
_CANDIDATE_DROPS = frozenset({"from", "size", "_source", "_source_includes", "_source_excludes", "sort",
                              "filter_path"})


def _candidate_target(targets: str | None, params: dict[str, str]) -> str:
    """Path and query string of the candidate request: the client's, less what the proxy applies."""
    return build_target(targets, "search", [(k, v) for k, v in params.items() if k not in _CANDIDATE_DROPS])


def build_target(targets: str | None, kind: str, query: list[tuple[str, str]]) -> str:
    path = f"/{quote(targets, safe=',*')}/_{kind}" if targets else f"/_{kind}"
    if query:
        path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe=',*')}" if v != "" else quote(k, safe='')
                               for k, v in query)
    return path


def parse_params(query_string: bytes) -> dict[str, str]:
    """URL parameters; the last value of a repeated name wins, as in the engines."""
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
