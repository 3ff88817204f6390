"""Haystack (`haystack-ai` + `elasticsearch-haystack`): the document store writes, the BM25 retriever searches."""

from __future__ import annotations

from typing import Any

import pytest
from haystack import Document
from haystack_integrations.components.retrievers.elasticsearch import ElasticsearchBM25Retriever
from haystack_integrations.document_stores.elasticsearch import ElasticsearchDocumentStore

from tests.apps.support import QUERY, K, assert_texts_are_content, measure

pytestmark = [pytest.mark.apps, pytest.mark.integration]


def shape(document: Document) -> tuple[Any, ...]:
    """A Haystack document's fields (those set) and meta keys: what an app reads off it."""
    fields = sorted(name for name, value in document.to_dict(flatten=False).items() if value is not None)
    return tuple(fields), tuple(sorted(document.meta))


def test_haystack_bm25_retriever_through_the_proxy(apps_proxy, es_engine, index_name, corpus):
    via_proxy = ElasticsearchDocumentStore(hosts=apps_proxy.url, index=index_name)
    documents = [Document(id=f"cran-{paper.id}", content=paper.text, meta=paper.metadata) for paper in corpus]
    assert via_proxy.write_documents(documents, refresh=True) == len(corpus)
    assert via_proxy.count_documents() == len(corpus)

    mark = apps_proxy.mark()
    proxied = ElasticsearchBM25Retriever(document_store=via_proxy, top_k=K).run(query=QUERY)["documents"]
    # (a) reranked: the access line says so, and the reranker was sent the window's hits
    apps_proxy.assert_reranked(index_name)
    texts = apps_proxy.texts_since(mark)
    assert len(texts) == K

    # (b) the same answer's shape as straight from the engine: fields, count, ids as a set
    direct = ElasticsearchDocumentStore(hosts=es_engine.url, index=index_name)
    from_engine = ElasticsearchBM25Retriever(document_store=direct, top_k=K).run(query=QUERY)["documents"]
    assert len(proxied) == len(from_engine) == K
    assert {d.id for d in proxied} == {d.id for d in from_engine}
    assert [shape(d) for d in proxied] == [shape(d) for d in from_engine]
    assert all(d.content for d in proxied)

    # (c) what the reranker was sent for Haystack's schema: recorded, then it must be the content
    measure("haystack ElasticsearchBM25Retriever", es_engine.url, index_name, texts, corpus)
    assert_texts_are_content(texts, corpus)
