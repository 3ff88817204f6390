"""`rerank-proxy serve-reranker`: a Cohere v2-compatible rerank API on the built-in model.

So the local model can serve other applications too (or other proxy replicas, with
RERANK_PROVIDER=cohere and RERANK_BASE_URL pointing here). The app is built around any `Reranker`
(`build_app`), which keeps it testable without the model.

Contract (docs: Cohere `POST /v2/rerank`): `model`, `query`, `documents` (non-empty strings) are
required; `top_n` only truncates the sorted results; `max_tokens_per_doc` and `priority` are
validated and ignored (the model has its own token limit, LOCAL_MODEL_MAX_TOKENS). The `model`
value is not checked: there is one model. `/v1/rerank` follows v1 (model optional, `{text}` object
documents, `return_documents`); `/rerank` is the v2 body with `model` optional, as vLLM and
Infinity accept it. Errors are `{"message": ...}` with Cohere's statuses and wording.
"""

from __future__ import annotations

import argparse
import hmac
import math
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rerank_proxy.scoring.providers.base import Reranker, RerankError

MAX_DOCUMENTS = 10_000            # Cohere: documents x max_chunks_per_doc must stay within 10,000
MAX_BODY_BYTES = 64 * 1024 * 1024
DOCUMENTS_PER_SEARCH_UNIT = 100   # Cohere bills one search unit per query with up to 100 documents


class BadRequest(Exception):
    """The request breaks the contract; the message is sent back as-is with a 400."""


@dataclass(slots=True)
class RerankRequest:
    query: str
    documents: list[str]
    originals: list[Any]           # as sent (v1 may send {"text": ...} objects), for echoes
    top_n: int | None
    return_documents: bool


# --- validation ----------------------------------------------------------------------------------

def parse_request(payload: Any, *, version: str, model_required: bool) -> RerankRequest:
    """Check a decoded body against the v1 or v2 contract; raises BadRequest."""
    if not isinstance(payload, dict):
        raise BadRequest("invalid request: body must be a JSON object")
    _check_model(payload.get("model"), model_required)
    query = _query(payload.get("query"))
    originals = _document_list(payload.get("documents"))
    documents = [_document_text(doc, i, version) for i, doc in enumerate(originals)]

    top_n = payload.get("top_n")
    if top_n is not None and (type(top_n) is not int or top_n < 1):
        raise BadRequest("invalid request: top_n must be a positive integer")
    _optional_int(payload, "max_tokens_per_doc", 1, None)
    _optional_int(payload, "priority", 0, 999)

    return_documents = _v1_options(payload) if version == "1" else False
    return RerankRequest(query, documents, originals, top_n, return_documents)


def _check_model(model: Any, required: bool) -> None:
    """`model` is a string when sent; where it is required, a blank one counts as missing."""
    if model is None or (isinstance(model, str) and not model.strip()):
        if required:
            raise BadRequest("a model parameter is required for this endpoint.")
    elif not isinstance(model, str):
        raise BadRequest("invalid request: model must be a string")


def _query(query: Any) -> str:
    if query is None or (isinstance(query, str) and not query.strip()):
        raise BadRequest("invalid request: query must not be empty or be only whitespace")
    if not isinstance(query, str):
        raise BadRequest("invalid request: query must be a string")
    return query


def _document_list(originals: Any) -> list[Any]:
    """The `documents` list as sent: not empty, at most MAX_DOCUMENTS (each checked on its own)."""
    if originals is None or originals == []:
        raise BadRequest("invalid request: list of documents must not be empty")
    if not isinstance(originals, list):
        raise BadRequest("invalid request: documents must be a list of strings")
    if len(originals) > MAX_DOCUMENTS:
        raise BadRequest(f"invalid request: number of documents must be at most {MAX_DOCUMENTS}")
    return originals


def _v1_options(payload: dict[str, Any]) -> bool:
    """v1's own fields checked; returns `return_documents`."""
    return_documents = payload.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise BadRequest("invalid request: return_documents must be a boolean")
    rank_fields = payload.get("rank_fields")
    if rank_fields is not None:
        if not isinstance(rank_fields, list) or not rank_fields:
            raise BadRequest("invalid request: rank_fields cannot be empty")
        if rank_fields != ["text"]:
            raise BadRequest('invalid request: this server ranks on the "text" field only')
    _optional_int(payload, "max_chunks_per_doc", 1, None)
    return return_documents


