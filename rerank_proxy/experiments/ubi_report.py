"""The experiment report from the engine's UBI indices: `ubi_queries` joined with `ubi_events` on query_id.

The clicks come from the engine's own aggregation: a `composite` aggregation over the click events
(`action_name: click`) by (query_id, clicked object id), paged with `after`, so millions of events
are never fetched as documents. The queries are read with `search_after` over their `query_id`
(only the fields the report needs). Each query becomes a `report_stats.SearchRecord`, and the
statistics are report_stats' own (docs/experiments-stats.md).

Field names are UBI 1.0's: `query_id`, `action_name`, `event_attributes.object.object_id` in the
events; `query_id`, `arm`, `query_response_object_ids` in the queries, plus what the arms record
beside them: `object_teams` (interleaving: each returned position's team, null for the shared top)
and `shadow_object_ids` (shadow: the reranked list computed behind the served one). An events index
made by dynamic mapping types its strings as text with a `.keyword` sub-field; the aggregation then
uses that sub-field (read from the mapping, not guessed).

Shadow searches are also scored against the relevance console's judgments, where their query text
(`user_query`, whitespace collapsed as the console keys it) is judged: the console keys judgments by
(index, text) and a UBI record names no index, so the lookup is either in the index the caller names,
or by text alone, where a text judged in more than one index is left out (and counted as ambiguous)
rather than scored against the wrong index's judgments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import orjson

from rerank_proxy.console.judgments import JudgedTexts
from rerank_proxy.engine.transport import EngineTransport
from rerank_proxy.errors import ProxyError
from rerank_proxy.experiments.arms import Arm
from rerank_proxy.experiments.interleave import Team
from rerank_proxy.experiments.report_stats import Report, SearchRecord, report

PAGE = 1000
CLICK = "click"
UBI_EVENTS_INDEX = "ubi_events"  # where UBI 1.0 apps write their events (through the proxy, as any write)
_JSON = [(b"content-type", b"application/json"), (b"accept", b"application/json")]
_TEAMS: dict[Any, Team | None] = {"lexical": "lexical", "reranked": "reranked", None: None}
_ARMS: dict[Any, Arm] = {"off": "off", "lexical": "lexical", "reranked": "reranked", "interleaved": "interleaved"}

Headers = Sequence[tuple[bytes, bytes]]
Clicks = dict[str, set[str]]
JudgmentLookup = Callable[[list[str]], Awaitable[JudgedTexts]]  # query texts -> their judgments


class ReportUnavailable(ProxyError):
    """The engine could not answer a read the report needs (an index missing, a refusal)."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, "proxy_report_exception", reason)


async def _read(engine: EngineTransport, target: str, body: dict[str, Any], headers: Headers) -> Any:
    answer = await engine.fetch("POST" if body else "GET", target, [*headers, *_JSON],
                                orjson.dumps(body) if body else None)
    if answer.status != 200:
        raise ReportUnavailable(f"{target} answered {answer.status}: {answer.body[:300].decode(errors='replace')}")
    return orjson.loads(answer.body)


async def _exact_field(engine: EngineTransport, index: str, field: str, headers: Headers) -> str:
    """`field`, or its `.keyword` sub-field where the mapping types it as text (dynamic mapping)."""
    mapping = await _read(engine, f"/{quote(index, safe='')}/_mapping/field/{field}", {}, headers)
    for entry in mapping.values() if isinstance(mapping, dict) else ():
        spec = (entry.get("mappings") or {}).get(field, {}).get("mapping", {})
        leaf: dict[str, Any] = next(iter(spec.values()), {}) if isinstance(spec, dict) else {}
        if leaf.get("type") == "text" and "keyword" in (leaf.get("fields") or {}):
            return f"{field}.keyword"
    return field


