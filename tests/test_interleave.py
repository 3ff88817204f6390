"""Team-draft interleaving and its click credit (rerank_proxy/experiments/interleave.py).

What the properties state, for rankings A (lexical) and B (reranked) without repeated ids, and the
interleaving I = team_draft(A, B, q, k) with s positions of common prefix (team None):
* I has no repeated id, at most k of them, each from A or B; a position drafted by a team holds a
  hit of that team's ranking; the None positions are exactly the first s, and I[:s] == A[:s] == B[:s];
* balance: in every prefix of I, the two teams' picks differ by at most one;
* the draft guarantee: for every n, if a and b are the lexical and reranked picks among I[:n], then
  I[:n] contains A[:s+a] and B[:s+b], so in particular the top floor(n/2) of both A and B;
* when B reorders A's hits, I has min(k, len(A)) hits (the paper's stop never cuts it short);
* the same (A, B, q) gives the same I everywhere, and a larger k only extends it;
* identical rankings: I is A[:k], all of it common prefix, and every set of clicks is a tie.
"""

import math
from itertools import islice

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank_proxy.experiments.interleave import (
    Credit,
    Interleaving,
    Team,
    coin_flips,
    credit,
    credit_ids,
    team_draft,
)

hit_ids = st.lists(st.sampled_from("abcdefghijklmnop"), unique=True, max_size=12)
query_ids = st.text(max_size=20)
ks = st.integers(min_value=0, max_value=16)


@st.composite
def reordered(draw):
    """A ranking and a reordering of the same hits (what the reranker returns)."""
    a = draw(hit_ids)
    return a, draw(st.permutations(a))


def test_worked_example():
    """A = a b c d, B = b e a f, query "q1", whose first coin flips are tails, tails, heads (heads:
    lexical drafts). No common prefix (a != b).
    1. 0-0, tails: reranked drafts its best, b.              I = b
    2. 0-1: lexical, behind, drafts its best untaken, a.     I = b a
    3. 1-1, tails: reranked drafts e (b, a are taken).      I = b a e
    4. 1-2: lexical drafts c (a, b taken).                  I = b a e c
    5. 2-2, heads: lexical drafts d.                        I = b a e c d
    6. 3-2: reranked is behind, but A has nothing left: the list ends (f is not shown)."""
    assert list(islice(coin_flips("q1"), 3)) == [False, False, True]
    got = team_draft(list("abcd"), list("beaf"), "q1", k=10)
    assert got == Interleaving(("b", "a", "e", "c", "d"), ("reranked", "lexical", "reranked", "lexical", "lexical"))
    assert team_draft(list("abcd"), list("beaf"), "q1", k=3).ids == ("b", "a", "e")
    # the user clicks the 1st and 3rd results (both the reranked team's) and the 4th (lexical's)
    assert credit(got.teams, [0, 2, 3]) == Credit(lexical=1, reranked=2)
    assert credit(got.teams, [0, 2, 3]).outcome == "reranked"
    assert credit_ids(got, ["c"]).outcome == "lexical"
    assert credit_ids(got, ["e", "c"]).outcome == "tie"


def test_worked_example_with_a_common_prefix():
    """A = a b c d, B = a c b d: `a` is the common prefix (no team); then, with q1's flips:
    tails: reranked drafts c; lexical (behind) drafts b; tails: reranked drafts d; A is used up."""
    got = team_draft(list("abcd"), list("acbd"), "q1", k=10)
    assert got == Interleaving(("a", "c", "b", "d"), (None, "reranked", "lexical", "reranked"))
    assert credit(got.teams, [0]).outcome == "tie"          # a click on the agreed top hit: no vote
    assert credit(got.teams, [0, 2]).outcome == "lexical"


def test_credit_counts_a_position_once_and_ignores_positions_outside():
    teams: tuple[Team, ...] = ("lexical", "reranked", "lexical")
    assert credit(teams, [1, 1, 1, 0]) == Credit(lexical=1, reranked=1)
    assert credit(teams, [-1, 3, 99]) == Credit(lexical=0, reranked=0)
    assert credit(teams, []).outcome == "tie"
    assert credit_ids(Interleaving(("x",), ("reranked",)), ["x", "x", "y"]) == Credit(lexical=0, reranked=1)