def _document_text(doc: Any, index: int, version: str) -> str:
    if version == "1" and isinstance(doc, dict):
        doc = doc.get("text")
        if not isinstance(doc, str):
            raise BadRequest(f"invalid request: document at index {index} has no string \"text\" field")
    elif not isinstance(doc, str):
        raise BadRequest(f"invalid request: documents must be strings; document at index {index} "
                         f"is a JSON {_json_type(doc)}")
    if not doc:
        raise BadRequest(f"document at index {index} cannot be empty")
    return doc


def _optional_int(payload: dict[str, Any], name: str, lo: int, hi: int | None) -> None:
    value = payload.get(name)
    if value is None:
        return
    if type(value) is not int or value < lo or (hi is not None and value > hi):
        allowed = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        raise BadRequest(f"invalid request: {name} must be {allowed}")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


# --- the app ---------------------------------------------------------------------------------------

def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def error(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    response = json_response({"message": message}, status_code)
    response.headers.update(headers or {})
    return response


class RerankEndpoints:
    """The request handlers, bound to one reranker and an optional API key."""

    def __init__(self, reranker: Reranker, api_key: str | None) -> None:
        self.reranker = reranker
        self.api_key = api_key or None

    async def v2(self, request: Request) -> Response:
        return await self._handle(request, version="2", model_required=True)

    async def v1(self, request: Request) -> Response:
        return await self._handle(request, version="1", model_required=False)

    async def bare(self, request: Request) -> Response:
        return await self._handle(request, version="2", model_required=False)

    async def _handle(self, request: Request, *, version: str, model_required: bool) -> Response:
        denied = self._check_key(request)
        if denied is not None:
            return denied
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return error(413, "invalid request: body too large")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return error(413, "invalid request: body too large")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error(400, "invalid request: body is not valid JSON")
        try:
            parsed = parse_request(payload, version=version, model_required=model_required)
        except BadRequest as exc:
            return error(400, str(exc))

        try:
            result = await self.reranker.rerank(parsed.query, parsed.documents)
        except RerankError as exc:
            return error(503 if exc.retryable else 500, f"rerank failed: {exc}")
        scores = result.scores
        if len(scores) != len(parsed.documents) or not all(math.isfinite(s) for s in scores):
            return error(500, "internal error: the model returned unusable scores")
        return json_response(build_response(parsed, scores, version))

    def _check_key(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            return error(401, "no api key supplied")
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return error(401, "invalid api token")
        return None


def build_response(request: RerankRequest, scores: list[float], version: str) -> dict[str, Any]:
    """Results sorted by descending score (ties by index), cut to top_n, with Cohere's meta."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if request.top_n is not None:
        order = order[:request.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if request.return_documents:
            original = request.originals[i]
            item["document"] = original if isinstance(original, dict) else {"text": original}
        results.append(item)
    units = math.ceil(len(scores) / DOCUMENTS_PER_SEARCH_UNIT)
    return {"id": str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": version}, "billed_units": {"search_units": units}}}


async def _health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), exc.headers)


def build_app(reranker: Reranker, api_key: str | None = None, *, close_reranker: bool = False) -> Starlette:
    """The ASGI app. `close_reranker`: call `reranker.aclose()` at shutdown (the CLI owns it)."""
    endpoints = RerankEndpoints(reranker, api_key)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if close_reranker:
            await reranker.aclose()

    routes = [
        Route("/v2/rerank", endpoints.v2, methods=["POST"]),
        Route("/v1/rerank", endpoints.v1, methods=["POST"]),
        Route("/rerank", endpoints.bare, methods=["POST"]),
        Route("/health", _health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})


# --- the sub-command -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY", default=None,
                     help="require 'Authorization: Bearer KEY' (visible in ps; prefer --api-key-file)")
    key.add_argument("--api-key-file", metavar="PATH", default=None,
                     help="read the required API key from this file")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from rerank_proxy.config import ConfigError, load_settings

    try:
        settings = load_settings()
        api_key = args.api_key
        if args.api_key_file:
            api_key = Path(args.api_key_file).expanduser().read_text(encoding="utf-8").strip()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"--api-key-file={args.api_key_file!r}: cannot read ({exc.strerror})", file=sys.stderr)
        return 2
    from rerank_proxy.local.reranker import LocalReranker

    # A provider answers with scores, so it waits for its cold documents instead of refusing them;
    # the calling proxy's deadline bounds the wait, and the embedding outlives an abandoned call.
    reranker = LocalReranker(settings.with_overrides(local_cold_wait_ms=600_000))
    app = build_app(reranker, api_key, close_reranker=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level)
    return 0
