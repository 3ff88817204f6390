"""HTTP rerank providers against real loopback servers: the exact wire request, reply parsing,
score mapping by index, batching, vendor error bodies and faults (one attempt, no retries here)."""

from __future__ import annotations

import asyncio
import math
import random
import socket
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rerank_proxy.config import Settings
from rerank_proxy.runtime import build_provider, build_reranker, is_pointwise
from rerank_proxy.scoring.providers.cohere import CohereReranker, CohereV1Reranker, CompatibleReranker
from rerank_proxy.scoring.providers.errors import (
    RerankConnectionError,
    RerankResponseError,
    RerankStatusError,
    RerankTimeout,
)
from rerank_proxy.scoring.providers.http_client import (
    HTTPReranker,
    _checked_scores,
    error_message,
    retry_after_s,
    scores_by_index,
)
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from rerank_proxy.scoring.providers.tei import TEIReranker
from rerank_proxy.scoring.providers.voyage import VoyageReranker
from tests.support_loopback import FaultServer, response_bytes, send_json

KEY = "co-test-key-0123456789abcdef"
DOCS = ["alpha", "bravo", "charlie", "delta", "echo"]


def score_of(doc: str) -> float:
    """A score the fake servers derive from the text, so a test can check where each one landed."""
    return round(0.01 * len(doc) + 0.001 * ord(doc[0]), 6)


def shuffled_results(texts: list[str], score_key: str = "relevance_score", **extra) -> list[dict]:
    items = [{"index": i, score_key: score_of(t), **extra} for i, t in enumerate(texts)]
    random.Random(len(texts)).shuffle(items)
    return items


def cohere_handler(meta: bool = True):
    async def handle(request, writer):
        texts = request.json()["documents"]
        body: dict[str, Any] = {"id": "r-1", "results": shuffled_results(texts)}
        if meta:
            body["meta"] = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
        await send_json(writer, 200, body)
    return handle


def reply(status: int, payload, headers: dict | None = None):
    async def handle(request, writer):
        await send_json(writer, status, payload, headers)
    return handle


def raw(data: bytes, close: bool = True):
    async def handle(request, writer):
        writer.write(data)
        await writer.drain()
        return not close
    return handle


# --- the exact request --------------------------------------------------------------------------

async def test_cohere_v2_sends_exactly_the_documented_request():
    async with (
        FaultServer(cohere_handler()) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker,
    ):
        result = await reranker.rerank("what is alpha?", DOCS)
    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v2/rerank"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-client-name"] == "rerank-proxy"
    assert request.json() == {"model": "rerank-v3.5", "query": "what is alpha?", "documents": DOCS}
    assert result.scores == [score_of(d) for d in DOCS]
    assert result.billed_units == 1
    assert result.provider_calls == 1


async def test_cohere_v2_sends_max_tokens_per_doc_only_when_configured():
    settings = Settings(rerank_provider="cohere", rerank_api_key=KEY, rerank_model="rerank-v4.0-fast",
                        rerank_max_tokens_per_doc=512)
    async with FaultServer(cohere_handler()) as server:
        settings = settings.with_overrides(rerank_base_url=server.url)
        async with aclosing(CohereReranker.from_settings(settings)) as reranker:
            await reranker.rerank("q", ["one"])
    assert server.requests[0].json() == {"model": "rerank-v4.0-fast", "query": "q", "documents": ["one"],
                                         "max_tokens_per_doc": 512}


async def test_cohere_v1_sends_strings_without_documents_back():
    async def handle(request, writer):
        texts = request.json()["documents"]
        results = shuffled_results(texts)
        for item in results:
            item["document"] = {"text": texts[item["index"]]}
        await send_json(writer, 200, {"results": results, "meta": {"api_version": {"version": "1"},
                                                                   "billed_units": {"search_units": 2.0}}})
    async with (
        FaultServer(handle) as server,
        aclosing(CohereV1Reranker(base_url=server.url, api_key=KEY, max_tokens_per_doc=100)) as reranker,
    ):
        result = await reranker.rerank("q", DOCS)
    (request,) = server.requests
    assert request.path == "/v1/rerank"
    assert request.json() == {"model": "rerank-v3.5", "query": "q", "documents": DOCS, "return_documents": False}
    assert result.scores == [score_of(d) for d in DOCS]
    assert result.billed_units == 2.0


