"""The experiment report read from a real engine's UBI indices: queries joined with click events."""

from __future__ import annotations

import httpx
import orjson
import pytest

from rerank_proxy.engine import EnginePool
from rerank_proxy.experiments import ubi_report
from rerank_proxy.experiments.query_log import MAPPING
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker

pytestmark = pytest.mark.integration

QUERIES = [  # (query_id, arm, returned ids, teams)
    ("q1", "reranked", ["a", "b", "c"], None),
    ("q2", "reranked", ["d", "e"], None),
    ("q3", "lexical", ["a", "b", "c"], None),
    ("q4", "lexical", ["x"], None),
    ("q5", "interleaved", ["a", "b", "c", "d"], [None, "reranked", "lexical", "reranked"]),
    ("q6", "interleaved", ["e", "f"], ["lexical", "reranked"]),
    ("q7", "interleaved", ["g", "h"], ["reranked", "lexical"]),
]
EVENTS = [  # (query_id, action, object id): the app's events, written as it writes anything
    ("q1", "click", "b"), ("q3", "click", "c"), ("q4", "click", "x"), ("q5", "click", "b"),
    ("q6", "click", "e"), ("q2", "impression", "d"), ("q7", "hover", "g"), ("unknown", "click", "a"),
    ("q1", "click", "zz"),  # a click on a hit the search did not return: dropped
]


def bulk(url: str, index: str, docs: list[dict]) -> None:
    lines = b"".join(orjson.dumps({"index": {}}) + b"\n" + orjson.dumps(d) + b"\n" for d in docs)
    answer = httpx.post(f"{url}/{index}/_bulk?refresh=true", content=lines, timeout=30,
                        headers={"content-type": "application/x-ndjson"})
    assert answer.status_code == 200, answer.text
    assert not answer.json()["errors"], answer.text[:500]


def write_log(url: str, queries: str, events: str) -> None:
    httpx.put(f"{url}/{queries}", json={"mappings": MAPPING}, timeout=30).raise_for_status()
    bulk(url, queries, [{"query_id": q, "arm": arm, "query_response_object_ids": ids,
                         **({"object_teams": teams} if teams else {})} for q, arm, ids, teams in QUERIES])
    # no mapping given: dynamic mapping makes every string text with a .keyword sub-field
    bulk(url, events, [{"query_id": q, "action_name": action, "event_attributes": {"object": {"object_id": o}},
                        "position": {"ordinal": 1}} for q, action, o in EVENTS])


@pytest.mark.parametrize("page", [ubi_report.PAGE, 2])  # 2: every read goes over several pages
async def test_the_report_joins_queries_and_clicks_by_query_id(engine, index_name, page, monkeypatch):
    monkeypatch.setattr(ubi_report, "PAGE", page)
    queries, events = f"{index_name}-queries", f"{index_name}-events"
    write_log(engine.url, queries, events)
    pool = EnginePool(proxy_settings(engine.url))
    try:
        got = await ubi_report.ubi_report(pool, queries, events)
    finally:
        pool.close()
    assert got["searches"] == 7
    reranked, lexical = got["arms"]["reranked"], got["arms"]["lexical"]
    assert (reranked["searches"], reranked["ctr_at_10"], reranked["abandonment"]) == (2, 0.5, 0.5)
    assert reranked["mrr"] == 0.25
    assert (lexical["searches"], lexical["ctr_at_10"], lexical["abandonment"]) == (2, 1.0, 0.0)
    assert lexical["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["interleaving"]["wins"] == 1      # q5: the click fell on a reranked pick
    assert got["interleaving"]["losses"] == 1    # q6: on a lexical pick
    assert got["interleaving"]["ties"] == 1      # q7: a hover is no click
    assert got["ab"]["difference"] == pytest.approx(-0.5)
    assert got["shadow"] is None


async def test_a_missing_index_is_a_clear_error(engine, index_name):
    pool = EnginePool(proxy_settings(engine.url))
    try:
        with pytest.raises(ubi_report.ReportUnavailable, match="404"):
            await ubi_report.ubi_report(pool, f"{index_name}-none", f"{index_name}-none-either")
    finally:
        pool.close()


def test_the_admin_endpoint_answers_the_report(engine, index_name):
    queries, events = f"{index_name}-queries", f"{index_name}-events"
    write_log(engine.url, queries, events)
    settings = proxy_settings(engine.url, ADMIN_TOKEN="report-token", UBI_QUERIES_INDEX=queries)
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        url = f"{proxy.url}/_rerank/admin/experiment"
        assert httpx.get(url, params={"events": events}, timeout=30).status_code == 401
        answer = httpx.get(url, params={"events": events}, timeout=30,
                           headers={"Authorization": "Bearer report-token"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["searches"] == 7
        assert answer.json()["interleaving"]["wins"] == 1
        missing = httpx.get(url, params={"events": f"{index_name}-none"}, timeout=30,
                            headers={"Authorization": "Bearer report-token"})
        assert missing.status_code == 502
        assert missing.json()["error"]["type"] == "proxy_report_exception"
