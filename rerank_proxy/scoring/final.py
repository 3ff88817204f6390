"""Texts + query -> final scores: the one scoring rule the pipeline, the console and the providers share.

- Score modes: `rerank` (the provider's score), `blend` (`w * minmax(rerank) + (1 - w) * minmax(lexical)`
  over the window, which keeps the engine's signal for models that are weak alone, like the built-in
  one) and `lexical` (the engine's `_score`). The setting RERANK_SCORE_MODE also accepts `auto`,
  resolved here per provider: blend for the built-in model, lexical for no provider, rerank otherwise.
  A per-request option wins over the setting, for the mode and for the blend weight.
- Blank texts (no words; `is_blank`) are never sent: Cohere rejects a whole request holding an empty
  document. Their final score is the lowest final score of the others, and they are ranked after
  every scored hit (`blanks` goes to `merge.rerank_order`), keeping their lexical order there. A
  window of blank texts only is not sent at all and keeps its lexical order. The HTTP providers
  apply the same rule at their level (`with_blanks`), as a defensive check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerank_proxy.scoring.cache.scores import ScoreCache, ScoreOutcome

ScoreMode = Literal["rerank", "blend", "lexical"]
SCORE_MODES: tuple[ScoreMode, ...] = ("rerank", "blend", "lexical")
AUTO = "auto"  # a setting or console choice, never an applied mode: see `resolve_mode`

_AUTO_BY_PROVIDER: dict[str, ScoreMode] = {"local": "blend", "none": "lexical"}


def auto_mode(provider: str) -> ScoreMode:
    """What `auto` means for a provider."""
    return _AUTO_BY_PROVIDER.get(provider, "rerank")


def resolve_mode(requested: str | None, setting: str, provider: str) -> ScoreMode:
    """The mode applied to one search: the request's option, else the setting; `auto` or None defers
    (the request's to the setting, the setting's to the provider)."""
    for mode in (requested, setting):
        if mode and mode != AUTO:
            if mode not in SCORE_MODES:
                raise ValueError(f"unknown score mode {mode!r}; expected one of {', '.join(SCORE_MODES)}")
            return mode
    return auto_mode(provider)


def resolve_weight(requested: float | None, setting: float) -> float:
    """The blend weight of one search: the request's option over the setting."""
    return float(requested) if requested is not None else float(setting)


def is_blank(text: str) -> bool:
    """A text with no words: never sent to a provider (`isspace` is `strip`'s test, without a copy)."""
    return not text or text.isspace()


def with_blanks(count: int, positions: Sequence[int], scores: Sequence[float]) -> list[float]:
    """`scores` (one per position in `positions`) spread over `count` slots; the other (blank) slots
    get the lowest of them, or 0.0 when there is none."""
    if len(positions) == count:
        return [float(s) for s in scores]
    out = [min(scores, default=0.0)] * count
    for position, score in zip(positions, scores, strict=True):
        out[position] = float(score)
    return out


def minmax(values: Sequence[float]) -> list[float]:
    """Values scaled to [0, 1]; all 1.0 when they are (nearly) equal."""
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return [1.0 for _ in values]
    span = hi - lo
    return [(v - lo) / span for v in values]


def lexical_scores(lexical: Sequence[Any]) -> list[float]:
    """The engine's `_score` values as floats (0.0 where there is none, e.g. a sorted search)."""
    return [float(v) if isinstance(v, (int, float)) else 0.0 for v in lexical]


def combine(raw: Sequence[float], lexical: Sequence[Any], mode: ScoreMode, weight: float) -> list[float]:
    """The final score of each window hit from its provider score and its lexical score."""
    if mode == "rerank" or not raw:
        return [float(s) for s in raw]
    lex = lexical_scores(lexical)
    if mode == "lexical":
        return lex
    return [weight * r + (1.0 - weight) * x for r, x in zip(minmax(raw), minmax(lex), strict=True)]


@dataclass(frozen=True, slots=True)
class Scored:
    """What scoring a window gives: `final` is what `_score` becomes; `raw` the provider's scores
    (None where nothing was scored); `scored` the positions sent; `blanks` the positions to rank
    last; `outcome` the cache's report (None when nothing was sent)."""

    mode: ScoreMode
    final: list[float]
    raw: list[float | None]
    scored: list[int]
    blanks: list[int]
    outcome: ScoreOutcome | None


async def final_scores(cache: ScoreCache | None, query: str, texts: Sequence[str], lexical: Sequence[Any],
                       mode: ScoreMode, weight: float, digests: Sequence[bytes] | None = None) -> Scored:
    """Score a window: one entry per text, in the engine's order (`digests`: their `text_hash`es,
    if known). Provider failures (`RerankError`) propagate: the caller decides between lexical
    order and an error."""
    count = len(texts)
    if mode == "lexical" or cache is None:
        return Scored("lexical", lexical_scores(lexical), [None] * count, [], [], None)
    blanks = [i for i, text in enumerate(texts) if not text or text.isspace()]   # is_blank, inlined: per hit
    if blanks:
        blank = set(blanks)
        scored = [i for i in range(count) if i not in blank]
    else:
        scored = list(range(count))
    if not scored:  # nothing to send: the lexical order, through the mode's formula
        return Scored(mode, combine([0.0] * count, lexical, mode, weight), [None] * count, [], blanks, None)
    if blanks:
        outcome = await cache.scores(query, [texts[i] for i in scored],
                                     None if digests is None else [digests[i] for i in scored])
    else:
        outcome = await cache.scores(query, texts, digests)
    final = combine(with_blanks(count, scored, outcome.scores), lexical, mode, weight)
    raw: list[float | None] = [None] * count
    for position, score in zip(scored, outcome.scores, strict=True):
        raw[position] = score
    if blanks:
        lowest = min(final[i] for i in scored)
        for i in blanks:
            final[i] = lowest
    return Scored(mode, final, raw, scored, blanks, outcome)
