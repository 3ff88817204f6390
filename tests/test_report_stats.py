"""The experiment report's statistics (rerank_proxy/experiments/report_stats.py): exact values on
hand-made records, the intervals' coverage on simulated A/A data, and monotonicity."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank_proxy.experiments.report_stats import (
    ArmStats,
    Interval,
    SearchRecord,
    arm_stats,
    ctr_difference,
    interleave_stats,
    overlap,
    report,
    shadow_overlap,
    two_proportion_interval,
    wilson_interval,
    z_value,
)

HITS = tuple("abcdefghijkl")          # 12 hits, so a click can fall below the top 10
Z95 = 1.959963984540054


def searched(arm, *clicked, returned=HITS, **more):
    return SearchRecord(arm, returned, frozenset(clicked), **more)


def test_z_value():
    assert math.isclose(z_value(), Z95, rel_tol=1e-12)
    assert math.isclose(z_value(0.9), 1.6448536269514722, rel_tol=1e-12)


def test_arm_stats_by_hand():
    """lexical: first clicks at ranks 1, 3, none, 12  -> CTR@10 2/4, MRR (1 + 1/3 + 0 + 1/12) / 4 = 17/48,
    abandonment 1/4 (the rank-12 click is no click in the top 10, but the search is not abandoned).
    reranked: ranks 2, none                           -> CTR@10 1/2, MRR (1/2 + 0) / 2, abandonment 1/2."""
    records = [searched("lexical", 0), searched("reranked", 1), searched("lexical", 5, 2),
               searched("lexical"), searched("reranked"), searched("lexical", 11)]
    stats = arm_stats(records)
    assert list(stats) == ["lexical", "reranked"]
    lexical = stats["lexical"]
    assert (lexical.arm, lexical.searches, lexical.ctr_at_10, lexical.abandonment) == ("lexical", 4, 0.5, 0.25)
    assert math.isclose(lexical.mrr, 17 / 48, rel_tol=1e-12)
    assert stats["reranked"] == ArmStats("reranked", 2, 0.5, 0.25, 0.5)
    assert arm_stats([]) == {}
    assert arm_stats(records, depth=12)["lexical"].ctr_at_10 == 0.75


def test_wilson_by_hand():
    """8 of 10: p = 0.8, z^2/n = 0.38415; centre (0.8 + 0.19207) / 1.38415 = 0.71680, half
    1.95996 / 1.38415 * sqrt(0.016 + 0.0096036) = 0.22650 -> (0.4903, 0.9433), the textbook value."""
    got = wilson_interval(8, 10)
    assert got.low == pytest.approx(0.49016, abs=1e-4)
    assert got.high == pytest.approx(0.94331, abs=1e-4)
    none = wilson_interval(0, 10)
    assert none.low == 0.0
    assert none.high == pytest.approx(0.27753, abs=1e-4)
    assert wilson_interval(10, 10).high == 1.0
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(*bad)


def test_interleave_stats_by_hand():
    teams = ("lexical", "reranked", "reranked", "lexical")
    records = [
        searched("interleaved", 1, returned=tuple("wxyz"), teams=teams),        # reranked wins
        searched("interleaved", 1, 2, 0, returned=tuple("wxyz"), teams=teams),  # 2 to 1: reranked wins
        searched("interleaved", 3, returned=tuple("wxyz"), teams=teams),        # lexical wins
        searched("interleaved", returned=tuple("wxyz"), teams=teams),           # no click: tie
        searched("interleaved", 0, 1, returned=tuple("wxyz"), teams=teams),     # 1 to 1: tie
        searched("interleaved", 0, returned=tuple("wxyz"), teams=(None, "lexical", "reranked", "lexical")),  # prefix
        searched("lexical", 0),                                                 # not interleaved: ignored
    ]
    stats = interleave_stats(records)
    assert (stats.wins, stats.losses, stats.ties) == (2, 1, 3)
    assert stats.preference == pytest.approx(2 / 3)
    assert stats.interval == wilson_interval(2, 3)
    one_loss = interleave_stats(records[2:])
    assert (one_loss.wins, one_loss.losses, one_loss.ties, one_loss.preference, one_loss.interval) == (
        0, 1, 3, 0.0, wilson_interval(0, 1))
    undecided = interleave_stats(records[3:])
    assert (undecided.wins, undecided.losses, undecided.ties, undecided.preference, undecided.interval) == (
        0, 0, 3, None, None)


def test_two_proportion_interval_by_hand():
    """30/100 against 20/100: d = 0.1, se = sqrt(0.3*0.7/100 + 0.2*0.8/100) = sqrt(0.0037) = 0.060828,
    half-width 1.959964 * 0.0608276 = 0.1192200."""
    got = two_proportion_interval(30, 100, 20, 100)
    assert got.low == pytest.approx(0.1 - 0.1192200, abs=1e-6)
    assert got.high == pytest.approx(0.1 + 0.1192200, abs=1e-6)
    with pytest.raises(ValueError, match="need"):
        two_proportion_interval(1, 0, 1, 1)


def test_ctr_difference_from_records():
    records = ([searched("reranked", 0)] * 30 + [searched("reranked")] * 70
               + [searched("lexical", 4)] * 20 + [searched("lexical", 10)] * 80)   # rank 11: not in CTR@10
    diff = ctr_difference(records)
    assert diff is not None
    assert (diff.reranked_ctr, diff.lexical_ctr) == (0.3, 0.2)
    assert diff.difference == pytest.approx(0.1)
    assert diff.interval == two_proportion_interval(30, 100, 20, 100)
    assert ctr_difference(records[:100]) is None       # no lexical search: no difference


def test_overlap_by_hand():
    top = tuple("abcdefghij")
    assert overlap(top, tuple(reversed(top))) == 1.0
    assert overlap(top, tuple("fghijklmno")) == 0.5
    assert overlap(HITS, HITS[2:]) == 0.8                 # compared on the top 10 of each
    assert overlap(("a", "b"), ("b", "a")) == 1.0         # short identical lists overlap fully
    assert overlap(("a", "b"), ("a",)) == 0.5
    assert overlap((), ()) is None
    records = [searched("lexical", returned=top, shadow=tuple(reversed(top))),
               searched("lexical", returned=top, shadow=tuple("fghijklmno")),
               searched("lexical", returned=(), shadow=()),
               searched("lexical", returned=top)]
    stats = shadow_overlap(records)
    assert stats is not None
    assert (stats.searches, stats.overlap_at_10) == (2, 0.75)
    assert shadow_overlap(records[2:]) is None


def test_records_are_checked():
    with pytest.raises(ValueError, match=r"clicked positions \[3\]"):
        SearchRecord("lexical", ("a", "b", "c"), frozenset({3}))
    with pytest.raises(ValueError, match="teams"):
        SearchRecord("interleaved", ("a", "b"), teams=("lexical",))
    record = SearchRecord.from_clicked_ids("lexical", ["a", "b", "c"], ["c", "zz", "c"], shadow=["c"])
    assert record == SearchRecord("lexical", ("a", "b", "c"), frozenset({2}), shadow=("c",))
    assert record.first_click == 2


def test_report_fills_what_the_records_allow():
    ab = report([searched("reranked", 0), searched("lexical")])
    assert ab.ab is not None
    assert ab.interleaving is None
    assert ab.shadow is None
    interleaved = report([searched("interleaved", 0, returned=("a",), teams=("reranked",))])
    assert interleaved.interleaving is not None
    assert interleaved.interleaving.wins == 1
    assert interleaved.ab is None
    shadow = report([searched("lexical", returned=("a",), shadow=("a",))])
    assert shadow.shadow is not None
    assert shadow.shadow.overlap_at_10 == 1.0
    assert set(shadow.arms) == {"lexical"}


def _binomial(rng, n, p):
    return sum(rng.random() < p for _ in range(n))


def test_ab_interval_covers_zero_in_aa_tests():
    """A/A: both arms click with the same probability, so the true difference is 0; about 95% of the
    intervals must contain it. 2,000 seeded simulations, so the share's own sd is about 0.005."""
    rng = random.Random(20081026)
    runs = 2000
    covered = sum(0.0 in two_proportion_interval(_binomial(rng, 400, 0.3), 400, _binomial(rng, 400, 0.3), 400)
                  for _ in range(runs))
    assert 0.93 <= covered / runs <= 0.97


