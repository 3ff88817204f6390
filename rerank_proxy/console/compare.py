"""One side-by-side comparison: the engine's lexical ranking and the reranked one, for one query.

It calls what the search pipeline calls (candidate window, `mapped_hit_texts` per index rule,
`scoring.final.final_scores`, `rerank_order`) so what the console shows is what a client of the
proxy would get for the same options, but it keeps every intermediate value (texts, raw and final
scores, both ranks, timings) that the pipeline throws away.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from rerank_proxy.config import IndexRule, Settings
from rerank_proxy.console.params import MAX_WINDOW, CompareOptions
from rerank_proxy.console.scorers import Scorer, Scorers
from rerank_proxy.errors import ProxyError, bad_request, parse_error
from rerank_proxy.scoring.final import ScoreMode, final_scores, lexical_scores, resolve_mode, resolve_weight
from rerank_proxy.scoring.providers.base import RerankError
from rerank_proxy.search.merge import rerank_order
from rerank_proxy.search.text.hit_text import RuleFor, needed_source_fields
from rerank_proxy.search.text.query_text import extract_query_text
from rerank_proxy.search.text.text_fields import mapped_hit_texts

LABEL_FIELDS = ("title", "name", "headline", "subject")
_JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Candidate:
    id: str
    index: str
    lexical_score: float | None
    text: str
    label: str


@dataclass(slots=True)
class Comparison:
    """The full result; `order` lists window positions by final score (the reranked ranking)."""

    options: CompareOptions
    query: str
    scorer: Scorer
    rule: IndexRule
    configured_rule: bool
    window: int
    mode: ScoreMode
    candidates: list[Candidate]
    rerank_scores: list[float | None]
    final: list[float]
    order: list[int]
    engine_ms: float
    engine_took_ms: int | None
    total_hits: int | None
    search: dict[str, Any]  # what the engine was sent, the app's template filled in
    rerank_ms: float = 0.0
    cache: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def lexical_ids(self, k: int) -> list[str]:
        return [c.id for c in self.candidates[:k]]

    def reranked_ids(self, k: int) -> list[str]:
        return [self.candidates[i].id for i in self.order[:k]]


def effective_rule(settings: Settings, opts: CompareOptions, index: str) -> tuple[IndexRule, bool]:
    """The hit-text rule for `index` with the console's field/template overrides applied.

    Also returns whether the proxy reranks searches on that index at all (the console compares
    any index, but the page says when clients would not see the reranked column).
    """
    configured = settings.rule_for(index)
    base = configured or settings.default_rule(index)
    fields = base.fields if opts.fields is None else opts.fields
    template = opts.template if opts.template is not None else (base.template if opts.fields is None else "")
    window = min(opts.window or base.window, MAX_WINDOW)
    from_mapping = base.text_from_mapping and opts.fields is None and opts.template is None
    return IndexRule(pattern=base.pattern, fields=fields, template=template, window=window,
                     max_chars=base.max_chars, text_from_mapping=from_mapping), configured is not None


def _per_hit_rules(settings: Settings, opts: CompareOptions) -> RuleFor | None:
    """As in the pipeline, each hit's own index rule builds its text, unless the page overrides it."""
    if opts.fields is not None or opts.template is not None:
        return None
    return settings.rule_for


def _label(source: Any, text: str) -> str:
    if isinstance(source, dict):
        for name in LABEL_FIELDS:
            value = source.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()[:200]
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    return first[:120]


def engine_json(body: Any) -> bytes:
    """`body` as JSON for the engine. orjson writes at most 254 levels; an app's DSL nested deeper
    is written by the standard library instead, so the engine answers it (its own 400) and the
    console never fails with a 500; past Python's recursion limit it is the proxy's 400."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        try:
            return json.dumps(body, ensure_ascii=False).encode()
        except RecursionError:
            raise parse_error("[dsl] is nested too deeply") from None


def _engine_reason(payload: bytes) -> str:
    try:
        error = orjson.loads(payload).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return payload[:200].decode("utf-8", "replace")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(error)[:200]


def search_body(opts: CompareOptions, query: str, size: int, source: dict[str, Any] | None) -> dict[str, Any]:
    """What the engine is sent: the query template filled in, else the fixed clause, else a multi_match."""
    if opts.query_template is not None:
        return opts.query_template.search_body(query, size, source)
    clause = opts.dsl if opts.dsl is not None else {"multi_match": {"query": query, "lenient": True}}
    body: dict[str, Any] = {"size": size, "query": clause}
    if source is not None:
        body["_source"] = source
    return body


async def fetch_candidates(runtime: Any, index: str, body: dict[str, Any]
                           ) -> tuple[list[dict[str, Any]], float, int | None, int | None]:
    """The engine's answer to `body` on `index`: (hits, wall ms, engine `took`, total hits)."""
    started = time.perf_counter()
    answer = await runtime.engine.fetch("POST", f"/{quote(index, safe='*')}/_search", _JSON, engine_json(body))
    engine_ms = (time.perf_counter() - started) * 1000
    if answer.status != 200:
        raise ProxyError(answer.status if answer.status >= 400 else 502,
                         "engine_exception", f"the engine refused the search: {_engine_reason(answer.body)}")
    data = orjson.loads(answer.body)
    hits = data.get("hits", {})
    total = hits.get("total")
    total_hits = total.get("value") if isinstance(total, dict) else total
    return list(hits.get("hits") or []), engine_ms, data.get("took"), total_hits


