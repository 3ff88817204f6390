"""The demo's evaluation (rerank_proxy/demo_eval.py): a Cranfield slice written through a proxy on
its shipped defaults, warmed from those writes alone, measured through the proxy; real engine, real
model, the same code path `rerank-proxy demo` runs. And how the demo ends: the lines that say the
engine is still running and how to stop it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_proxy import demo
from rerank_proxy.config import load_settings, non_defaults
from rerank_proxy.demo_corpus import DEMO_INDEX, DEMO_QUERIES
from rerank_proxy.demo_eval import CRANFIELD, HEADER, evaluate, load_collection, search_body, table
from rerank_proxy.local_engines.runner import DEFAULT_PORTS, EngineInfo
from tests.fixtures.proxy import run_proxy
from tests.support_wait import wait_until

needs_cranfield = pytest.mark.skipif(not CRANFIELD.is_dir(), reason=f"no Cranfield dataset at {CRANFIELD}")


@needs_cranfield
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


@needs_cranfield
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


def _engine(port: int, reused: bool) -> EngineInfo:
    return EngineInfo(kind="opensearch", version="2.19.6", port=port, nodes=1, pids=[1], start_times=[0],
                      heap="1g", java_home="", home="", run_dir="", reused=reused)


def test_the_closing_lines_name_the_running_engine_and_its_stop_command():
    default = DEFAULT_PORTS["opensearch"]
    still, proxy, stop = demo.closing_lines(_engine(default, reused=False))
    assert still.startswith(f"still running: opensearch 2.19.6 at http://127.0.0.1:{default} (was started by")
    assert proxy.startswith("not running: the proxy")
    assert stop.startswith("stop the engine (and delete its data): rerank-proxy engine down --engine opensearch ")
    # On another port, `--engine KIND` would aim at the default port: the command names the port.
    *_, stop = demo.closing_lines(_engine(19301, reused=True))
    assert "rerank-proxy engine down --port 19301 " in stop


def test_the_no_eval_demo_ends_saying_what_still_runs(es_engine, capsys: pytest.CaptureFixture[str]):
    # The --no-eval path end to end on the test engine (reused, so no start): the sample corpus, the
    # in-process proxy with the local model, the side-by-side queries (one, to keep it short).
    args = argparse.ArgumentParser()
    demo.add_arguments(args)
    try:
        code = demo.run(args.parse_args(["--no-eval", "--port", str(es_engine.port), "--query", DEMO_QUERIES[0]]))
    finally:
        httpx.delete(f"{es_engine.url}/{DEMO_INDEX}", timeout=30)
    out = capsys.readouterr().out
    assert code == 0
    assert "[5/5] searching through the proxy" in out
    last = out.rstrip().splitlines()[-3:]
    assert last[0].startswith(f"still running: elasticsearch {es_engine.version} at {es_engine.url} (was already")
    assert last[1].startswith("not running: the proxy")
    assert last[2].startswith("stop the engine (and delete its data): "
                              f"rerank-proxy engine down --port {es_engine.port} ")