def test_wilson_interval_covers_no_preference():
    """Interleaving with no true preference: each decided query is a fair coin; ~95% coverage of 0.5."""
    rng = random.Random(7)
    runs = 2000
    covered = sum(0.5 in wilson_interval(_binomial(rng, 60, 0.5), 60) for _ in range(runs))
    assert 0.93 <= covered / runs <= 0.98


clicks_of_a_search = st.frozensets(st.integers(min_value=0, max_value=len(HITS) - 1), max_size=4)


@given(st.lists(clicks_of_a_search, min_size=1, max_size=30))
def test_equal_arms_have_a_zero_difference_inside_the_interval(searches):
    records = [SearchRecord(arm, HITS, clicked) for clicked in searches for arm in ("lexical", "reranked")]
    diff = ctr_difference(records)
    assert diff is not None
    assert diff.difference == 0.0
    assert 0.0 in diff.interval
    stats = arm_stats(records)
    assert stats["lexical"].mrr == stats["reranked"].mrr


@given(st.lists(clicks_of_a_search, min_size=1, max_size=30), st.integers(min_value=0, max_value=len(HITS) - 1))
def test_one_more_click_never_lowers_the_measures(searches, position):
    records = [SearchRecord("lexical", HITS, clicked) for clicked in searches]
    unclicked = [i for i, r in enumerate(records) if not r.clicked]
    if not unclicked:
        records.append(SearchRecord("lexical", HITS))
        unclicked = [len(records) - 1]
    before = arm_stats(records)["lexical"]
    records[unclicked[0]] = SearchRecord("lexical", HITS, frozenset({position}))
    after = arm_stats(records)["lexical"]
    assert after.ctr_at_10 >= before.ctr_at_10
    assert after.mrr > before.mrr
    assert after.abandonment < before.abandonment


