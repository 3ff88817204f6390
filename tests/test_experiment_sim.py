"""The simulated user's pure parts: the cascade click model, the search plan, the click events,
and how the demo reads a report (table, verdict, interval plot)."""

from __future__ import annotations

import random

import pytest

from rerank_proxy.console.beir import EvalQuery
from rerank_proxy.demo_experiment import MODES, ModeResult, interval_plot, table, verdict
from rerank_proxy.experiment_sim import ClickModel, SimulatedRun, click_events, plan_searches, search_body


def test_a_user_who_always_clicks_and_never_stops_clicks_every_hit_to_the_depth():
    model = ClickModel(attract=(1.0,) * 5, satisfy=(0.0,) * 5, persistence=1.0, depth=3)
    assert model.clicks(["a", "b", "c", "d"], {}, random.Random(1)) == [0, 1, 2]


def test_a_satisfying_click_ends_the_scan():
    model = ClickModel(attract=(0.0, 0.0, 0.0, 0.0, 1.0), satisfy=(0.0, 0.0, 0.0, 0.0, 1.0), persistence=1.0)
    assert model.clicks(["x", "best", "also"], {"best": 4, "also": 4}, random.Random(1)) == [1]


def test_an_impatient_user_never_reaches_the_second_hit():
    model = ClickModel(attract=(1.0,) * 5, satisfy=(0.0,) * 5, persistence=0.0)
    assert model.clicks(["a", "b"], {}, random.Random(1)) == [0]


def test_relevant_hits_ranked_higher_get_more_clicks():
    """The premise of the experiment: the model rewards a ranking that puts the relevant hit first."""
    model, qrels = ClickModel(), {"rel": 4}
    good = sum(bool(model.clicks(["rel", *"abcdefghi"], qrels, random.Random(n))) for n in range(2000))
    bad = sum(bool(model.clicks([*"abcdefghi", "rel"], qrels, random.Random(n))) for n in range(2000))
    assert good > 1.5 * bad


def test_the_same_seed_gives_the_same_clicks():
    served = [str(i) for i in range(10)]
    qrels = {"2": 3, "5": 4}
    first = [ClickModel().clicks(served, qrels, random.Random(9)) for _ in range(5)]
    assert first == [ClickModel().clicks(served, qrels, random.Random(9)) for _ in range(5)]


def test_the_plan_draws_users_and_queries_from_the_seed():
    queries = [EvalQuery(str(n), f"q {n}", {"d": 1}) for n in range(5)]
    plan = plan_searches(queries, 3, 50, random.Random(4))
    assert len(plan) == 50
    assert {p.client_id for p in plan} <= {"sim-user-0", "sim-user-1", "sim-user-2"}
    assert plan == plan_searches(queries, 3, 50, random.Random(4))


def test_click_events_are_ubi_clicks_on_the_served_ids():
    from datetime import UTC, datetime

    events = click_events("q-1", "u-1", ["a", "b", "c"], [0, 2], datetime(2026, 12, 7, tzinfo=UTC))
    assert [e["event_attributes"]["object"]["object_id"] for e in events] == ["a", "c"]
    assert [e["event_attributes"]["position"]["ordinal"] for e in events] == [0, 2]
    assert {e["action_name"] for e in events} == {"click"}
    assert events[0]["timestamp"] == "2026-12-07T00:00:00.000Z"


def test_an_aa_search_asks_for_the_lexical_order():
    body = search_body(EvalQuery("1", "jet"), "u", "q", lexical_only=True)
    assert body["rerank"] == {"score_mode": "lexical"}
    assert body["ext"]["ubi"] == {"query_id": "q", "client_id": "u", "user_query": "jet"}
    assert "rerank" not in search_body(EvalQuery("1", "jet"), "u", "q", lexical_only=False)


def _result(mode_name: str, report: dict) -> ModeResult:
    mode = next(m for m in MODES if m.name == mode_name)
    return ModeResult(mode, SimulatedRun(100, 40, {}, 1.0, report))


AB_AHEAD = {"arms": {"lexical": {"ctr_at_10": 0.4, "mrr": 0.2}, "reranked": {"ctr_at_10": 0.5, "mrr": 0.3}},
            "ab": {"difference": 0.1, "interval": {"low": 0.04, "high": 0.16}}}
AB_NONE = {"arms": {"lexical": {"ctr_at_10": 0.4, "mrr": 0.2}, "reranked": {"ctr_at_10": 0.41, "mrr": 0.2}},
           "ab": {"difference": 0.01, "interval": {"low": -0.05, "high": 0.07}}}
INTERLEAVE_AHEAD = {"arms": {"interleaved": {"ctr_at_10": 0.5, "mrr": 0.3}},
                    "interleaving": {"wins": 60, "losses": 30, "ties": 10, "preference": 0.667,
                                     "interval": {"low": 0.56, "high": 0.76}}}
ALL_TIES = {"arms": {"interleaved": {"ctr_at_10": 0.5, "mrr": 0.3}},
            "interleaving": {"wins": 0, "losses": 0, "ties": 100, "preference": None, "interval": None}}


@pytest.mark.parametrize(("name", "report", "expected"), [
    ("A/B", AB_AHEAD, "reranked ahead"),
    ("A/A", AB_NONE, "no difference"),
    ("A/B", {**AB_AHEAD, "ab": {"difference": -0.1, "interval": {"low": -0.16, "high": -0.04}}}, "lexical ahead"),
    ("interleaving", INTERLEAVE_AHEAD, "reranked ahead"),
    ("A/A interleaving", ALL_TIES, "no difference (no decided query)"),
])
def test_the_verdict_reads_the_interval_against_no_difference(name, report, expected):
    assert verdict(_result(name, report)) == expected


def test_the_table_and_plot_show_each_run():
    results = [_result("A/B", AB_AHEAD), _result("interleaving", INTERLEAVE_AHEAD), _result("A/A", AB_NONE),
               _result("A/A interleaving", ALL_TIES)]
    shown = table(results)
    assert "| A/B " in shown
    assert "+0.100 [+0.040, +0.160]" in shown
    assert "0.667 [0.560, 0.760]" in shown
    assert "60/30/10" in shown
    plot = interval_plot(results).splitlines()
    assert len(plot) == 4
    ab_line = plot[0]
    assert ab_line.index("|") < ab_line.index("=")  # the A/B interval lies right of zero
    assert "=" not in plot[3]                       # all ties: no interval to draw