async def clicks(engine: EngineTransport, events: str, headers: Headers = ()) -> Clicks:
    """query_id -> the object ids clicked in its results (one composite aggregation, paged)."""
    query_field = await _exact_field(engine, events, "query_id", headers)
    object_field = await _exact_field(engine, events, "event_attributes.object.object_id", headers)
    action_field = await _exact_field(engine, events, "action_name", headers)
    found: Clicks = {}
    after: dict[str, Any] | None = None
    while True:
        composite: dict[str, Any] = {"size": PAGE, "sources": [
            {"q": {"terms": {"field": query_field}}}, {"o": {"terms": {"field": object_field}}}]}
        if after is not None:
            composite["after"] = after
        body = {"size": 0, "query": {"term": {action_field: CLICK}}, "aggs": {"clicks": {"composite": composite}}}
        answer = await _read(engine, f"/{quote(events, safe='')}/_search", body, headers)
        agg = answer.get("aggregations", {}).get("clicks", {})
        for bucket in agg.get("buckets", []):
            found.setdefault(str(bucket["key"]["q"]), set()).add(str(bucket["key"]["o"]))
        after = agg.get("after_key")
        if not agg.get("buckets") or after is None:
            return found


async def search_records(engine: EngineTransport, queries: str, clicked: Clicks,
                         headers: Headers = ()) -> list[SearchRecord]:
    """Every recorded query as a `SearchRecord`, with its clicks (read in `search_after` pages)."""
    records: list[SearchRecord] = []
    after: list[Any] | None = None
    fields = ["query_id", "arm", "query_response_object_ids", "object_teams", "shadow_object_ids", "user_query"]
    while True:
        body: dict[str, Any] = {"size": PAGE, "sort": [{"query_id": "asc"}], "_source": fields,
                                "query": {"match_all": {}}}
        if after is not None:
            body["search_after"] = after
        hits = (await _read(engine, f"/{quote(queries, safe='')}/_search", body, headers))["hits"]["hits"]
        for hit in hits:
            record = _record(hit.get("_source") or {}, clicked)
            if record is not None:
                records.append(record)
        if len(hits) < PAGE:
            return records
        after = hits[-1]["sort"]


def _record(source: dict[str, Any], clicked: Clicks) -> SearchRecord | None:
    """A query's record, None for one the report cannot place (no arm, teams that do not fit)."""
    arm = _ARMS.get(source.get("arm"))
    returned = [str(i) for i in source.get("query_response_object_ids") or []]
    if arm is None:
        return None
    teams = [_TEAMS.get(t) for t in source.get("object_teams") or []]
    if teams and len(teams) != len(returned):
        return None
    shadow = source.get("shadow_object_ids")
    return SearchRecord.from_clicked_ids(arm, returned, clicked.get(str(source.get("query_id")), set()), teams,
                                         [str(i) for i in shadow] if isinstance(shadow, list) else None,
                                         _query_text(source.get("user_query")))


def _query_text(value: Any) -> str | None:
    """The text as the console keys its judgments (whitespace collapsed); None for no text."""
    text = " ".join(value.split()) if isinstance(value, str) else ""
    return text or None


def shadow_texts(records: Sequence[SearchRecord]) -> list[str]:
    """The distinct query texts of the shadow searches: the only ones the judgments are read for."""
    return list(dict.fromkeys(r.query for r in records if r.shadow is not None and r.query is not None))


async def _no_judgments(texts: list[str]) -> JudgedTexts:
    return JudgedTexts()


async def ubi_report(engine: EngineTransport, queries: str = "ubi_queries", events: str = UBI_EVENTS_INDEX,
                     headers: Headers = (), judgments: JudgmentLookup = _no_judgments) -> dict[str, Any]:
    """The report as JSON-ready data: per arm, and the experiment's own comparison."""
    clicked = await clicks(engine, events, headers)
    records = await search_records(engine, queries, clicked, headers)
    judged = await judgments(shadow_texts(records))
    ambiguous = sum(r.shadow is not None and r.query in judged.ambiguous for r in records)
    return as_json(report(records, judged.qrels), len(records), ambiguous)


def as_json(result: Report, searches: int, ambiguous: int = 0) -> dict[str, Any]:
    """`ambiguous`: shadow searches left out of the nDCG, their text judged in several indices."""
    out: dict[str, Any] = {"searches": searches, "arms": {arm: asdict(s) for arm, s in result.arms.items()}}
    for name in ("interleaving", "ab", "shadow"):
        part = getattr(result, name)
        out[name] = asdict(part) if part is not None else None
    if out["shadow"] is not None:
        out["shadow"]["ambiguous_searches"] = ambiguous
    return out
