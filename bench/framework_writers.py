"""Write a corpus through a framework's own Elasticsearch store, as an app built on it would.

Haystack, LangChain and LlamaIndex each pick their own mapping and document layout; a benchmark or a
test that wants "the index Haystack makes" has this write it, not a hand-made imitation.

    .venv-apps/bin/python -m bench.framework_writers <framework> <engine_url> <index> <corpus.jsonl>

`framework` is haystack, langchain or llamaindex; each line of the corpus is
{"id": ..., "text": ..., "metadata": {...}} and is stored with the id `cran-<id>`. Prints
{"written": N}.

Runs in `.venv-apps` (`make apps-venv`): the frameworks pin elasticsearch-py <9, so they are not in
`.venv`. For that reason this module is excluded from the main mypy run (pyproject [tool.mypy]);
ruff still checks it. tests/apps/scenario.py writes through the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Haystack reads its telemetry switch (posthog) once, at import: off before any import of it.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

ID_PREFIX = "cran-"
LLAMAINDEX_CHUNK = 500  # nodes per async_add: each is one bulk request, kept well under the engine's limits

Row = dict[str, Any]


def read_corpus(path: Path) -> list[Row]:
    """The corpus's rows: {"id", "text", "metadata"}."""
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_haystack(url: str, index: str, corpus: list[Row]) -> int:
    from haystack import Document
    from haystack_integrations.document_stores.elasticsearch import ElasticsearchDocumentStore

    store = ElasticsearchDocumentStore(hosts=url, index=index)
    documents = [Document(id=ID_PREFIX + row["id"], content=row["text"], meta=row["metadata"]) for row in corpus]
    written: int = store.write_documents(documents, refresh=True)
    return written


def write_langchain(url: str, index: str, corpus: list[Row]) -> int:
    from langchain_elasticsearch import ElasticsearchStore

    store = ElasticsearchStore(index_name=index, es_url=url, strategy=ElasticsearchStore.BM25RetrievalStrategy())
    ids = store.add_texts([row["text"] for row in corpus], metadatas=[row["metadata"] for row in corpus],
                          ids=[ID_PREFIX + row["id"] for row in corpus], refresh_indices=True)
    return len(ids)


def write_llamaindex(url: str, index: str, corpus: list[Row]) -> int:
    from elasticsearch.helpers.vectorstore import AsyncBM25Strategy
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.elasticsearch import ElasticsearchStore

    async def add() -> int:
        store = ElasticsearchStore(index_name=index, es_url=url, retrieval_strategy=AsyncBM25Strategy())
        nodes = [TextNode(id_=ID_PREFIX + row["id"], text=row["text"], metadata=row["metadata"]) for row in corpus]
        written = 0
        try:
            for start in range(0, len(nodes), LLAMAINDEX_CHUNK):
                written += len(await store.async_add(nodes[start:start + LLAMAINDEX_CHUNK]))  # refresh=true
        finally:
            await store.client.close()
        return written

    return asyncio.run(add())


WRITERS: dict[str, Callable[[str, str, list[Row]], int]] = {
    "haystack": write_haystack,
    "langchain": write_langchain,
    "llamaindex": write_llamaindex,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a corpus through a framework's own store.")
    parser.add_argument("framework", choices=sorted(WRITERS))
    parser.add_argument("engine_url")
    parser.add_argument("index")
    parser.add_argument("corpus", type=Path, help="JSONL, one {id, text, metadata} a line")
    args = parser.parse_args(argv)
    written = WRITERS[args.framework](args.engine_url, args.index, read_corpus(args.corpus))
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