@pytest.mark.parametrize(("results_key", "score_key", "echo"), [
    ("results", "relevance_score", None),                       # Infinity without documents
    ("results", "relevance_score", "plain string"),             # Infinity with documents
    ("results", "relevance_score", {"text": "x", "multi_modal": None}),   # vLLM
    ("data", "score", None),                                    # Mixedbread-like
    ("data", "relevance_score", "x"),                           # Voyage-like
])
async def test_compatible_tolerates_the_known_deviations(results_key, score_key, echo):
    async def handle(request, writer):
        texts = request.json()["documents"]
        extra = {} if echo is None else {"document": echo}
        await send_json(writer, 200, {"model": "m", "usage": {"total_tokens": 42},
                                      results_key: shuffled_results(texts, score_key, **extra)})
    async with FaultServer(handle) as server, aclosing(CompatibleReranker(base_url=server.url)) as reranker:
        result = await reranker.rerank("q", DOCS)
    (request,) = server.requests
    assert request.path == "/rerank"
    assert "authorization" not in request.headers
    assert request.json() == {"query": "q", "documents": DOCS}
    assert result.scores == [score_of(d) for d in DOCS]
    assert result.billed_units == 0
    assert result.meta == {"total_tokens": 42}


async def test_compatible_sends_model_and_key_when_configured():
    async with FaultServer(cohere_handler(meta=False)) as server:
        settings = Settings(rerank_provider="compatible", rerank_base_url=server.url, rerank_path="/v1/rerank",
                            rerank_api_key=KEY, rerank_model="jina-reranker-v2-base-multilingual")
        async with aclosing(build_provider(settings)) as reranker:
            assert reranker.pointwise is True
            await reranker.rerank("q", ["a"])
    (request,) = server.requests
    assert request.path == "/v1/rerank"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json() == {"query": "q", "documents": ["a"], "model": "jina-reranker-v2-base-multilingual"}


async def test_tei_sends_texts_and_reads_a_bare_array_in_batches_of_32():
    async def handle(request, writer):
        texts = request.json()["texts"]
        await send_json(writer, 200, shuffled_results(texts, "score"))
    docs = [f"doc {i} " + "x" * (i % 7) for i in range(70)]
    async with FaultServer(handle) as server, aclosing(TEIReranker(base_url=server.url)) as reranker:
        result = await reranker.rerank("q", docs)
    assert [len(r.json()["texts"]) for r in server.requests] == [32, 32, 6]
    assert {r.path for r in server.requests} == {"/rerank"}
    assert server.requests[0].json() == {"query": "q", "texts": docs[:32], "truncate": True}
    assert result.scores == [score_of(d) for d in docs]
    assert result.provider_calls == 3


async def test_voyage_sends_truncation_and_no_top_k_and_reads_data():
    async def handle(request, writer):
        texts = request.json()["documents"]
        await send_json(writer, 200, {"object": "list", "data": shuffled_results(texts),
                                      "model": "rerank-2.5", "usage": {"total_tokens": 26}})
    docs = [f"d{i}" for i in range(1500)]
    async with FaultServer(handle) as server, aclosing(VoyageReranker(base_url=server.url, api_key=KEY)) as reranker:
        result = await reranker.rerank("q", docs)
    assert [r.path for r in server.requests] == ["/v1/rerank", "/v1/rerank"]
    first = server.requests[0]
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.json() == {"query": "q", "documents": docs[:1000], "model": "rerank-2.5", "truncation": True}
    assert len(server.requests[1].json()["documents"]) == 500
    assert result.scores == [score_of(d) for d in docs]
    assert result.meta == {"total_tokens": 52}


async def test_voyage_ignores_a_results_key():
    handler = reply(200, {"results": [{"index": 0, "relevance_score": 0.5}]})
    async with FaultServer(handler) as server, aclosing(VoyageReranker(base_url=server.url, api_key=KEY)) as reranker:
        with pytest.raises(RerankResponseError, match="data"):
            await reranker.rerank("q", ["a"])


# --- batching --------------------------------------------------------------------------------------

