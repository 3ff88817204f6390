"""Hugging Face text-embeddings-inference (TEI) `POST /rerank`.

TEI takes `texts`, not `documents`, has no `model` or `top_n`, and answers with a bare JSON array
`[{"index", "score"}]`. It refuses more texts than its `--max-client-batch-size` (default 32), so
requests carry at most 32 texts (fewer if RERANK_BATCH_SIZE is smaller) and larger sets go out as
concurrent batches. For a server started with a larger limit, pass `max_documents=` to the
constructor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_proxy.scoring.providers.http_client import BatchReply, HTTPReranker, result_items, scores_by_index


class TEIReranker(HTTPReranker):
    """`POST /rerank` with `{query, texts, truncate: true}`."""

    name = "tei"
    default_path = "/rerank"
    max_documents = 32

    def request_body(self, query: str, documents: Sequence[str]) -> dict[str, Any]:
        # truncate: without it, TEI's default (--auto-truncate off) rejects over-long pairs.
        return {"query": query, "texts": list(documents), "truncate": True}

    def parse_body(self, payload: Any, count: int) -> BatchReply:
        return BatchReply(scores_by_index(result_items(payload), count, ("score",)))
