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
        window = _reranked(window, scores, last, plan.options.explain)
        hits_obj["max_score"] = window[0]["_score"]
    page = (window + tail)[plan.page_from: plan.page_from + plan.page_size]
    if plan.strip_versions:
        _strip_versions(page)
    if not plan.source.is_identity:
        _filter_sources(page, plan.source)
    hits_obj["hits"] = page
    return response


def _reranked(window: list[dict[str, Any]], scores: Sequence[float], last: Collection[int],
              explain: bool) -> list[dict[str, Any]]:
    """The window's hits in reranked order, each with its final score (and `_rerank` to explain it)."""
    ranked = []
    for new_rank, i in enumerate(rerank_order(scores, last)):
        hit = window[i]
        if explain:
            hit["_rerank"] = {"lexical_rank": i, "lexical_score": hit.get("_score"),
                              "rerank_rank": new_rank, "score": scores[i]}
        hit["_score"] = scores[i]
        ranked.append(hit)
    return ranked


def _strip_versions(page: list[dict[str, Any]]) -> None:
    """Drop the document versions the proxy asked for and the client did not."""
    for hit in page:
        hit.pop("_seq_no", None)
        hit.pop("_primary_term", None)


def _filter_sources(page: list[dict[str, Any]], source: source_filter.SourceFilter) -> None:
    """Apply the client's `_source` filtering to the page's hits (fetched whole)."""
    for hit in page:
        if "_source" not in hit:
            continue
        if source.fetch:
            hit["_source"] = source_filter.apply(hit["_source"], source)
        else:
            del hit["_source"]
