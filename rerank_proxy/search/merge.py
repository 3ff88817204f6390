"""Merge: put reranked scores back into the engine's response and cut the client's page.

Only `hits.hits` (order, `_score`, `_source` filtering) and `hits.max_score` change; everything else
(aggregations, totals, suggestions, highlights, `fields`, `inner_hits`, `_shards`...) stays exactly
as the engine returned it.

Scores: in `rerank` mode `_score` is the provider's relevance score. In `blend` mode it is
`w * minmax(rerank) + (1 - w) * minmax(lexical)` over the window, which keeps the engine's signal
for models that are weak alone (the built-in one). Hits of the page beyond the window keep their
lexical score and order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_proxy.search import source_filter
from rerank_proxy.search.plan import Plan


def _minmax(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return [1.0 for _ in values]
    span = hi - lo
    return [(v - lo) / span for v in values]


def final_scores(rerank_scores: Sequence[float], lexical: Sequence[float | None], mode: str,
                 weight: float) -> list[float]:
    """The `_score` each window hit gets, for the given score mode."""
    if mode == "rerank" or not rerank_scores:
        return [float(s) for s in rerank_scores]
    lex = [float(v) if isinstance(v, (int, float)) else 0.0 for v in lexical]
    if mode == "lexical":
        return lex
    return [weight * r + (1.0 - weight) * x for r, x in zip(_minmax(rerank_scores), _minmax(lex))]


def rerank_order(scores: Sequence[float]) -> list[int]:
    """Window positions by descending score; ties keep the engine's order."""
    negated = [-s for s in scores]
    return sorted(range(len(scores)), key=negated.__getitem__)  # stable: ties stay in engine order


def merge(response: dict[str, Any], plan: Plan, scores: Sequence[float] | None) -> dict[str, Any]:
    """The response the client gets: reordered (when scores is not None) and paginated.

    `scores` holds one final score per window hit, in the engine's order; None means "fall back
    to lexical order" (the page is still cut as the client asked).
    """
    hits_obj = response.get("hits")
    if not isinstance(hits_obj, dict) or not isinstance(hits_obj.get("hits"), list):
        return response
    hits: list[dict[str, Any]] = hits_obj["hits"]
    window = hits[: plan.window]
    tail = hits[plan.window:]
    if scores is not None and window:
        order = rerank_order(scores)
        ranked = []
        for new_rank, i in enumerate(order):
            hit = window[i]
            if plan.options.explain:
                hit["_rerank"] = {"lexical_rank": i, "lexical_score": hit.get("_score"),
                                  "rerank_rank": new_rank, "score": scores[i]}
            hit["_score"] = scores[i]
            ranked.append(hit)
        window = ranked
        hits_obj["max_score"] = scores[order[0]]
    page = (window + tail)[plan.page_from: plan.page_from + plan.page_size]
    if not plan.source.is_identity:
        for hit in page:
            if "_source" not in hit:
                continue
            if plan.source.fetch:
                hit["_source"] = source_filter.apply(hit["_source"], plan.source)
            else:
                del hit["_source"]
    hits_obj["hits"] = page
    return response
