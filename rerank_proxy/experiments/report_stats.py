"""The experiment report's statistics, from one record per search (its arm, what it returned, its clicks).

Why these: they are the usual online measures, each computable from a UBI click log alone, with
intervals a reader can recompute by hand (docs/experiments-stats.md gives every formula):
* per arm: searches, click-through at 10, mean reciprocal rank of the first click, abandonment;
* interleaving: the reranked team's wins, losses and ties, and the share of decided queries it won
  with a Wilson score interval (exact-enough at a few dozen queries, never outside [0, 1], no seed);
* A/B: the reranked arm's CTR@10 minus the lexical arm's, with a two-proportion normal interval;
* shadow: the overlap of the served and the shadow top 10, and where the console holds judgments of
  the query, nDCG@10 of both lists (console/ndcg.py's definition, so the numbers match the console's).

The intervals treat searches as independent. Assignment is by user, so one user's searches are
correlated and the intervals are somewhat too narrow when users search many times each.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from rerank_proxy.console.ndcg import ndcg_at_k
from rerank_proxy.experiments.arms import Arm
from rerank_proxy.experiments.interleave import Team, credit

DEPTH = 10
CONFIDENCE = 0.95
Qrels = Mapping[str, int]   # doc id -> grade (0-3), one judged query's judgments


@dataclass(frozen=True, slots=True)
class SearchRecord:
    """One search as the report sees it. Positions are 0-based in `returned`, as served.

    `teams` (interleaved arm): each position's team, None for the common prefix.
    `shadow` (shadow experiment): the reranked list computed behind the served one.
    `query` (the user's query text, whitespace collapsed as the console keys it): how a search finds
    its judgments.
    """

    arm: Arm
    returned: tuple[str, ...]
    clicked: frozenset[int] = frozenset()
    teams: tuple[Team | None, ...] = ()
    shadow: tuple[str, ...] | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        outside = sorted(p for p in self.clicked if not 0 <= p < len(self.returned))
        if outside:
            raise ValueError(f"clicked positions {outside} are outside the {len(self.returned)} returned hits")
        if self.teams and len(self.teams) != len(self.returned):
            raise ValueError(f"{len(self.teams)} teams for {len(self.returned)} returned hits")

    @classmethod
    def from_clicked_ids(cls, arm: Arm, returned: Sequence[str], clicked_ids: Iterable[str],
                         teams: Sequence[Team | None] = (), shadow: Sequence[str] | None = None,
                         query: str | None = None) -> SearchRecord:
        """A record from clicked hit ids; a click on a hit this search did not return is dropped."""
        position = {hit: p for p, hit in reversed(list(enumerate(returned)))}
        clicked = frozenset(position[hit] for hit in clicked_ids if hit in position)
        return cls(arm, tuple(returned), clicked, tuple(teams), None if shadow is None else tuple(shadow), query)

    @property
    def first_click(self) -> int | None:
        return min(self.clicked) if self.clicked else None


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class ArmStats:
    arm: Arm
    searches: int
    ctr_at_10: float        # share of searches with a click in the top DEPTH
    mrr: float              # mean of 1/rank of the first click, 0 for a search without a click
    abandonment: float      # share of searches without any click


@dataclass(frozen=True, slots=True)
class InterleaveStats:
    wins: int               # queries the reranked team won
    losses: int             # queries the lexical team won
    ties: int               # equal clicks, no click included
    preference: float | None      # wins / (wins + losses); None with no decided query
    interval: Interval | None     # its Wilson score interval


@dataclass(frozen=True, slots=True)
class CtrDifference:
    reranked_ctr: float
    lexical_ctr: float
    difference: float       # reranked - lexical
    interval: Interval      # two-proportion normal (Wald, unpooled) interval


@dataclass(frozen=True, slots=True)
class ShadowNdcg:
    judged_searches: int                  # shadow searches whose query has a relevant judgment
    ndcg_at_10_served: float | None       # mean nDCG@DEPTH of the served lists; None with no judged search
    ndcg_at_10_shadow: float | None       # mean nDCG@DEPTH of the shadow lists


@dataclass(frozen=True, slots=True)
class ShadowStats:
    searches: int           # searches compared (served or shadow list not empty)
    overlap_at_10: float    # mean |S ∩ R| / max(|S|, |R|) over the top DEPTH of each
    judged_searches: int = 0
    ndcg_at_10_served: float | None = None
    ndcg_at_10_shadow: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    arms: dict[Arm, ArmStats] = field(default_factory=dict)
    interleaving: InterleaveStats | None = None
    ab: CtrDifference | None = None
    shadow: ShadowStats | None = None


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile: 1.959964 for 95%."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def arm_stats(records: Iterable[SearchRecord], depth: int = DEPTH) -> dict[Arm, ArmStats]:
    """Each arm's searches, CTR@depth, MRR of the first click and abandonment, arms in name order."""
    by_arm: dict[Arm, list[SearchRecord]] = {}
    for record in records:
        by_arm.setdefault(record.arm, []).append(record)
    stats: dict[Arm, ArmStats] = {}
    for arm in sorted(by_arm):
        group = by_arm[arm]
        firsts = [r.first_click for r in group]
        n = len(group)
        stats[arm] = ArmStats(
            arm=arm,
            searches=n,
            ctr_at_10=sum(f is not None and f < depth for f in firsts) / n,
            mrr=sum(0.0 if f is None else 1.0 / (f + 1) for f in firsts) / n,
            abandonment=sum(f is None for f in firsts) / n,
        )
    return stats


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """The Wilson score interval of a binomial share successes/n (n > 0)."""
    if not 0 <= successes <= n or n == 0:
        raise ValueError(f"need 0 <= successes <= n and n > 0, not {successes} of {n}")
    z = z_value(confidence)
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 or n successes the bound is exactly 0 or 1; rounding would leave it a hair off
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high)


