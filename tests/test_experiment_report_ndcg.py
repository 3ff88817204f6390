"""The shadow lists scored against the console's judgments: nDCG@10 of the served and the shadow list
(report_stats.shadow_ndcg on hand-worked values), the lookup by query text in the console's store,
and the admin endpoint on a real engine's UBI indices with judgments written to the console's file."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from rerank_proxy.console.judgments import JudgedTexts, JudgmentStore, judged_texts, query_id
from rerank_proxy.console.store import ConsoleDB
from rerank_proxy.experiments import ubi_report
from rerank_proxy.experiments.query_log import MAPPING
from rerank_proxy.experiments.report_stats import SearchRecord, report, shadow_ndcg, shadow_overlap
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker
from tests.test_console import linear_ndcg
from tests.test_ubi_report import bulk

TOKEN = "experiment-ndcg-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def shadowed(served, shadow, query, arm="lexical"):
    return SearchRecord(arm, tuple(served), shadow=None if shadow is None else tuple(shadow), query=query)


# --- the statistic ---------------------------------------------------------------------------------


def test_shadow_ndcg_by_hand():
    """q1 judged {a: 1, b: 3}: served a, b, c has DCG 1 + 3/log2(3) = 2.89279 against the ideal
    3 + 1/log2(3) = 3.63093, so 0.79671; the shadow list b, a, c is the ideal order, 1.
    q2 judged {x: 1}: served y, x is 1/log2(3) = 0.63093, the shadow list x is 1.
    Means over the two searches: 0.71382 served, 1 shadow."""
    judged = {"q1": {"a": 1, "b": 3}, "q2": {"x": 1}}
    records = [shadowed("abc", "bac", "q1"), shadowed("yx", "x", "q2")]
    got = shadow_ndcg(records, judged)
    assert got.judged_searches == 2
    assert got.ndcg_at_10_served == pytest.approx((2.89279 / 3.63093 + 0.63093) / 2, abs=1e-5)
    assert got.ndcg_at_10_shadow == 1.0


def test_only_judged_shadow_searches_count():
    judged = {"judged": {"a": 1}, "only non-relevant": {"a": 0}}
    records = [
        shadowed("ba", "ab", "judged"),               # counts: served 1/log2(3), shadow 1
        shadowed("ba", "ab", "judged"),               # the same query searched again counts again
        shadowed("ab", "ba", "unjudged"),             # no judgments
        shadowed("ab", "ba", None),                   # no query text recorded
        shadowed("ab", "ba", "only non-relevant"),    # no relevant judgment: no nDCG, as in the console
        shadowed("ab", None, "judged"),               # not a shadow search
    ]
    got = shadow_ndcg(records, judged)
    assert got.judged_searches == 2
    assert got.ndcg_at_10_served == pytest.approx(1 / math.log2(3))
    assert got.ndcg_at_10_shadow == 1.0
    assert shadow_ndcg(records[2:], judged) == shadow_ndcg([], judged)
    assert shadow_ndcg([], judged).ndcg_at_10_served is None


def test_ndcg_is_cut_at_ten_and_the_ideal_uses_every_judgment():
    served = [f"d{i}" for i in range(12)]
    judged = {"q": {"d11": 2, "missing": 1}}           # d11 is 12th served; "missing" is never retrieved
    got = shadow_ndcg([shadowed(served, ["d11", "missing"], "q")], judged)
    assert got.ndcg_at_10_served == 0.0
    assert got.ndcg_at_10_shadow == 1.0
    shorter = shadow_ndcg([shadowed(served, ["d11"], "q")], judged)
    assert shorter.ndcg_at_10_shadow == pytest.approx(2 / (2 + 1 / math.log2(3)))


def test_the_report_carries_the_pair_beside_the_overlap():
    records = [shadowed("abcdefghij", "jihgfedcba", "q"), shadowed("abcdefghij", "klmnopqrst", "other")]
    got = report(records, {"q": {"j": 1}})
    assert got.shadow is not None
    assert (got.shadow.searches, got.shadow.overlap_at_10) == (2, 0.5)
    assert got.shadow.judged_searches == 1
    assert got.shadow.ndcg_at_10_served == pytest.approx(1 / math.log2(11))
    assert got.shadow.ndcg_at_10_shadow == 1.0
    unjudged = shadow_overlap(records)
    assert unjudged is not None
    assert (unjudged.judged_searches, unjudged.ndcg_at_10_served, unjudged.ndcg_at_10_shadow) == (0, None, None)


def test_the_json_counts_ambiguous_searches_only_with_a_shadow_part():
    with_shadow = ubi_report.as_json(report([shadowed("a", "a", "q")]), 1, ambiguous=1)
    assert with_shadow["shadow"]["ambiguous_searches"] == 1
    assert with_shadow["shadow"]["ndcg_at_10_served"] is None
    assert ubi_report.as_json(report([SearchRecord("lexical", ("a",))]), 1)["shadow"] is None


def test_query_texts_are_collapsed_as_the_console_keys_them():
    record = ubi_report._record({"query_id": "q", "arm": "lexical", "query_response_object_ids": ["a"],
                                 "shadow_object_ids": ["a"], "user_query": "  jet \t engine "}, {})
    assert record is not None
    assert record.query == "jet engine"
    blank = ubi_report._record({"query_id": "q", "arm": "lexical", "user_query": "  "}, {})
    assert blank is not None
    assert blank.query is None


# --- the lookup in the console's store -------------------------------------------------------------


def judge(path: Path, judgments: list[tuple[str, str, str, int]]) -> None:
    """(index, query text, doc id, grade) written to the console's database, as the console writes them."""
    db = ConsoleDB(path, 1 << 30)
    try:
        for index, text, doc, grade in judgments:
            db.set(query_id(index, text), index, text, doc, grade)
    finally:
        db.close()


