"""LlamaIndex (`llama-index-vector-stores-elasticsearch`): the store with the BM25 strategy adds nodes
and answers a text-search query."""

from __future__ import annotations

from typing import Any

import pytest
from elasticsearch.helpers.vectorstore import AsyncBM25Strategy
from llama_index.core.schema import BaseNode, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode
from llama_index.vector_stores.elasticsearch import ElasticsearchStore

from tests.apps.support import QUERY, K, assert_texts_are_content, measure

pytestmark = [pytest.mark.apps, pytest.mark.integration]


def shape(node: BaseNode) -> tuple[Any, ...]:
    """A node's class, its fields (those set) and metadata keys."""
    fields = sorted(name for name, value in node.model_dump().items() if value not in (None, "", {}, []))
    return type(node).__name__, tuple(fields), tuple(sorted(node.metadata))


async def text_search(url: str, index: str) -> Any:
    store = ElasticsearchStore(index_name=index, es_url=url, retrieval_strategy=AsyncBM25Strategy())
    try:
        return await store.aquery(VectorStoreQuery(query_str=QUERY, similarity_top_k=K,
                                                   mode=VectorStoreQueryMode.TEXT_SEARCH))
    finally:
        await store.client.close()


async def test_llamaindex_text_search_through_the_proxy(apps_proxy, es_engine, index_name, corpus, monkeypatch):
    # The store's constructor calls nest_asyncio.apply(), which patches asyncio for the whole pytest
    # process; this test uses the store's async API, which needs no nested loops.
    monkeypatch.setattr("nest_asyncio.apply", lambda *args, **kwargs: None)
    store = ElasticsearchStore(index_name=index_name, es_url=apps_proxy.url, retrieval_strategy=AsyncBM25Strategy())
    try:
        nodes: list[BaseNode] = [TextNode(id_=f"cran-{paper.id}", text=paper.text, metadata=paper.metadata)
                                 for paper in corpus]
        assert len(await store.async_add(nodes)) == len(corpus)   # bulk with refresh=true
    finally:
        await store.client.close()

    mark = apps_proxy.mark()
    proxied = await text_search(apps_proxy.url, index_name)
    # (a) reranked
    apps_proxy.assert_reranked(index_name)
    texts = apps_proxy.texts_since(mark)
    assert len(texts) == K

    # (b) the same shape as straight from the engine
    from_engine = await text_search(es_engine.url, index_name)
    assert len(proxied.nodes) == len(from_engine.nodes) == K
    assert set(proxied.ids) == set(from_engine.ids)
    assert {n.node_id for n in proxied.nodes} == set(from_engine.ids)
    assert [shape(n) for n in proxied.nodes] == [shape(n) for n in from_engine.nodes]
    assert len(proxied.similarities) == K

    # (c) what the reranker was sent for LlamaIndex's schema (`content`, the node as JSON in
    # `metadata._node_content`)
    measure("llamaindex ElasticsearchStore (BM25 text search)", es_engine.url, index_name, texts, corpus)
    assert_texts_are_content(texts, corpus)
