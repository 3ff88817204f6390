"""LangChain (`langchain-elasticsearch`): ElasticsearchStore with the BM25 strategy writes and searches;
ElasticsearchRetriever searches what the store wrote."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_elasticsearch import ElasticsearchRetriever, ElasticsearchStore

from tests.apps.support import QUERY, K, Paper, assert_texts_are_content, measure

pytestmark = [pytest.mark.apps, pytest.mark.integration]


def bm25_store(url: str, index: str) -> ElasticsearchStore:
    return ElasticsearchStore(index_name=index, es_url=url, strategy=ElasticsearchStore.BM25RetrievalStrategy())


def write(store: ElasticsearchStore, corpus: list[Paper]) -> None:
    ids = store.add_texts([paper.text for paper in corpus], metadatas=[paper.metadata for paper in corpus],
                          ids=[f"cran-{paper.id}" for paper in corpus], refresh_indices=True)
    assert len(ids) == len(corpus)


def shape(document: Document) -> tuple[Any, ...]:
    """A LangChain document's fields (those set) and metadata keys."""
    fields = sorted(name for name, value in document.model_dump().items() if value not in (None, "", {}))
    return tuple(fields), tuple(sorted(document.metadata))


def test_langchain_bm25_store_through_the_proxy(apps_proxy, es_engine, index_name, corpus):
    via_proxy = bm25_store(apps_proxy.url, index_name)
    write(via_proxy, corpus)

    mark = apps_proxy.mark()
    proxied = via_proxy.similarity_search(QUERY, k=K)
    # (a) reranked
    apps_proxy.assert_reranked(index_name)
    texts = apps_proxy.texts_since(mark)
    assert len(texts) == K

    # (b) the same shape as straight from the engine
    from_engine = bm25_store(es_engine.url, index_name).similarity_search(QUERY, k=K)
    assert len(proxied) == len(from_engine) == K
    assert {d.metadata["source"] for d in proxied} == {d.metadata["source"] for d in from_engine}
    assert {d.id for d in proxied} == {d.id for d in from_engine}
    assert [shape(d) for d in proxied] == [shape(d) for d in from_engine]
    assert all(d.page_content for d in proxied)

    # (c) what the reranker was sent for LangChain's schema (`text` beside a `metadata` object)
    measure("langchain ElasticsearchStore (BM25)", es_engine.url, index_name, texts, corpus)
    assert_texts_are_content(texts, corpus)


def test_langchain_retriever_through_the_proxy(apps_proxy, es_engine, index_name, corpus):
    write(bm25_store(apps_proxy.url, index_name), corpus)

    def retriever(url: str) -> ElasticsearchRetriever:
        # es_url is a parameter of its own __init__; mypy reads the pydantic fields' signature instead
        return ElasticsearchRetriever(  # type: ignore[call-arg]
            index_name=index_name, content_field="text", es_url=url,
            body_func=lambda query: {"query": {"match": {"text": query}}, "size": K})

    mark = apps_proxy.mark()
    proxied = retriever(apps_proxy.url).invoke(QUERY)
    apps_proxy.assert_reranked(index_name)
    texts = apps_proxy.texts_since(mark)
    assert len(texts) == K

    from_engine = retriever(es_engine.url).invoke(QUERY)
    assert len(proxied) == len(from_engine) == K
    # the default document mapper keeps the hit (its _id, _index, _score, _source) in the metadata
    assert {d.metadata["_id"] for d in proxied} == {d.metadata["_id"] for d in from_engine}
    assert [shape(d) for d in proxied] == [shape(d) for d in from_engine]
    assert [sorted(d.metadata["_source"]) for d in proxied] == [sorted(d.metadata["_source"]) for d in from_engine]

    measure("langchain ElasticsearchRetriever", es_engine.url, index_name, texts, corpus)
    assert_texts_are_content(texts, corpus)