def test_k_must_not_be_negative():
    with pytest.raises(ValueError, match="k"):
        team_draft(["a"], ["a"], "q", k=-1)


def test_empty_rankings():
    assert team_draft([], [], "q", k=10) == Interleaving((), ())
    assert team_draft(["a"], [], "q", k=10) == Interleaving((), ())
    assert team_draft(["a", "b"], ["a"], "q", k=10) == Interleaving(("a",), (None,))


@given(hit_ids, hit_ids, query_ids, ks)
def test_membership_and_no_repeats(a, b, q, k):
    got = team_draft(a, b, q, k)
    assert len(got.ids) == len(got.teams) <= k
    assert len(set(got.ids)) == len(got.ids)
    shared = got.teams.count(None)
    assert got.teams[:shared] == (None,) * shared
    assert None not in got.teams[shared:]
    assert list(got.ids[:shared]) == a[:shared] == b[:shared]
    for hit, team in zip(got.ids, got.teams):
        assert hit in (a if team == "lexical" else b if team == "reranked" else set(a) & set(b))


@given(hit_ids, hit_ids, query_ids, ks)
def test_balance_and_the_draft_guarantee(a, b, q, k):
    got = team_draft(a, b, q, k)
    for n in range(len(got.ids) + 1):
        teams = got.teams[:n]
        shared, picks_a, picks_b = teams.count(None), teams.count("lexical"), teams.count("reranked")
        assert abs(picks_a - picks_b) <= 1
        shown = set(got.ids[:n])
        assert set(a[:shared + picks_a]) <= shown
        assert set(b[:shared + picks_b]) <= shown
        assert set(a[:n // 2]) <= shown
        assert set(b[:n // 2]) <= shown


@given(reordered(), query_ids, ks)
def test_a_reordering_is_shown_whole_up_to_k(rankings, q, k):
    a, b = rankings
    got = team_draft(a, b, q, k)
    assert len(got.ids) == min(k, len(a))
    if k >= len(a):
        assert set(got.ids) == set(a)


@given(hit_ids, hit_ids, query_ids, ks, st.integers(min_value=0, max_value=8))
def test_deterministic_and_a_larger_k_extends(a, b, q, k, more):
    got = team_draft(a, b, q, k)
    assert got == team_draft(list(a), list(b), q, k)
    longer = team_draft(a, b, q, k + more)
    assert longer.ids[:len(got.ids)] == got.ids
    assert longer.teams[:len(got.teams)] == got.teams


@given(hit_ids, query_ids, ks, st.lists(st.integers(min_value=-2, max_value=20)))
def test_identical_rankings_always_tie(a, q, k, clicks):
    got = team_draft(a, list(a), q, k)
    assert list(got.ids) == a[:k]
    assert set(got.teams) <= {None}
    assert credit(got.teams, clicks).outcome == "tie"
    assert credit_ids(got, a).outcome == "tie"


@given(hit_ids, hit_ids, query_ids, ks, st.lists(st.integers(min_value=-2, max_value=20)))
def test_credit_counts_each_team_clicks(a, b, q, k, clicks):
    got = team_draft(a, b, q, k)
    score = credit(got.teams, clicks)
    shown = {p for p in clicks if 0 <= p < len(got.ids)}
    assert score.lexical == sum(got.teams[p] == "lexical" for p in shown)
    assert score.reranked == sum(got.teams[p] == "reranked" for p in shown)
    assert credit_ids(got, [got.ids[p] for p in shown]) == score


def test_the_coin_is_fair_across_queries():
    """Which team drafts first after the common prefix is a fair coin across query ids: within 4
    standard deviations of half of 20,000 (the ids are fixed, so the test is deterministic)."""
    n = 20_000
    first = [team_draft(list("abc"), list("bca"), f"query-{i}", k=1).teams[0] for i in range(n)]
    assert abs(first.count("lexical") - n / 2) <= 4 * math.sqrt(n / 4)


def test_coin_flips_continue_past_one_block():
    flips = list(islice(coin_flips("q"), 2000))
    assert len(flips) == 2000
    assert 800 <= sum(flips) <= 1200
    assert flips[:512] != flips[512:1024]