JUDGMENTS = [("books", "jet engine noise", "d3", 2), ("books", "jet engine noise", "d1", 1),
             ("books", "wing flutter", "d5", 1), ("papers", "wing flutter", "d4", 1)]


async def test_texts_are_found_in_the_one_index_that_judged_them(tmp_path):
    path = tmp_path / "judgments.sqlite3"
    judge(path, JUDGMENTS)
    store = JudgmentStore(path)
    try:
        anywhere = await store.by_texts(["jet engine noise", "wing flutter", "never judged"])
        books = await store.by_texts(["jet engine noise", "wing flutter", "never judged"], "books")
        papers = await store.by_texts(["wing flutter"], "papers")
    finally:
        await store.aclose()
    assert anywhere == JudgedTexts({"jet engine noise": {"d1": 1, "d3": 2}}, frozenset({"wing flutter"}))
    assert books == JudgedTexts({"jet engine noise": {"d1": 1, "d3": 2}, "wing flutter": {"d5": 1}})
    assert papers == JudgedTexts({"wing flutter": {"d4": 1}})


async def test_no_judgments_file_is_no_judgments_and_no_new_file(tmp_path):
    path = tmp_path / "never-written.sqlite3"
    settings = proxy_settings("http://127.0.0.1:9").with_overrides(console_judgments_file=str(path))
    assert await judged_texts(settings, ["jet engine noise"]) == JudgedTexts()
    assert not path.exists()


# --- the endpoint, on a real engine -----------------------------------------------------------------

SHADOW_QUERIES = [  # (query_id, user_query, served, shadow): the shadow experiment serves lexical
    ("s1", "jet  engine noise", ["d1", "d2", "d3"], ["d3", "d1", "d2"]),
    ("s2", "wing flutter", ["d4", "d5"], ["d5", "d4"]),
    ("s3", "unjudged query", ["d1", "d2"], ["d2", "d1"]),
]


