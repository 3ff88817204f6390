"""LangChain (`langchain-elasticsearch`): ElasticsearchStore with the BM25 strategy writes and searches;
ElasticsearchRetriever searches what the store wrote (in .venv-apps: tests/apps/scenario.py, cases
`langchain-store` and `langchain-retriever`)."""

from __future__ import annotations

import pytest

from tests.apps.support import K, assert_sent_content

pytestmark = [pytest.mark.apps, pytest.mark.integration]


def test_langchain_bm25_store_through_the_proxy(apps_proxy, es_engine, index_name, corpus, run_case):
    out, texts = run_case("langchain-store", apps_proxy, index_name)
    proxied, from_engine = out["proxied"]["docs"], out["direct"]["docs"]

    # (b) the same shape as straight from the engine
    assert len(proxied) == len(from_engine) == K
    assert {d["source"] for d in proxied} == {d["source"] for d in from_engine}
    assert {d["id"] for d in proxied} == {d["id"] for d in from_engine}
    assert [d["shape"] for d in proxied] == [d["shape"] for d in from_engine]
    assert all(d["has_content"] for d in proxied)

    # (c) what the reranker was sent for LangChain's schema (`text` beside a `metadata` object)
    assert_sent_content("langchain ElasticsearchStore (BM25)", es_engine.url, index_name, texts, corpus)


def test_langchain_retriever_through_the_proxy(apps_proxy, es_engine, index_name, corpus, run_case):
    out, texts = run_case("langchain-retriever", apps_proxy, index_name)
    proxied, from_engine = out["proxied"]["docs"], out["direct"]["docs"]

    assert len(proxied) == len(from_engine) == K
    # the default document mapper keeps the hit (its _id, _index, _score, _source) in the metadata
    assert {d["hit_id"] for d in proxied} == {d["hit_id"] for d in from_engine}
    assert [d["shape"] for d in proxied] == [d["shape"] for d in from_engine]
    assert [d["source_keys"] for d in proxied] == [d["source_keys"] for d in from_engine]

    assert_sent_content("langchain ElasticsearchRetriever", es_engine.url, index_name, texts, corpus)
