"""What every HTTP rerank provider shares: the pooled client, batching, error mapping, index mapping.

A provider subclass says only what differs on the wire: its defaults, `request_body()` and
`parse_body()`. Everything here is one attempt; retries, deadlines and the breaker live in
`resilience.py`, so a provider can be tested (and reasoned about) on its own.

Choices made here:
- Scores are mapped back through each result's `index`, never its position. A missing, duplicate
  or out-of-range index, a non-finite or non-numeric score, or a body that is not the documented
  shape raises `RerankResponseError`, which is *not* retryable: a complete reply in the wrong shape
  is a contract mismatch that another (billed) attempt would repeat.
- A body cut short (connection closed before Content-Length was reached) is a transport failure,
  `RerankConnectionError`, and retryable, like refused or reset connections.
- Empty or whitespace-only documents (`scoring.final.is_blank`) are not sent (Cohere answers 400
  "document at index N cannot be empty" for the whole request); they get the lowest score of the
  others (0.0 if all are blank), the rule of `scoring/final.py`, which never sends blanks anyway:
  this is the defensive check for other callers.
- The API key is only ever in the Authorization header; every message built from a provider reply
  is scrubbed of it, and transport exceptions are not chained (their request holds the headers).
- The HTTP client is aiohttp's, as for the engines: profiles of the cache-miss path showed httpx's
  pool bookkeeping as about 30% of the proxy's CPU per search (docs/decisions/http-clients.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp
import orjson

from rerank_proxy.config import Settings
from rerank_proxy.scoring.final import is_blank, with_blanks
from rerank_proxy.scoring.providers.base import RerankError, RerankResult
from rerank_proxy.scoring.providers.errors import (
    RerankConnectionError,
    RerankResponseError,
    RerankStatusError,
    RerankTimeout,
    is_retryable_status,
)
from rerank_proxy.scoring.providers.waits import exchange

USER_AGENT = "rerank-proxy"
MAX_MESSAGE_CHARS = 300


class BatchReply(NamedTuple):
    """What one HTTP call produced."""

    scores: list[float]        # aligned with the batch's documents
    billed_units: float = 0.0  # Cohere search units, when reported
    tokens: int = 0            # usage.total_tokens, when reported (Voyage, Jina, vLLM...)


class HTTPReranker:
    """Base class of the HTTP providers; implements the `Reranker` protocol."""

    name = "http"
    default_base_url = ""
    default_path = "/rerank"
    default_model = ""
    max_documents = 1000           # the provider's documented per-request limit

    def __init__(
        self,
        *,
        base_url: str = "",
        path: str = "",
        api_key: str = "",
        model: str = "",
        batch_size: int | None = None,
        max_documents: int | None = None,
        timeout_s: float = 2.0,
        max_connections: int = 100,
        pointwise: bool = True,
    ) -> None:
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        if not self.base_url:
            raise ValueError(f"{self.name}: a base URL is required")
        self.path = path or self.default_path
        self.model = model or self.default_model
        self.pointwise = pointwise
        if max_documents is not None:
            self.max_documents = max_documents
        self.batch_size = min(batch_size or self.max_documents, self.max_documents)
        self._api_key = api_key
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": USER_AGENT, **self.extra_headers()}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """Created on first use, inside the running event loop (aiohttp requires it)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> HTTPReranker:
        """The provider as configured by RERANK_*; keyword overrides win (e.g. `pointwise`)."""
        kwargs: dict[str, Any] = {
            "base_url": settings.rerank_base_url,
            "path": settings.rerank_path,
            "api_key": settings.rerank_api_key,
            "model": settings.rerank_model,
            "batch_size": settings.rerank_batch_size,
            "timeout_s": settings.rerank_attempt_timeout_ms / 1000,
            "max_connections": max(100, settings.rerank_max_concurrency),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # --- what subclasses define -------------------------------------------------------------

    def extra_headers(self) -> dict[str, str]:
        return {}

    def request_body(self, query: str, documents: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError

    def parse_body(self, payload: Any, count: int) -> BatchReply:
        """Scores for a batch of `count` documents from a decoded 2xx body; ValueError if unusable."""
        raise NotImplementedError

    # --- the Reranker protocol --------------------------------------------------------------

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        sent = [i for i, doc in enumerate(documents) if not is_blank(doc)]
        if not sent:
            return RerankResult(scores=with_blanks(len(documents), sent, []), provider_calls=0)
        texts = [documents[i] for i in sent]
        batches = [texts[start:start + self.batch_size]
                   for start in range(0, len(texts), self.batch_size)]
        if len(batches) == 1:
            parts = [await self._rerank_batch(query, batches[0])]
        else:
            parts = await _gather_or_first_error(self._rerank_batch(query, b) for b in batches)
        merged = [score for part in parts for score in part.scores]
        # nothing blank (the usual case): already in the documents' order
        scores = merged if len(sent) == len(documents) else with_blanks(len(documents), sent, merged)
        billed = sum(part.billed_units for part in parts)
        tokens = sum(part.tokens for part in parts)
        meta = {"total_tokens": tokens} if tokens else {}
        return RerankResult(scores=scores, billed_units=billed, provider_calls=len(batches), meta=meta)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    # --- one HTTP call ------------------------------------------------------------------------

    async def _rerank_batch(self, query: str, documents: Sequence[str]) -> BatchReply:
        payload = await self._post(orjson.dumps(self.request_body(query, documents)))
        try:
            return self.parse_body(payload, len(documents))
        except ValueError as exc:
            raise RerankResponseError(self._scrub(f"{self.name}: unusable response: {exc}")) from None

    async def _post(self, body: bytes) -> Any:
        try:
            with exchange():
                async with self._client().post(self.base_url + self.path, data=body) as response:
                    status, reason, headers = response.status, response.reason, response.headers
                    content = await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RerankTimeout(self._scrub(f"{self.name}: {type(exc).__name__} after "
                                            f"{self._timeout_s}s"), retryable=True) from None
        except aiohttp.ClientError as exc:  # refused, reset, or a body cut short
            raise RerankConnectionError(self._scrub(f"{self.name}: {type(exc).__name__}: {exc}"),
                                        retryable=True) from None
        if not 200 <= status < 300:
            raise self._status_error(status, reason, content, headers)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise RerankResponseError(
                f"{self.name}: HTTP {status} body is not valid JSON ({len(content)} bytes)") from None

    def _status_error(self, status: int, reason: str | None, content: bytes,
                      headers: Mapping[str, str]) -> RerankError:
        message = error_message(content) or reason or "no message"
        return RerankStatusError(
            self._scrub(f"{self.name}: HTTP {status}: {message}"),
            retryable=is_retryable_status(status),
            retry_after=retry_after_s(headers),
            status=status,
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "<redacted>") if self._api_key else text


async def _gather_or_first_error(calls: Any) -> list[Any]:
    """Run batch calls concurrently; on the first failure cancel the rest and raise that error."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]


# --- parsing helpers shared by the providers ---------------------------------------------------

def result_items(payload: Any, keys: tuple[str, ...] = ("results", "data")) -> list[Any]:
    """The list of results: under one of `keys`, or the payload itself when it is a bare array."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in keys:
            items = payload.get(key)
            if isinstance(items, list):
                return items
        raise ValueError(f"no list under {' or '.join(map(repr, keys))}")
    raise ValueError(f"body is a JSON {type(payload).__name__}, not an object or array")


def scores_by_index(items: list[Any], count: int, score_keys: tuple[str, ...]) -> list[float]:
    """Scores aligned with the request's documents, placed by each result's `index`."""
    fast = _well_formed_scores(items, count, score_keys[0])
    if fast is not None:
        return fast
    return _checked_scores(items, count, score_keys)


def _well_formed_scores(items: list[Any], count: int, score_key: str) -> list[float] | None:
    """The scores of a reply in the usual shape, checked in bulk; None sends it to the
    item-by-item check (which then names the problem, or accepts an unusual valid reply)."""
    if len(items) != count:
        return None
    try:
        indexes = [item["index"] for item in items]
        values = [item[score_key] for item in items]
    except (KeyError, TypeError):
        return None
    if not {type(i) for i in indexes} <= _INT or not {type(v) for v in values} <= _NUMBER:
        return None
    try:
        if sorted(indexes) != list(range(count)) or not math.isfinite(sum(values)):
            return None
    except OverflowError:  # a sum past the float range: let the per-item check decide
        return None
    scores = [0.0] * count
    for index, value in zip(indexes, values):
        scores[index] = float(value)
    return scores


_INT = frozenset({int})
_NUMBER = frozenset({int, float})


def _checked_scores(items: list[Any], count: int, score_keys: tuple[str, ...]) -> list[float]:
    scores: list[float | None] = [None] * count
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"a result is a JSON {type(item).__name__}, not an object")
        index = item.get("index")
        if type(index) is not int:
            raise ValueError(f"result index {_clip(repr(index))} is not an integer")
        if not 0 <= index < count:
            raise ValueError(f"result index {index} is out of range for {count} documents")
        if scores[index] is not None:
            raise ValueError(f"result index {index} appears twice")
        score = next((item[key] for key in score_keys if key in item), None)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise ValueError(f"score {_clip(repr(score))} for index {index} is not a finite number")
        scores[index] = float(score)
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"no score for {len(missing)} of {count} documents (index {shown})")
    return [s for s in scores if s is not None]  # complete: `missing` was empty


def number_at(payload: Any, *path: str) -> float:
    """A number nested in dicts (`meta.billed_units.search_units`), 0 when absent or not a number."""
    for key in path:
        if not isinstance(payload, dict):
            return 0
        payload = payload.get(key)
    return payload if type(payload) in (int, float) and math.isfinite(payload) else 0


def error_message(body: bytes) -> str:
    """The human message in a vendor's error body, whichever of the known shapes it has.

    Cohere `{"message"}`, TEI `{"error": str}`, OpenAI-style `{"error": {"message"}}` (Infinity,
    vLLM, LiteLLM), Voyage/FastAPI `{"detail": str | list}`; else the start of the raw text.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _clip(body.decode("utf-8", "replace").strip())
    if isinstance(payload, dict):
        error = payload.get("error")
        for candidate in (payload.get("message"),
                          error.get("message") if isinstance(error, dict) else error,
                          payload.get("detail")):
            if isinstance(candidate, str) and candidate:
                return _clip(candidate)
            if isinstance(candidate, (list, dict)) and candidate:
                return _clip(orjson.dumps(candidate).decode())
    return _clip(body.decode("utf-8", "replace").strip())


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The provider's wait hint in seconds: `retry-after-ms`, else `Retry-After` (seconds or date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
