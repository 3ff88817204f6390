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


def rerank_order(scores: Sequence[float], last: Collection[int] = (), pinned: Collection[int] = ()) -> list[int]:
    """Window positions by descending score; ties keep the engine's order. Positions in `last`
    (blank texts) come after all the others, by score then engine order. Positions in `pinned`
    (documents the reranker could not score yet) keep their place; the others fill the rest."""
    fixed = set(pinned)
    movable = [i for i in range(len(scores)) if i not in fixed] if fixed else range(len(scores))
    if last:
        sink = set(last)
        ranked = sorted(movable, key=lambda i: (i in sink, -scores[i]))
    else:
        negated = [-s for s in scores]
        ranked = sorted(movable, key=negated.__getitem__)  # stable: ties stay in engine order
    if not fixed:
        return ranked
    filling = iter(ranked)
    return [i if i in fixed else next(filling) for i in range(len(scores))]


def merge(response: dict[str, Any], plan: Plan, scores: Sequence[float] | None,
          last: Collection[int] = (), pinned: Collection[int] = (),
          order: Sequence[int] | None = None) -> dict[str, Any]:
    """The response the client gets: reordered (when scores is not None) and paginated.

    `scores` holds one final score per window hit, in the engine's order; None means "fall back
    to lexical order" (the page is still cut as the client asked). `last`, `pinned`: see
    `rerank_order`; a pinned hit's score is ignored, it gets its neighbour's so scores still descend.
    `order` (an experiment's interleaved list) serves the window in that order of positions instead,
    each hit with its own final score, so scores need not descend.
    """
    hits_obj = response.get("hits")
    if not isinstance(hits_obj, dict) or not isinstance(hits_obj.get("hits"), list):
        return response
    hits: list[dict[str, Any]] = hits_obj["hits"]
    window = hits[: plan.window]
    tail = hits[plan.window:]
    if scores is not None and window:
        window = _reranked(window, scores, last, pinned, plan.options.explain, order)
        hits_obj["max_score"] = max(hit["_score"] for hit in window)
    page = (window + tail)[plan.page_from: plan.page_from + plan.page_size]
    if plan.strip_versions:
        _strip_versions(page)
    if not plan.source.is_identity:
        _filter_sources(page, plan.source)
    hits_obj["hits"] = page
    return response


def _reranked(window: list[dict[str, Any]], scores: Sequence[float], last: Collection[int],
              pinned: Collection[int], explain: bool, order: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The window's hits in reranked order (or `order`), each with its final score (and `_rerank` to explain it)."""
    pinned = frozenset(pinned)
    if order is None:
        order = rerank_order(scores, last, pinned)
        shown = _descending(order, scores, pinned) if pinned else [scores[i] for i in order]
    else:
        shown = [scores[i] for i in order]
    ranked = []
    for new_rank, (i, score) in enumerate(zip(order, shown, strict=True)):
        hit = window[i]
        if explain:
            hit["_rerank"] = {"lexical_rank": i, "lexical_score": hit.get("_score"),
                              "rerank_rank": new_rank, "score": score, "scored": i not in pinned}
        hit["_score"] = score
        ranked.append(hit)
    return ranked


def _descending(order: Sequence[int], scores: Sequence[float], pinned: Collection[int]) -> list[float]:
    """Scores along `order`, a pinned hit taking the score of the scored hit before it (the first
    scored one's when none is before), so `_score` never rises down the page."""
    previous = next((scores[i] for i in order if i not in pinned), 0.0)
    out = []
    for i in order:
        if i not in pinned:
            previous = scores[i]
        out.append(previous)
    return out


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