async def test_batches_go_out_concurrently_and_merge_by_offset():
    all_arrived = asyncio.Event()

    async def handle(request, writer):
        # Reply only once all three batches are in flight: proves they are sent concurrently.
        if len(server.requests) == 3:
            all_arrived.set()
        await asyncio.wait_for(all_arrived.wait(), 2)
        await cohere_handler()(request, writer)

    docs = [f"{c}{i}" for i, c in enumerate("abcdefg")]
    async with FaultServer(handle) as server:
        settings = Settings(rerank_provider="cohere", rerank_base_url=server.url, rerank_api_key=KEY,
                            rerank_batch_size=3)
        async with aclosing(CohereReranker.from_settings(settings)) as reranker:
            result = await reranker.rerank("q", docs)
    assert sorted(r.json()["documents"] for r in server.requests) == [docs[0:3], docs[3:6], docs[6:7]]
    assert result.scores == [score_of(d) for d in docs]
    assert result.billed_units == 3
    assert result.provider_calls == 3


async def test_one_failed_batch_fails_the_rerank():
    async def handle(request, writer):
        if "d4" in request.json()["documents"]:
            await send_json(writer, 500, {"message": "boom"})
        else:
            await cohere_handler()(request, writer)
    async with (
        FaultServer(handle) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY, batch_size=2)) as reranker,
    ):
        with pytest.raises(RerankStatusError, match="boom") as caught:
            await reranker.rerank("q", [f"d{i}" for i in range(6)])
    assert caught.value.status == 500
    assert caught.value.retryable


async def test_empty_documents_are_not_sent_and_score_lowest():
    """The rule of scoring/final.py: a blank gets the lowest score of the others (0.0 if all are blank)."""
    async with (
        FaultServer(cohere_handler()) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker,
    ):
        result = await reranker.rerank("q", ["alpha", "", "  \n", "delta"])
        nothing = await reranker.rerank("q", ["", " "])
    assert [r.json()["documents"] for r in server.requests] == [["alpha", "delta"]]
    lowest = min(score_of("alpha"), score_of("delta"))
    assert result.scores == [score_of("alpha"), lowest, lowest, score_of("delta")]
    assert nothing.scores == [0.0, 0.0]
    assert nothing.provider_calls == 0


# --- unusable replies ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "problem"), [
    ({"results": [{"index": 0, "relevance_score": 0.1}, {"index": 2, "relevance_score": 0.2}]}, "out of range"),
    ({"results": [{"index": 0, "relevance_score": 0.1}, {"index": 0, "relevance_score": 0.2}]}, "twice"),
    ({"results": [{"index": 1, "relevance_score": 0.1}]}, "no score for 1 of 2"),
    ({"results": [{"index": "0", "relevance_score": 0.1}, {"index": 1, "relevance_score": 0.2}]}, "not an integer"),
    ({"results": [{"index": True, "relevance_score": 0.1}, {"index": 1, "relevance_score": 0.2}]}, "not an integer"),
    ({"results": [{"index": 0, "relevance_score": "0.9"}, {"index": 1, "relevance_score": 0.2}]},
     "not a finite number"),
    ({"results": [{"index": 0}, {"index": 1, "relevance_score": 0.2}]}, "not a finite number"),
    ({"results": [{"index": 0, "relevance_score": 1e999}, {"index": 1, "relevance_score": 0.2}]}, None),
    ({"results": {"index": 0}}, "no list"),
    ({"results": [[0, 0.5], [1, 0.5]]}, "not an object"),
    ("results", "not an object or array"),
])
async def test_bad_indexes_and_shapes_are_not_retryable_errors(payload, problem):
    async with (
        FaultServer(reply(200, payload)) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker,
    ):
        with pytest.raises(RerankResponseError) as caught:
            await reranker.rerank("q", ["a", "b"])
    assert not caught.value.retryable
    if problem:
        assert problem in str(caught.value)


async def test_malformed_json_is_a_response_error():
    async with (
        FaultServer(raw(response_bytes(200, b'{"results": [{"index": 0,'))) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker,
    ):
        with pytest.raises(RerankResponseError, match="not valid JSON") as caught:
            await reranker.rerank("q", ["a"])
    assert not caught.value.retryable


