"""Voyage AI `POST /v1/rerank`.

Voyage's top-n field is `top_k` (omitted: we need every score), results are under `data`, and it
bills per token (`usage.total_tokens`, kept in `RerankResult.meta`, not in `billed_units`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_proxy.scoring.providers.http_client import (
    BatchReply,
    HTTPReranker,
    number_at,
    result_items,
    scores_by_index,
)


class VoyageReranker(HTTPReranker):
    """`POST /v1/rerank` with `{query, documents, model, truncation: true}`."""

    name = "voyage"
    default_base_url = "https://api.voyageai.com"
    default_path = "/v1/rerank"
    default_model = "rerank-2.5"
    max_documents = 1000

    def request_body(self, query: str, documents: Sequence[str]) -> dict[str, Any]:
        return {"query": query, "documents": list(documents), "model": self.model, "truncation": True}

    def parse_body(self, payload: Any, count: int) -> BatchReply:
        scores = scores_by_index(result_items(payload, ("data",)), count, ("relevance_score",))
        return BatchReply(scores, 0.0, int(number_at(payload, "usage", "total_tokens")))
