"""serve-reranker: the Cohere-compatible server, under uvicorn on loopback, spoken to by raw HTTP
and by our own provider clients (so both sides of the contract are checked against each other)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from contextlib import aclosing

import httpx
import pytest

from rerank_proxy.local.rerank_server import add_arguments, build_app
from rerank_proxy.scoring.providers.base import RerankError, RerankResult
from rerank_proxy.scoring.providers.cohere import CohereReranker, CohereV1Reranker, CompatibleReranker
from rerank_proxy.scoring.providers.errors import RerankStatusError
from tests.support_loopback import serve_app
from tests.support_rerankers import OverlapReranker, overlap_score

KEY = "local-server-key-42"
QUERY = "capital of the united states"
DOCS = ["Carson City is the capital city of the American state of Nevada.",
        "Washington, D.C. is the capital of the United States.",
        "Capital punishment has existed in the United States since before it was a country.",
        "The sky is blue."]


@pytest.fixture(scope="module")
async def server_url():
    async with serve_app(build_app(OverlapReranker())) as url:
        yield url


@pytest.fixture(scope="module")
async def keyed_url():
    async with serve_app(build_app(OverlapReranker(), api_key=KEY)) as url:
        yield url


_client = httpx.AsyncClient()       # one client (and SSL context) for the whole module


async def post(url: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return await _client.post(url + path, content=body, headers=headers)
    return await _client.post(url + path, json=body, headers=headers)


# --- our clients against our server -----------------------------------------------------------------

@pytest.mark.parametrize("cls", [CohereReranker, CohereV1Reranker, CompatibleReranker])
async def test_our_clients_get_the_models_scores_in_input_order(server_url, cls):
    async with aclosing(cls(base_url=server_url, api_key="ignored")) as client:
        result = await client.rerank(QUERY, DOCS)
    assert result.scores == [overlap_score(QUERY, d) for d in DOCS]
    assert result.billed_units == 1


async def test_batched_client_requests_merge_to_the_same_scores(server_url):
    docs = [f"document {i} about the capital" if i % 3 else f"unrelated {i}" for i in range(250)]
    async with aclosing(CohereReranker(base_url=server_url, batch_size=100)) as client:
        result = await client.rerank("capital document", docs)
    assert result.scores == [overlap_score("capital document", d) for d in docs]
    assert result.billed_units == 3
    assert result.provider_calls == 3


async def test_the_client_with_the_right_key_passes_and_a_wrong_one_is_refused(keyed_url):
    async with aclosing(CohereReranker(base_url=keyed_url, api_key=KEY)) as client:
        assert len((await client.rerank(QUERY, DOCS)).scores) == 4
    async with aclosing(CohereReranker(base_url=keyed_url, api_key="wrong")) as client:
        with pytest.raises(RerankStatusError, match="invalid api token") as caught:
            await client.rerank(QUERY, DOCS)
    assert caught.value.status == 401
    assert not caught.value.retryable


# --- the response -------------------------------------------------------------------------------------

async def test_v2_response_is_sorted_with_cohere_meta(server_url):
    response = await post(server_url, "/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    expected = sorted(range(len(DOCS)), key=lambda i: -overlap_score(QUERY, DOCS[i]))
    assert [r["index"] for r in body["results"]] == expected
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    assert body["results"][0]["relevance_score"] == overlap_score(QUERY, DOCS[1])
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert isinstance(body["id"], str)
    assert body["id"]


async def test_top_n_truncates_without_changing_scores(server_url):
    full = (await post(server_url, "/v2/rerank", {"model": "m", "query": QUERY, "documents": DOCS})).json()
    top = (await post(server_url, "/v2/rerank", {"model": "m", "query": QUERY, "documents": DOCS,
                                                 "top_n": 2})).json()
    assert top["results"] == full["results"][:2]
    many = (await post(server_url, "/v2/rerank", {"model": "m", "query": QUERY, "documents": DOCS,
                                                  "top_n": 99})).json()
    assert len(many["results"]) == 4


@pytest.mark.parametrize(("count", "units"), [(1, 1), (100, 1), (101, 2), (250, 3)])
async def test_search_units_are_one_per_hundred_documents(server_url, count, units):
    body = {"model": "m", "query": "q", "documents": [f"doc {i}" for i in range(count)]}
    response = await post(server_url, "/v2/rerank", body)
    assert response.json()["meta"]["billed_units"] == {"search_units": units}


async def test_v1_accepts_text_objects_and_echoes_documents(server_url):
    documents = [{"text": DOCS[0], "id": "a"}, DOCS[1]]
    response = await post(server_url, "/v1/rerank", {"query": QUERY, "documents": documents,
                                                     "return_documents": True, "rank_fields": ["text"]})
    body = response.json()
    assert response.status_code == 200
    assert body["meta"]["api_version"] == {"version": "1"}
    by_index = {r["index"]: r for r in body["results"]}
    assert by_index[0]["document"] == {"text": DOCS[0], "id": "a"}
    assert by_index[1]["document"] == {"text": DOCS[1]}
    assert by_index[0]["relevance_score"] == overlap_score(QUERY, DOCS[0])


async def test_bare_rerank_path_does_not_require_a_model(server_url):
    response = await post(server_url, "/rerank", {"query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 4


# --- validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v2/rerank", {"model": "m", "query": "q", "documents": []}, "invalid request: list of documents must not be empty"),
    ("/v2/rerank", {"model": "m", "query": "q"}, "invalid request: list of documents must not be empty"),
    ("/v2/rerank", {"query": "q", "documents": ["a"]}, "a model parameter is required for this endpoint."),
    ("/v2/rerank", {"model": "", "query": "q", "documents": ["a"]}, "a model parameter is required for this endpoint."),
    ("/v2/rerank", {"model": 3, "query": "q", "documents": ["a"]}, "invalid request: model must be a string"),
    ("/v2/rerank", {"model": "m", "query": "", "documents": ["a"]}, "invalid request: query must not be empty or be only whitespace"),
    ("/v2/rerank", {"model": "m", "query": "  \n", "documents": ["a"]}, "invalid request: query must not be empty or be only whitespace"),
    ("/v2/rerank", {"model": "m", "documents": ["a"]}, "invalid request: query must not be empty or be only whitespace"),
    ("/v2/rerank", {"model": "m", "query": 5, "documents": ["a"]}, "invalid request: query must be a string"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a", {"text": "b"}]}, "invalid request: documents must be strings; document at index 1 is a JSON object"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a", 7]}, "invalid request: documents must be strings; document at index 1 is a JSON number"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": "a"}, "invalid request: documents must be a list of strings"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a", ""]}, "document at index 1 cannot be empty"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "top_n": 0}, "invalid request: top_n must be a positive integer"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "top_n": "2"}, "invalid request: top_n must be a positive integer"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, "invalid request: max_tokens_per_doc must be an integer >= 1"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "priority": 1000}, "invalid request: priority must be an integer from 0 to 999"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["d"] * 10_001}, "invalid request: number of documents must be at most 10000"),
    ("/v2/rerank", ["not", "an", "object"], "invalid request: body must be a JSON object"),
    ("/v2/rerank", b"{not json", "invalid request: body is not valid JSON"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "no text"}]}, 'invalid request: document at index 0 has no string "text" field'),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "rank_fields": []}, "invalid request: rank_fields cannot be empty"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "yes"}, "invalid request: return_documents must be a boolean"),
])
async def test_invalid_requests_get_400_with_cohere_messages(server_url, path, body, message):
    response = await post(server_url, path, body)
    assert response.status_code == 400
    assert response.json() == {"message": message}


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "no api key supplied"),
    ({"Authorization": "Bearer"}, "no api key supplied"),
    ({"Authorization": f"Basic {KEY}"}, "no api key supplied"),
    ({"Authorization": "Bearer nope"}, "invalid api token"),
])
async def test_a_missing_or_wrong_key_gets_401(keyed_url, headers, message):
    response = await post(keyed_url, "/v2/rerank", {"model": "m", "query": "q", "documents": ["a"]}, headers)
    assert response.status_code == 401
    assert response.json() == {"message": message}


async def test_unknown_paths_and_methods_answer_json(server_url):
    missing = await _client.post(server_url + "/v3/rerank", json={})
    wrong_method = await _client.get(server_url + "/v2/rerank")
    health = await _client.get(server_url + "/health")
    assert missing.status_code == 404
    assert "message" in missing.json()
    assert wrong_method.status_code == 405
    assert "message" in wrong_method.json()
    assert wrong_method.headers["allow"] == "POST"
    assert health.json() == {"status": "ok"}


class Failing:
    """Raises `error`, or returns `scores` as they are (right or wrong)."""

    name, model, pointwise = "failing", "f", True

    def __init__(self, error: Exception | None = None, scores: list[float] | None = None) -> None:
        self.error, self.scores = error, scores

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        if self.error:
            raise self.error
        return RerankResult(scores=self.scores or [])

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
async def failing():
    reranker = Failing()
    async with serve_app(build_app(reranker)) as url:
        yield url, reranker


@pytest.mark.parametrize(("error", "scores", "status"), [
    (RerankError("model busy", retryable=True), None, 503),
    (RerankError("model broken"), None, 500),
    (None, [0.5, 0.5], 500),               # not one score per document
    (None, [math.nan], 500),
])
async def test_reranker_failures_are_5xx_with_a_message(failing, error, scores, status):
    url, reranker = failing
    reranker.error, reranker.scores = error, scores
    response = await post(url, "/v2/rerank", {"model": "m", "query": "q", "documents": ["a"]})
    assert response.status_code == status
    assert response.json()["message"]


async def test_the_reranker_is_closed_at_shutdown_only_when_owned():
    class Closable(Failing):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    owned, borrowed = Closable(scores=[1.0]), Closable(scores=[1.0])
    async with serve_app(build_app(owned, close_reranker=True)):
        pass
    async with serve_app(build_app(borrowed)):
        pass
    assert owned.closed
    assert not borrowed.closed


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.host, defaults.port, defaults.api_key) == ("127.0.0.1", 8081, None)
    given = parser.parse_args(["--host", "0.0.0.0", "--port", "9000", "--api-key", "k"])
    assert (given.host, given.port, given.api_key) == ("0.0.0.0", 9000, "k")