async def test_body_cut_short_is_a_retryable_connection_error():
    whole = b'{"results": [{"index": 0, "relevance_score": 0.5}]}'
    cut = response_bytes(200, whole[:20], content_length=len(whole))
    async with (
        FaultServer(raw(cut, close=True)) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker,
    ):
        with pytest.raises(RerankConnectionError) as caught:
            await reranker.rerank("q", ["a"])
    assert caught.value.retryable


async def test_connection_refused_is_a_retryable_connection_error():
    with socket.socket() as sock:       # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aclosing(CohereReranker(base_url=f"http://127.0.0.1:{port}", api_key=KEY)) as reranker:
        with pytest.raises(RerankConnectionError) as caught:
            await reranker.rerank("q", ["a"])
    assert caught.value.retryable
    assert KEY not in str(caught.value)


async def test_no_reply_within_the_read_timeout_is_a_retryable_timeout():
    async def handle(request, writer):
        await asyncio.sleep(5)      # the server's own timed behaviour; cancelled at teardown
    async with (
        FaultServer(handle) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY, timeout_s=0.05)) as reranker,
    ):
        with pytest.raises(RerankTimeout) as caught:
            await reranker.rerank("q", ["a"])
    assert caught.value.retryable


# --- vendor error bodies ----------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "payload", "message", "retryable"), [
    (400, {"id": "x", "message": "invalid request: list of documents must not be empty"},
     "list of documents must not be empty", False),                                  # Cohere
    (429, {"message": "You are past the per minute request limit"}, "per minute", True),
    (429, {"error": "Model is overloaded", "error_type": "Overloaded"}, "Model is overloaded", True),  # TEI
    (424, {"error": "model is not a re-ranker model", "error_type": "Backend"}, "re-ranker", False),
    (422, {"detail": "Request to model 'rerank-2' failed"}, "failed", False),        # Voyage
    (422, {"detail": [{"loc": ["body", "query"], "msg": "field required"}]}, "field required", False),  # FastAPI
    (404, {"error": {"message": "model not found", "type": "NotFound", "code": 404}}, "model not found", False),
    (400, {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}, "too long", False),
    (401, {"error": "Unauthorized"}, "Unauthorized", False),                         # vLLM
    (500, {"message": "internal"}, "internal", True),
    (501, {"message": "not implemented"}, "not implemented", False),
    (502, "<html>bad gateway</html>", "bad gateway", True),
    (503, {"message": "overloaded"}, "overloaded", True),
    (408, {"message": "request timeout"}, "request timeout", True),
])
async def test_error_statuses_carry_the_vendor_message(status, payload, message, retryable):
    async with FaultServer(reply(status, payload)) as server, aclosing(TEIReranker(base_url=server.url)) as reranker:
        with pytest.raises(RerankStatusError) as caught:
            await reranker.rerank("q", ["a"])
    error = caught.value
    assert error.status == status
    assert error.retryable is retryable
    assert message in str(error)
    assert f"HTTP {status}" in str(error)


async def test_the_api_key_never_appears_in_error_messages():
    handler = reply(401, {"message": f"invalid api token {KEY}"}, {"retry-after": "1"})
    async with FaultServer(handler) as server, aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker:
        with pytest.raises(RerankStatusError) as caught:
            await reranker.rerank("q", ["a"])
    assert KEY not in str(caught.value)
    assert "<redacted>" in str(caught.value)
    assert KEY not in repr(caught.value.args)


async def test_retry_after_hints_are_read_from_the_error_response():
    async with (
        FaultServer(reply(429, {"message": "slow down"}, {"Retry-After": "7"})) as server,
        aclosing(CohereReranker(base_url=server.url, api_key=KEY)) as reranker,
    ):
        with pytest.raises(RerankStatusError) as caught:
            await reranker.rerank("q", ["a"])
    assert caught.value.retry_after == 7.0


def test_retry_after_header_forms():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_s({"retry-after": date}, now=now.timestamp()) == 30
    assert retry_after_s({"retry-after": format_datetime(now - timedelta(seconds=5), usegmt=True)},
                         now=now.timestamp()) == 0
    assert retry_after_s({"retry-after": "2"}) == 2
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after-ms": "soon", "retry-after": "9"}) == 9
    assert retry_after_s({"retry-after": "whenever"}) is None
    assert retry_after_s({"retry-after": "nan"}) is None
    assert retry_after_s({}) is None


