"""Merge: put reranked scores back into the engine's response and cut the client's page.

Only `hits.hits` (order, `_score`, `_source` filtering) and `hits.max_score` change; everything else
(aggregations, totals, suggestions, highlights, `fields`, `inner_hits`, `_shards`...) stays exactly
as the engine returned it.

The window's final scores come from `rerank_proxy.scoring.final` (score modes, blending, blank
texts); this module only orders the window by them and cuts the page. Hits of the page beyond the
window keep their lexical score and order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from rerank_proxy.search.plan import Plan
from rerank_proxy.search.text import source_filter


def rerank_order(scores: Sequence[float], last: Collection[int] = ()) -> list[int]:
    """Window positions by descending score; ties keep the engine's order. Positions in `last`
    (blank texts) come after all the others, by score then engine order."""
    if last:
        sink = set(last)
        return sorted(range(len(scores)), key=lambda i: (i in sink, -scores[i]))
    negated = [-s for s in scores]
    return sorted(range(len(scores)), key=negated.__getitem__)  # stable: ties stay in engine order


def merge(response: dict[str, Any], plan: Plan, scores: Sequence[float] | None,
          last: Collection[int] = ()) -> dict[str, Any]:
    """The response the client gets: reordered (when scores is not None) and paginated.

    `scores` holds one final score per window hit, in the engine's order; None means "fall back
    to lexical order" (the page is still cut as the client asked). `last`: see `rerank_order`.
    """
    hits_obj = response.get("hits")
    if not isinstance(hits_obj, dict) or not isinstance(hits_obj.get("hits"), list):
        return response
    hits: list[dict[str, Any]] = hits_obj["hits"]
    window = hits[: plan.window]
    tail = hits[plan.window:]
    if scores is not None and window:
        order = rerank_order(scores, last)
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
    if plan.strip_versions:
        for hit in page:
            hit.pop("_seq_no", None)
            hit.pop("_primary_term", None)
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
