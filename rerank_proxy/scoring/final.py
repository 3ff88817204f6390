"""Score a window's texts through the cache: the one rule the pipeline and the console share.

Texts with no words are never sent (Cohere rejects a request holding an empty document); they get
the lowest score the others got, so they sink to the bottom and keep their lexical order there.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerank_proxy.scoring.cache.scores import ScoreCache, ScoreOutcome


async def score_texts(cache: ScoreCache, query: str,
                      texts: Sequence[str]) -> tuple[list[float], list[int], ScoreOutcome | None]:
    """(a score per text, the positions actually scored, the cache outcome or None if none were)."""
    scorable = [i for i, text in enumerate(texts) if text.strip()]
    if not scorable:
        return [0.0] * len(texts), scorable, None
    if len(scorable) == len(texts):  # the usual case: every hit has text
        outcome = await cache.scores(query, texts)
        return list(outcome.scores), scorable, outcome
    outcome = await cache.scores(query, [texts[i] for i in scorable])
    raw = [min(outcome.scores)] * len(texts)
    for i, score in zip(scorable, outcome.scores):
        raw[i] = score
    return raw, scorable, outcome
