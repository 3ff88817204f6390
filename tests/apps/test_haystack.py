"""Haystack (`haystack-ai` + `elasticsearch-haystack`): the document store writes, the BM25 retriever
searches (in .venv-apps: tests/apps/scenario.py, case `haystack`)."""

from __future__ import annotations

import pytest

from tests.apps.support import K, assert_sent_content

pytestmark = [pytest.mark.apps, pytest.mark.integration]


def test_haystack_bm25_retriever_through_the_proxy(apps_proxy, es_engine, index_name, corpus, run_case):
    out, texts = run_case("haystack", apps_proxy, index_name)
    assert out["proxied"]["count"] == len(corpus)
    proxied, from_engine = out["proxied"]["docs"], out["direct"]["docs"]

    # (b) the same answer's shape as straight from the engine: fields, count, ids as a set
    assert len(proxied) == len(from_engine) == K
    assert {d["id"] for d in proxied} == {d["id"] for d in from_engine}
    assert [d["shape"] for d in proxied] == [d["shape"] for d in from_engine]
    assert all(d["has_content"] for d in proxied)

    # (c) what the reranker was sent for Haystack's schema: recorded, then it must be the content
    assert_sent_content("haystack ElasticsearchBM25Retriever", es_engine.url, index_name, texts, corpus)
