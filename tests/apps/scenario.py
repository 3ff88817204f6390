"""One framework case, run as its users run it: write through the framework via the proxy, then search
through its retriever via the proxy and straight at the engine; print what the asserts need as JSON.

    .venv-apps/bin/python -m tests.apps.scenario <case> <proxy_url> <engine_url> <index> <corpus.jsonl> \
        --query TEXT --k N

Cases: haystack, langchain-store, langchain-retriever, llamaindex. Runs in `.venv-apps` (the
frameworks pin elasticsearch-py <9; `.venv` has 9.x), so it imports no pytest and nothing of the
test side; the checks are in tests/apps/test_*.py. For the same reason this file is excluded from the
main mypy run (pyproject [tool.mypy]); ruff still checks it. The writes go through
bench/framework_writers.py, the benchmarks' writers.

Each result is {"id", "shape", "has_content", ...}: `shape` is what an app reads off the framework's
object (its fields that are set, its metadata keys), so proxied and direct answers compare as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.framework_writers import WRITERS, Row, read_corpus

Search = Callable[[str], dict[str, Any]]


def haystack(index: str, query: str, k: int) -> Search:
    from haystack_integrations.components.retrievers.elasticsearch import ElasticsearchBM25Retriever
    from haystack_integrations.document_stores.elasticsearch import ElasticsearchDocumentStore

    def search(url: str) -> dict[str, Any]:
        store = ElasticsearchDocumentStore(hosts=url, index=index)
        documents = ElasticsearchBM25Retriever(document_store=store, top_k=k).run(query=query)["documents"]
        docs = [{"id": d.id, "has_content": bool(d.content),
                 "shape": [sorted(name for name, value in d.to_dict(flatten=False).items() if value is not None),
                           sorted(d.meta)]} for d in documents]
        return {"docs": docs, "count": store.count_documents()}

    return search


def _langchain_shape(document: Any) -> list[Any]:
    fields = sorted(name for name, value in document.model_dump().items() if value not in (None, "", {}))
    return [fields, sorted(document.metadata)]


def langchain_store(index: str, query: str, k: int) -> Search:
    from langchain_elasticsearch import ElasticsearchStore

    def search(url: str) -> dict[str, Any]:
        store = ElasticsearchStore(index_name=index, es_url=url, strategy=ElasticsearchStore.BM25RetrievalStrategy())
        documents = store.similarity_search(query, k=k)
        return {"docs": [{"id": d.id, "source": d.metadata.get("source"), "has_content": bool(d.page_content),
                          "shape": _langchain_shape(d)} for d in documents]}

    return search


def langchain_retriever(index: str, query: str, k: int) -> Search:
    from langchain_elasticsearch import ElasticsearchRetriever

    def search(url: str) -> dict[str, Any]:
        retriever = ElasticsearchRetriever(index_name=index, content_field="text", es_url=url,
                                           body_func=lambda q: {"query": {"match": {"text": q}}, "size": k})
        documents = retriever.invoke(query)
        # the default document mapper keeps the hit (its _id, _index, _score, _source) in the metadata
        return {"docs": [{"id": d.id, "hit_id": d.metadata["_id"], "source_keys": sorted(d.metadata["_source"]),
                          "has_content": bool(d.page_content), "shape": _langchain_shape(d)} for d in documents]}

    return search


def llamaindex(index: str, query: str, k: int) -> Search:
    from elasticsearch.helpers.vectorstore import AsyncBM25Strategy
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode
    from llama_index.vector_stores.elasticsearch import ElasticsearchStore

    async def text_search(url: str) -> dict[str, Any]:
        store = ElasticsearchStore(index_name=index, es_url=url, retrieval_strategy=AsyncBM25Strategy())
        try:
            result = await store.aquery(VectorStoreQuery(query_str=query, similarity_top_k=k,
                                                         mode=VectorStoreQueryMode.TEXT_SEARCH))
        finally:
            await store.client.close()
        docs = [{"id": n.node_id, "has_content": bool(n.get_content()),
                 "shape": [type(n).__name__,
                           sorted(name for name, value in n.model_dump().items() if value not in (None, "", {}, [])),
                           sorted(n.metadata)]} for n in result.nodes]
        return {"docs": docs, "ids": list(result.ids or []), "similarities": len(result.similarities or [])}

    return lambda url: asyncio.run(text_search(url))


# case -> (the framework whose store writes the corpus, its searches)
CASES: dict[str, tuple[str, Callable[[str, str, int], Search]]] = {
    "haystack": ("haystack", haystack),
    "langchain-store": ("langchain", langchain_store),
    "langchain-retriever": ("langchain", langchain_retriever),
    "llamaindex": ("llamaindex", llamaindex),
}


def run(case: str, proxy_url: str, engine_url: str, index: str, corpus: list[Row], query: str,
        k: int) -> dict[str, Any]:
    """Write via the proxy, search via the proxy (the one search the proxy sees), then directly."""
    framework, searches = CASES[case]
    written = WRITERS[framework](proxy_url, index, corpus)
    search = searches(index, query, k)
    proxied = search(proxy_url)
    direct = search(engine_url)
    return {"case": case, "elasticsearch_py": version("elasticsearch"), "written": written, "proxied": proxied,
            "direct": direct}


def main() -> None:
    parser = argparse.ArgumentParser(description="One framework case through the proxy and directly.")
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("proxy_url")
    parser.add_argument("engine_url")
    parser.add_argument("index")
    parser.add_argument("corpus", type=Path, help="JSONL, one {id, text, metadata} a line")
    parser.add_argument("--query", required=True)
    parser.add_argument("--k", type=int, required=True)
    args = parser.parse_args()
    out = run(args.case, args.proxy_url, args.engine_url, args.index, read_corpus(args.corpus), args.query, args.k)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
