"""What each experiment arm serves, in pure logic: the interleaved order and its teams, the page's
teams, the unit a search is assigned by, and the shadow scorer's bound."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank_proxy.experiments.arms import unit_of
from rerank_proxy.experiments.interleave import Team, team_draft
from rerank_proxy.experiments.serving import ShadowScorer, interleaved_order, page_teams
from rerank_proxy.search.merge import merge
from rerank_proxy.search.plan import Plan


@given(st.permutations(list(range(12))), st.text(min_size=1, max_size=20))
def test_the_interleaved_order_keeps_every_hit_once_and_is_the_team_draft(reranked, query_id):
    order, teams = interleaved_order(reranked, query_id)
    assert sorted(order) == list(range(12))
    drafted = team_draft([str(i) for i in range(12)], [str(i) for i in reranked], query_id, 12)
    assert order == [int(i) for i in drafted.ids]
    assert teams == drafted.teams
    assert interleaved_order(reranked, query_id) == (order, teams)  # the same query id, the same list


def test_identical_rankings_interleave_to_that_ranking_with_no_team():
    order, teams = interleaved_order([0, 1, 2, 3], "q")
    assert order == [0, 1, 2, 3]
    assert teams == (None, None, None, None)


def test_each_team_picks_its_own_best_first():
    order, teams = interleaved_order([3, 2, 1, 0], "q-any")
    first_two = dict(zip(teams[:2], order[:2], strict=True))
    assert first_two == {"lexical": 0, "reranked": 3}


def test_page_teams_cut_the_page_and_past_the_window_is_no_team():
    teams: tuple[Team | None, ...] = ("lexical", "reranked", None, "reranked")
    assert page_teams(teams, 0, 2) == ["lexical", "reranked"]
    assert page_teams(teams, 2, 4) == [None, "reranked", None, None]
    assert page_teams(teams, 0, 0) == []


@pytest.mark.parametrize(("unit", "client_id", "headers", "address", "expected"), [
    ("api_key", "c-1", {"authorization": "ApiKey abc"}, "10.0.0.1", "client:c-1"),
    ("api_key", None, {"authorization": "ApiKey abc"}, "10.0.0.1", "key:ApiKey abc"),
    ("api_key", None, {}, "10.0.0.1", "addr:10.0.0.1"),
    ("address", None, {"authorization": "ApiKey abc"}, "10.0.0.1", "addr:10.0.0.1"),
    ("forwarded_for", None, {"x-forwarded-for": "192.0.2.7, 10.0.0.9"}, "10.0.0.1", "addr:192.0.2.7"),
    ("forwarded_for", None, {}, "10.0.0.1", "addr:10.0.0.1"),
    ("forwarded_for", "c-2", {"x-forwarded-for": "192.0.2.7"}, "10.0.0.1", "client:c-2"),
    ("address", None, {}, None, None),
])
def test_the_unit_is_the_client_id_else_what_the_setting_names(unit, client_id, headers, address, expected):
    assert unit_of(unit, client_id, headers, address) == expected


def _plan(window: int, page_from: int = 0, size: int = 10) -> Plan:
    from rerank_proxy.search.plan import plan_search
    from tests.fixtures.proxy import proxy_settings

    decided = plan_search("idx", {}, {"query": {"match": {"t": "x"}}, "from": page_from, "size": size}, {},
                          proxy_settings("http://127.0.0.1:1", RERANK_WINDOW=str(window)))
    assert isinstance(decided, Plan)
    return decided


def test_merge_serves_an_explicit_order_with_each_hits_own_score():
    response = {"hits": {"max_score": 4.0, "hits": [{"_id": str(i), "_score": 4.0 - i} for i in range(4)]}}
    merged = merge(response, _plan(4), [0.1, 0.9, 0.5, 0.3], order=[1, 0, 2, 3])
    assert [h["_id"] for h in merged["hits"]["hits"]] == ["1", "0", "2", "3"]
    assert [h["_score"] for h in merged["hits"]["hits"]] == [0.9, 0.1, 0.5, 0.3]
    assert merged["hits"]["max_score"] == 0.9


async def test_the_shadow_scorer_runs_at_most_its_slots_and_counts_the_rest():
    shadow = ShadowScorer(2)
    release = asyncio.Event()
    ran: list[int] = []

    async def job(n: int) -> float:
        ran.append(n)
        await release.wait()
        return 0.5

    assert [shadow.start(job(n)) for n in range(4)] == [True, True, False, False]
    assert shadow.running == 2
    release.set()
    await shadow.idle()
    assert sorted(ran) == [0, 1]  # a skipped job never ran
    assert shadow.counts == {"scored": 2, "skipped": 2, "failed": 0}
    assert shadow.rerank_seconds == 1.0


async def test_a_failing_shadow_job_is_counted_never_raised():
    shadow = ShadowScorer(1)

    async def boom() -> float:
        raise RuntimeError("provider exploded")

    async def cold() -> None:
        return None

    for job in (boom(), cold()):
        assert shadow.start(job)
        await shadow.idle()
    assert shadow.counts["failed"] == 2


async def test_closing_cancels_the_running_shadow_work():
    shadow = ShadowScorer(1)
    cancelled, started = asyncio.Event(), asyncio.Event()

    async def forever() -> float:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return 0.0

    shadow.start(forever())
    await started.wait()
    await shadow.aclose()
    assert cancelled.is_set()
    assert shadow.running == 0
