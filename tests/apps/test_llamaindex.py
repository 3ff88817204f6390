"""LlamaIndex (`llama-index-vector-stores-elasticsearch`): the store with the BM25 strategy adds nodes
and answers a text-search query (in .venv-apps: tests/apps/scenario.py, case `llamaindex`)."""

from __future__ import annotations

import pytest

from tests.apps.support import K, assert_sent_content

pytestmark = [pytest.mark.apps, pytest.mark.integration]


def test_llamaindex_text_search_through_the_proxy(apps_proxy, es_engine, index_name, corpus, run_case):
    out, texts = run_case("llamaindex", apps_proxy, index_name)
    proxied, from_engine = out["proxied"], out["direct"]

    # (b) the same shape as straight from the engine
    assert len(proxied["docs"]) == len(from_engine["docs"]) == K
    assert set(proxied["ids"]) == set(from_engine["ids"])
    assert {n["id"] for n in proxied["docs"]} == set(from_engine["ids"])
    assert [n["shape"] for n in proxied["docs"]] == [n["shape"] for n in from_engine["docs"]]
    assert all(n["has_content"] for n in proxied["docs"])
    assert proxied["similarities"] == K

    # (c) what the reranker was sent for LlamaIndex's schema (`content`, the node as JSON in
    # `metadata._node_content`)
    assert_sent_content("llamaindex ElasticsearchStore (BM25 text search)", es_engine.url, index_name, texts, corpus)