def test_error_message_clips_long_bodies():
    assert error_message(b"x" * 5000).endswith("...")
    assert len(error_message(b'{"message": "' + b"y" * 5000 + b'"}')) < 400
    assert error_message(b"") == ""


# --- factory ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "cls", "path"), [
    ("cohere", CohereReranker, "/v2/rerank"),
    ("cohere-v1", CohereV1Reranker, "/v1/rerank"),
    ("compatible", CompatibleReranker, "/rerank"),
    ("tei", TEIReranker, "/rerank"),
    ("voyage", VoyageReranker, "/v1/rerank"),
])
async def test_factory_builds_the_configured_provider_behind_resilience(provider, cls, path):
    settings = Settings(rerank_provider=provider, rerank_base_url="http://127.0.0.1:1", rerank_api_key=KEY)
    reranker = build_reranker(settings)
    assert isinstance(reranker, ResilientReranker)
    assert type(reranker.inner) is cls
    assert isinstance(reranker.inner, HTTPReranker)  # for the type checker: every cls above is one
    assert reranker.inner.path == path
    assert reranker.name == provider
    assert reranker.pointwise is True
    await reranker.aclose()


def test_factory_none_and_listwise_models():
    assert build_reranker(Settings(rerank_provider="none")) is None
    assert is_pointwise("rerank-v3.5")
    assert is_pointwise("jina-reranker-v2-base-multilingual")
    assert not is_pointwise("jina-reranker-v3")
    assert not is_pointwise("jinaai/jina-reranker-v3")
    reranker = build_provider(Settings(rerank_provider="compatible", rerank_base_url="http://127.0.0.1:1",
                                       rerank_model="jina-reranker-v3"))
    assert reranker.pointwise is False
    assert CohereReranker(api_key=KEY, pointwise=False).pointwise is False


def test_batch_size_is_capped_by_the_provider_limit():
    assert TEIReranker(base_url="http://x", batch_size=1000).batch_size == 32
    assert TEIReranker(base_url="http://x", batch_size=8).batch_size == 8
    assert TEIReranker(base_url="http://x", max_documents=256, batch_size=1000).batch_size == 256
    assert VoyageReranker(api_key=KEY, batch_size=5000).batch_size == 1000
    assert math.isclose(CohereReranker.from_settings(Settings(rerank_attempt_timeout_ms=750))
                        ._timeout_s, 0.75)


# --- score mapping: the bulk-checked fast path agrees with the item-by-item check -------------------

_items = st.lists(st.one_of(
    st.fixed_dictionaries({"index": st.one_of(st.integers(-1, 6), st.booleans(), st.floats(0, 5), st.none()),
                           "relevance_score": st.one_of(st.floats(), st.integers(-3, 3), st.booleans(),
                                                        st.just(1e308), st.text(max_size=2), st.none())},
                          optional={"score": st.floats(allow_nan=False), "document": st.text(max_size=3)}),
    st.fixed_dictionaries({"index": st.integers(0, 5), "score": st.floats(0, 1)}),
    st.lists(st.integers(), max_size=2), st.text(max_size=2), st.integers()), max_size=7)


def _outcome(fn, items, count, keys):
    try:
        return "ok", fn(items, count, keys)
    except ValueError as exc:
        return "error", str(exc)


@hsettings(max_examples=800, deadline=None)
@given(items=_items, count=st.integers(0, 6),
       keys=st.sampled_from([("relevance_score",), ("relevance_score", "score")]))
def test_score_mapping_fast_path_agrees_with_the_full_check(items, count, keys):
    expected = _outcome(_checked_scores, items, count, keys)
    assert _outcome(scores_by_index, items, count, keys) == expected


def test_score_mapping_of_a_well_formed_reply_is_by_index():
    items = [{"index": 2, "relevance_score": 0.5}, {"index": 0, "relevance_score": 1},
             {"index": 1, "relevance_score": 0.25, "document": {"text": "x"}}]
    assert scores_by_index(items, 3, ("relevance_score",)) == [1.0, 0.25, 0.5]
    assert all(type(s) is float for s in scores_by_index(items, 3, ("relevance_score",)))
