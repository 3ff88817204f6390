"""Cohere Rerank (v2 and v1) and the servers that copy its API (Jina, vLLM, Infinity, LiteLLM...).

We never send `top_n`: the proxy needs a score for every candidate, and `top_n` only truncates the
list (it does not change scores). We never ask for documents back either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_proxy.config import Settings
from rerank_proxy.scoring.providers.http_client import (
    BatchReply,
    HTTPReranker,
    number_at,
    result_items,
    scores_by_index,
)


class CohereReranker(HTTPReranker):
    """`POST /v2/rerank`: body `{model, query, documents[, max_tokens_per_doc]}`."""

    name = "cohere"
    default_base_url = "https://api.cohere.com"
    default_path = "/v2/rerank"
    default_model = "rerank-v3.5"
    # Cohere's hard limit is 10,000 documents; it recommends at most 1,000 per request for speed.
    # Batches of 1,000 run concurrently and cost the same search units (one per 100 documents).
    max_documents = 1000
    score_keys: tuple[str, ...] = ("relevance_score",)

    def __init__(self, *, max_tokens_per_doc: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens_per_doc = max_tokens_per_doc

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CohereReranker:
        overrides.setdefault("max_tokens_per_doc", settings.rerank_max_tokens_per_doc)
        return super().from_settings(settings, **overrides)  # type: ignore[return-value]  # cls is this class

    def extra_headers(self) -> dict[str, str]:
        return {"X-Client-Name": "rerank-proxy"}

    def request_body(self, query: str, documents: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "query": query, "documents": list(documents)}
        if self.max_tokens_per_doc is not None:
            body["max_tokens_per_doc"] = self.max_tokens_per_doc
        return body

    def parse_body(self, payload: Any, count: int) -> BatchReply:
        scores = scores_by_index(result_items(payload), count, self.score_keys)
        billed = number_at(payload, "meta", "billed_units", "search_units")
        tokens = int(number_at(payload, "usage", "total_tokens"))
        return BatchReply(scores, billed, tokens)


class CohereV1Reranker(CohereReranker):
    """`POST /v1/rerank`: strings, `return_documents: false`; `max_tokens_per_doc` is v2-only."""

    name = "cohere-v1"
    default_path = "/v1/rerank"

    def request_body(self, query: str, documents: Sequence[str]) -> dict[str, Any]:
        return {"model": self.model, "query": query, "documents": list(documents),
                "return_documents": False}


class CompatibleReranker(CohereReranker):
    """A Cohere-shaped server that deviates in the details; defaults to `POST /rerank`.

    `/rerank` is the one path vLLM (its preferred one), Infinity and LiteLLM all serve; Jina's
    hosted API is at `/v1/rerank` (set RERANK_PATH). The body is the subset all of them accept:
    `model` only when configured (vLLM and Infinity default to their served model), no
    `return_documents` (some vLLM versions reject it), `max_tokens_per_doc` only when configured.
    Replies may put results under `results` or `data`, the score under `relevance_score` or
    `score`, omit `meta`, and echo documents in any shape (ignored).
    """

    name = "compatible"
    default_base_url = ""
    default_path = "/rerank"
    default_model = ""
    score_keys = ("relevance_score", "score")

    def request_body(self, query: str, documents: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if self.model:
            body["model"] = self.model
        if self.max_tokens_per_doc is not None:
            body["max_tokens_per_doc"] = self.max_tokens_per_doc
        return body