def write_shadow_log(url: str, queries: str, events: str) -> None:
    httpx.put(f"{url}/{queries}", json={"mappings": MAPPING}, timeout=30).raise_for_status()
    docs = [{"query_id": q, "arm": "lexical", "user_query": text, "query_response_object_ids": served,
             "shadow_object_ids": shadow} for q, text, served, shadow in SHADOW_QUERIES]
    docs.append({"query_id": "plain", "arm": "lexical", "user_query": "jet engine noise",
                 "query_response_object_ids": ["d2"]})  # no shadow list: not in the nDCG
    bulk(url, queries, docs)
    bulk(url, events, [{"query_id": "s1", "action_name": "click", "event_attributes": {"object": {"object_id": "d3"}}}])


def shadow_of(proxy_url: str, events: str, **params: str) -> dict:
    answer = httpx.get(f"{proxy_url}/_rerank/admin/experiment", params={"events": events, **params},
                       headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_endpoint_scores_judged_shadow_searches(engine, index_name, tmp_path):
    queries, events = f"{index_name}-queries", f"{index_name}-events"
    write_shadow_log(engine.url, queries, events)
    path = tmp_path / "judgments.sqlite3"
    judge(path, JUDGMENTS)
    settings = proxy_settings(engine.url, ADMIN_TOKEN=TOKEN, UBI_QUERIES_INDEX=queries, RERANK_EXPERIMENT="shadow",
                              CONSOLE_JUDGMENTS_FILE=str(path))
    jet = {"d3": 2, "d1": 1}
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        anywhere = shadow_of(proxy.url, events)
        books = shadow_of(proxy.url, events, index="books")
        papers = shadow_of(proxy.url, events, index="papers")
        refused = httpx.get(f"{proxy.url}/_rerank/admin/experiment", params={"events": events, "index": "a,b"},
                            headers=AUTH, timeout=30)

    assert anywhere["experiment"] == "shadow"
    assert anywhere["searches"] == 4
    shadow = anywhere["shadow"]
    assert (shadow["searches"], shadow["overlap_at_10"]) == (3, 1.0)
    # by text alone: "wing flutter" is judged in two indices, so only s1 is scored
    assert (shadow["judged_searches"], shadow["ambiguous_searches"]) == (1, 1)
    assert shadow["ndcg_at_10_served"] == pytest.approx(linear_ndcg(["d1", "d2", "d3"], jet))
    assert shadow["ndcg_at_10_shadow"] == pytest.approx(linear_ndcg(["d3", "d1", "d2"], jet))

    assert (books["shadow"]["judged_searches"], books["shadow"]["ambiguous_searches"]) == (2, 0)
    assert books["shadow"]["ndcg_at_10_served"] == pytest.approx(
        (linear_ndcg(["d1", "d2", "d3"], jet) + linear_ndcg(["d4", "d5"], {"d5": 1})) / 2)
    assert books["shadow"]["ndcg_at_10_shadow"] == pytest.approx(1.0)
    assert papers["shadow"]["judged_searches"] == 1
    assert papers["shadow"]["ndcg_at_10_served"] == pytest.approx(1.0)
    assert papers["shadow"]["ndcg_at_10_shadow"] == pytest.approx(linear_ndcg(["d5", "d4"], {"d4": 1}))
    assert refused.status_code == 400


def test_without_judgments_the_pair_is_null(engine, index_name, tmp_path):
    queries, events = f"{index_name}-queries", f"{index_name}-events"
    write_shadow_log(engine.url, queries, events)
    path = tmp_path / "none.sqlite3"
    settings = proxy_settings(engine.url, ADMIN_TOKEN=TOKEN, UBI_QUERIES_INDEX=queries, RERANK_EXPERIMENT="ab:12.5",
                              CONSOLE_JUDGMENTS_FILE=str(path))
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        got = shadow_of(proxy.url, events)
    assert got["experiment"] == "ab:12.5"
    assert (got["shadow"]["judged_searches"], got["shadow"]["ndcg_at_10_served"],
            got["shadow"]["ndcg_at_10_shadow"]) == (0, None, None)
    assert not path.exists(), "reading the report must not create the console's store"
