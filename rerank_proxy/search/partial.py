"""A window whose vectors are partly cold is reranked among its warm hits; the cold keep their places.

With the built-in model a search is reranked only once every hit of its window has a vector. On a
busy host the store warms slowly, and windows share documents, so most windows stay a few documents
short for minutes: all of them answered in lexical order. Here such a window is reranked without
its cold hits, which keep their lexical places (their slots are not offered to others), as long as
at most MAX_COLD_SHARE of the window is cold. The answer says so (`X-Rerank-Reason: vectors_partial`),
is not memoised, and caches only the warm hits' scores: the next search, once warm, is whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.scoring.final import Scored, ScoreMode, final_scores

PARTIAL_REASON = "vectors_partial"
# Past half cold, the lexical order is left alone: too few hits would move to be worth a rerank.
MAX_COLD_SHARE = 0.5


def partial_pins(texts: Sequence[str], cold_texts: frozenset[str]) -> list[int]:
    """Window positions of the cold texts, or [] when the window is not warm enough to rerank."""
    if not cold_texts or not texts:
        return []
    pinned = [i for i, text in enumerate(texts) if text in cold_texts]
    return pinned if 0 < len(pinned) <= MAX_COLD_SHARE * len(texts) else []


async def score_warm(cache: ScoreCache | None, query: str, texts: Sequence[str], lexical: Sequence[Any],
                     mode: ScoreMode, weight: float, digests: Sequence[bytes] | None, pinned: list[int]) -> Scored:
    """The window scored without its `pinned` hits, spread back over the whole window (a pinned
    slot's score is a placeholder: the merge keeps the hit in place and shows its neighbour's)."""
    fixed = set(pinned)
    warm = [i for i in range(len(texts)) if i not in fixed]
    part = await final_scores(cache, query, [texts[i] for i in warm], [lexical[i] for i in warm],
                              mode, weight, None if digests is None else [digests[i] for i in warm])
    final = [0.0] * len(texts)
    for position, score in zip(warm, part.final, strict=True):
        final[position] = score
    raw: list[float | None] = [None] * len(texts)
    for position, value in zip(warm, part.raw, strict=True):
        raw[position] = value
    return Scored(part.mode, final, raw, [warm[i] for i in part.scored], [warm[i] for i in part.blanks],
                  part.outcome)
