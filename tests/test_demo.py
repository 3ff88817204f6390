"""The demo's evaluation (rerank_proxy/demo_eval.py): a Cranfield slice written through a proxy on
its shipped defaults, warmed from those writes alone, measured through the proxy; real engine, real
model, the same code path `rerank-proxy demo` runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_proxy.config import load_settings, non_defaults
from rerank_proxy.demo_eval import CRANFIELD, HEADER, evaluate, load_collection, search_body, table
from tests.fixtures.proxy import run_proxy
from tests.support_wait import wait_until

pytestmark = pytest.mark.skipif(not CRANFIELD.is_dir(), reason=f"no Cranfield dataset at {CRANFIELD}")


def test_a_slice_keeps_only_queries_judged_within_it():
    collection = load_collection(CRANFIELD, max_docs=100, max_queries=10)
    kept = {d["_id"] for d in collection.docs}
    assert len(collection.docs) == 100
    assert len(collection.queries) == 10
    for item in collection.queries:
        assert item.qrels
        assert set(item.qrels) <= kept
        assert max(item.qrels.values()) > 0
    full = load_collection(CRANFIELD)
    assert (len(full.docs), len(full.queries)) == (1400, 225)


def test_only_what_is_set_differs_from_the_shipped_defaults():
    assert non_defaults(load_settings({})) == {}
    changed = non_defaults(load_settings({"UPSTREAM_URLS": "http://127.0.0.1:9", "RERANK_API_KEY": "k-123"}))
    assert changed == {"UPSTREAM_URLS": ["http://127.0.0.1:9"], "RERANK_API_KEY": "<redacted>"}


def slow_wait(predicate: Callable[[], Any], what: str, timeout_s: float) -> Any:
    # Each poll reads /_rerank/ready (an engine probe and a store count): twice a second is plenty.
    return wait_until(predicate, what, timeout_s, interval_s=0.5)


def test_the_evaluation_warms_from_writes_then_reranks_nearly_every_search(es_engine, index_name: str,
                                                                            tmp_path: Path):
    collection = load_collection(CRANFIELD, max_docs=100, max_queries=10)
    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOCAL_VECTOR_STORE": str(tmp_path / "v.sqlite")})
    assert set(non_defaults(settings)) == {"UPSTREAM_URLS", "LOCAL_VECTOR_STORE"}  # shipped defaults otherwise
    with run_proxy(settings) as proxy:
        result = evaluate(proxy.url, settings, collection, index=index_name, wait=slow_wait, warm_timeout_s=120)
        # The lexical column is the engine's own top 10 for the same DSL.
        item = collection.queries[0]
        direct = httpx.post(f"{es_engine.url}/{index_name}/_search", json=search_body(item.text), timeout=30)
        via_proxy = httpx.post(f"{proxy.url}/{index_name}/_search", timeout=30,
                               json={**search_body(item.text), "rerank": {"score_mode": "lexical"}})
        assert [h["_id"] for h in via_proxy.json()["hits"]["hits"]] == [h["_id"] for h in direct.json()["hits"]["hits"]]

    distinct_texts = len({(d["title"], d["text"]) for d in collection.docs})
    assert result.caught_up
    assert result.expected == distinct_texts
    assert result.handled >= distinct_texts
    assert result.queries == 10
    assert result.lexical.outcomes == {"lexical": 10}
    assert result.reranked.reranked_share >= 0.95, (result.reranked.outcomes, result.reranked.reasons)
    assert result.lexical.ndcg is not None
    assert result.reranked.ndcg is not None
    assert 0.0 < result.lexical.ndcg <= 1.0
    assert 0.0 < result.reranked.ndcg <= 1.0

    lines = table(result).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header == list(HEADER)
    assert set(lines[1]) <= {"|", "-", " "}
    assert row[0] == "10"
    assert row[1] == f"{result.lexical.ndcg:.4f}"
    assert row[2] == f"{result.reranked.ndcg:.4f}"
    assert row[3] == f"{result.reranked.ndcg - result.lexical.ndcg:+.4f}"
    assert row[4].endswith("%")
    assert row[5].endswith(" s")
    assert lines[3].startswith("time: writing 100 documents")
    assert "caught up" in lines[3]
    assert lines[-1].startswith("X-Rerank, lexical pass: 10 lexical; reranked pass: ")