def interleave_stats(records: Iterable[SearchRecord], confidence: float = CONFIDENCE) -> InterleaveStats:
    """Wins, losses and ties of the reranked team over the interleaved searches, and its preference."""
    outcomes = [credit(r.teams, r.clicked).outcome for r in records if r.arm == "interleaved"]
    wins, losses = outcomes.count("reranked"), outcomes.count("lexical")
    decided = wins + losses
    if not decided:
        return InterleaveStats(wins, losses, outcomes.count("tie"), None, None)
    return InterleaveStats(wins, losses, outcomes.count("tie"), wins / decided,
                           wilson_interval(wins, decided, confidence))


def two_proportion_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """The normal interval of p1 - p2 with unpooled variance: d +- z * sqrt(p1 q1 / n1 + p2 q2 / n2)."""
    if n1 <= 0 or n2 <= 0 or not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"need 0 <= x <= n and n > 0, not {x1} of {n1} and {x2} of {n2}")
    p1, p2 = x1 / n1, x2 / n2
    half = z_value(confidence) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return Interval(p1 - p2 - half, p1 - p2 + half)


def ctr_difference(records: Iterable[SearchRecord], depth: int = DEPTH,
                   confidence: float = CONFIDENCE) -> CtrDifference | None:
    """The reranked arm's CTR@depth minus the lexical arm's; None unless both arms have searches."""
    counts = {"reranked": [0, 0], "lexical": [0, 0]}          # [searches clicked in the top depth, searches]
    for record in records:
        if record.arm in counts:
            first = record.first_click
            counts[record.arm][0] += first is not None and first < depth
            counts[record.arm][1] += 1
    (x1, n1), (x2, n2) = counts["reranked"], counts["lexical"]
    if not n1 or not n2:
        return None
    return CtrDifference(x1 / n1, x2 / n2, x1 / n1 - x2 / n2, two_proportion_interval(x1, n1, x2, n2, confidence))


def overlap(served: Sequence[str], shadow: Sequence[str], depth: int = DEPTH) -> float | None:
    """|S ∩ R| / max(|S|, |R|) of the two top-depth sets: |S ∩ R| / depth when both lists are that long,
    1 for identical short lists; None when both are empty (nothing to compare)."""
    top_served, top_shadow = set(served[:depth]), set(shadow[:depth])
    larger = max(len(top_served), len(top_shadow))
    return len(top_served & top_shadow) / larger if larger else None


def shadow_ndcg(records: Iterable[SearchRecord], judged: Mapping[str, Qrels], depth: int = DEPTH) -> ShadowNdcg:
    """Mean nDCG@depth of the served and of the shadow lists, over the shadow searches whose query is
    judged. Each search counts once, so a query searched often weighs as often as it was searched (as
    in the overlap). A query without a relevant judgment has no nDCG and is left out, as in the console."""
    pairs: list[tuple[float, float]] = []
    for record in records:
        qrels = judged.get(record.query) if record.query is not None else None
        if record.shadow is None or not qrels:
            continue
        served, behind = ndcg_at_k(record.returned, qrels, depth), ndcg_at_k(record.shadow, qrels, depth)
        if served is not None and behind is not None:  # both or neither: the ideal is the judgments' own
            pairs.append((served, behind))
    if not pairs:
        return ShadowNdcg(0, None, None)
    return ShadowNdcg(len(pairs), sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs))


def shadow_overlap(records: Iterable[SearchRecord], depth: int = DEPTH,
                   judged: Mapping[str, Qrels] | None = None) -> ShadowStats | None:
    """The mean top-depth overlap of the served and the shadow lists, with both lists' mean nDCG where
    `judged` (query text -> judgments) holds the query; None without a shadow list to compare."""
    kept = list(records)
    values = [overlap(r.returned, r.shadow, depth) for r in kept if r.shadow is not None]
    compared = [v for v in values if v is not None]
    if not compared:
        return None
    ndcg = shadow_ndcg(kept, judged or {}, depth)
    return ShadowStats(len(compared), sum(compared) / len(compared), ndcg.judged_searches,
                       ndcg.ndcg_at_10_served, ndcg.ndcg_at_10_shadow)


def report(records: Iterable[SearchRecord], judged: Mapping[str, Qrels] | None = None) -> Report:
    """Every statistic the records allow: an experiment's part is None when no record is of its kind.
    `judged` maps a query text to its judgments, for the shadow lists' nDCG."""
    kept = list(records)
    interleaved = any(r.arm == "interleaved" for r in kept)
    return Report(arms=arm_stats(kept), interleaving=interleave_stats(kept) if interleaved else None,
                  ab=ctr_difference(kept), shadow=shadow_overlap(kept, judged=judged))