async def compare(runtime: Any, scorers: Scorers, opts: CompareOptions) -> Comparison:
    """Run one comparison; a reranker failure is reported in `error`, never raised."""
    settings: Settings = runtime.settings
    query = opts.query or extract_query_text({"query": opts.dsl})
    if not query.strip():
        raise bad_request("no query text: type a query or use a full-text clause in the DSL")
    scorer = await scorers.get(opts.provider, opts.model)
    rule, configured = effective_rule(settings, opts, opts.index)
    needed = needed_source_fields(rule)
    body = search_body(opts, query, rule.window, None if needed is None else {"includes": [*needed, *LABEL_FIELDS]})
    hits, engine_ms, took, total = await fetch_candidates(runtime, opts.index, body)
    texts = await mapped_hit_texts(hits, rule, _per_hit_rules(settings, opts), runtime.pipeline.text_fields)
    candidates = []
    for hit, text in zip(hits, texts, strict=True):
        source = hit.get("_source")
        score = hit.get("_score")
        candidates.append(Candidate(str(hit.get("_id", "")), str(hit.get("_index", "")),
                                    float(score) if isinstance(score, (int, float)) else None,
                                    text, _label(source, text)))
    mode = resolve_mode(opts.score_mode, scorer.mode_setting, scorer.provider)
    weight = resolve_weight(opts.blend_weight, scorer.blend_weight)
    lexical = [c.lexical_score for c in candidates]
    result = Comparison(opts, query, scorer, rule, configured, rule.window, mode, candidates,
                        [None] * len(candidates), lexical_scores(lexical),
                        list(range(len(candidates))), engine_ms, took, total, body)
    if scorer.cache is None or not candidates:
        result.mode = "lexical" if scorer.cache is None else mode
        return result
    await _rerank(result, scorer, query, mode, weight)
    return result


async def _rerank(result: Comparison, scorer: Scorer, query: str, mode: ScoreMode, weight: float) -> None:
    """Scores as the pipeline computes them; a failure leaves the lexical order and says why."""
    assert scorer.cache is not None
    texts = [c.text for c in result.candidates]
    lexical = [c.lexical_score for c in result.candidates]
    started = time.perf_counter()
    try:
        scored = await final_scores(scorer.cache, query, texts, lexical, mode, weight)
    except RerankError as exc:
        result.rerank_ms = (time.perf_counter() - started) * 1000
        result.error = f"the reranker failed ({type(exc).__name__}: {exc}); the reranked column shows lexical order"
        return
    result.rerank_ms = (time.perf_counter() - started) * 1000
    outcome = scored.outcome
    if outcome is not None:
        result.rerank_scores = scored.raw
        result.cache = {"status": outcome.status, "cached": outcome.cached, "coalesced": outcome.coalesced,
                        "sent": outcome.sent, "provider_calls": outcome.provider_calls}
    result.final = scored.final
    result.order = rerank_order(result.final, scored.blanks)


def _change(before: int, after: int, k: int, missing: str) -> dict[str, Any]:
    """Movement of one hit between the two top-k lists (ranks are 0-based window positions)."""
    if before >= k or after >= k:
        return {"kind": missing, "by": before - after}
    if after < before:
        return {"kind": "up", "by": before - after}
    if after > before:
        return {"kind": "down", "by": after - before}
    return {"kind": "same", "by": 0}


def to_json(result: Comparison) -> dict[str, Any]:
    """Both columns for the page: ranks are 1-based, texts are what the reranker was sent."""
    k = result.options.size
    new_rank = {pos: rank for rank, pos in enumerate(result.order)}
    lexical_column = []
    for pos, cand in enumerate(result.candidates[:k]):
        lexical_column.append({
            "id": cand.id, "index": cand.index, "rank": pos + 1, "score": cand.lexical_score,
            "label": cand.label, "text": cand.text, "reranked_rank": new_rank[pos] + 1,
            "change": _change(pos, new_rank[pos], k, "out"),
        })
    reranked_column = []
    for rank, pos in enumerate(result.order[:k]):
        cand = result.candidates[pos]
        reranked_column.append({
            "id": cand.id, "index": cand.index, "rank": rank + 1, "score": result.final[pos],
            "rerank_score": result.rerank_scores[pos], "lexical_rank": pos + 1,
            "lexical_score": cand.lexical_score, "label": cand.label, "text": cand.text,
            "change": _change(pos, rank, k, "new"),
        })
    scorer = result.scorer
    return {
        "index": result.options.index,
        "query": result.query,
        "provider": {"choice": scorer.choice, "name": scorer.provider, "model": scorer.model},
        "score_mode": result.mode,
        "window": result.window,
        "candidates": len(result.candidates),
        "total_hits": result.total_hits,
        "configured_for_reranking": result.configured_rule,
        "text_rule": {"fields": list(result.rule.fields), "template": result.rule.template,
                      "max_chars": result.rule.max_chars},
        "search": result.search,
        "lexical": lexical_column,
        "reranked": reranked_column,
        "timings": {"engine_ms": round(result.engine_ms, 2), "engine_took_ms": result.engine_took_ms,
                    "rerank_ms": round(result.rerank_ms, 2), "cache": result.cache},
        "error": result.error,
    }