@given(st.integers(min_value=1, max_value=len(HITS) - 1), st.integers(min_value=0, max_value=len(HITS) - 1))
def test_an_earlier_first_click_raises_mrr(later, earlier):
    if earlier >= later:
        earlier, later = later - 1, earlier
    late = arm_stats([SearchRecord("lexical", HITS, frozenset({later}))])["lexical"].mrr
    early = arm_stats([SearchRecord("lexical", HITS, frozenset({earlier}))])["lexical"].mrr
    assert early > late


@given(st.integers(min_value=1, max_value=500), st.data())
def test_wilson_grows_with_successes(n, data):
    x = data.draw(st.integers(min_value=0, max_value=n - 1))
    lower, upper = wilson_interval(x, n), wilson_interval(x + 1, n)
    assert lower.low <= upper.low
    assert lower.high <= upper.high
    assert 0.0 <= lower.low <= x / n <= lower.high <= 1.0


@given(st.integers(min_value=1, max_value=200), st.data())
def test_wilson_narrows_with_more_queries(n, data):
    x = data.draw(st.integers(min_value=0, max_value=n))
    few, many = wilson_interval(x, n), wilson_interval(4 * x, 4 * n)
    assert many.high - many.low < few.high - few.low


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=1, max_value=300), st.data())
def test_difference_grows_with_reranked_clicks(n1, n2, data):
    x1 = data.draw(st.integers(min_value=0, max_value=n1 - 1))
    x2 = data.draw(st.integers(min_value=0, max_value=n2))
    before, after = two_proportion_interval(x1, n1, x2, n2), two_proportion_interval(x1 + 1, n1, x2, n2)
    assert (after.low + after.high) / 2 > (before.low + before.high) / 2
    assert x1 / n1 - x2 / n2 in Interval(before.low - 1e-12, before.high + 1e-12)


@given(st.integers(min_value=0, max_value=20), st.integers(min_value=1, max_value=20), st.integers(0, 5))
def test_turning_a_loss_into_a_win_raises_the_preference(wins, losses, ties):
    def stats(w, lo):
        won = [searched("interleaved", 0, returned=("a",), teams=("reranked",))] * w
        lost = [searched("interleaved", 0, returned=("a",), teams=("lexical",))] * lo
        tied = [searched("interleaved", returned=("a",), teams=("lexical",))] * ties
        return interleave_stats(won + lost + tied)

    before, after = stats(wins, losses), stats(wins + 1, losses - 1)
    assert after.preference > before.preference
    assert after.interval.low >= before.interval.low
    assert after.interval.high >= before.interval.high
    assert before.ties == after.ties == ties
