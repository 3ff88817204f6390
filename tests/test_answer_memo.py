"""Finished answers of repeated searches (search/answer_memo.py): exact reuse, and what retires it."""

from __future__ import annotations

import httpx
import orjson

from rerank_proxy.engine.headers import credentials_of
from rerank_proxy.search.answer_memo import MAX_ENGINE_ANSWER_BYTES, AnswerMemo, request_key
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import metric_samples


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def engine_answer(took: int, ids: list[str]) -> bytes:
    return orjson.dumps({"took": took, "timed_out": False,
                         "hits": {"hits": [{"_id": i, "_score": 1.0} for i in ids]}})


def memo(max_bytes: int = 1 << 20, generation: list[int] | None = None,
         clock: Clock | None = None) -> AnswerMemo:
    gen = generation if generation is not None else [0]
    return AnswerMemo(max_bytes, 60.0, lambda: tuple(gen), clock or Clock())


# --- the memo alone ------------------------------------------------------------------------------

def test_a_remembered_answer_comes_back_with_the_new_took():
    m = memo()
    request = request_key("POST", "idx", {}, {}, b'{"query":{}}')
    first = engine_answer(7, ["a", "b"])
    digest = m.answer_digest(first, opensearch=False)
    assert digest is not None
    assert not m.expects(request)
    m.put(request, digest, b'{"took":7,"hits":{"hits":["b","a"]}}', "cached", "hit", 2)
    again = engine_answer(12345, ["a", "b"])
    same = m.answer_digest(again, opensearch=False)
    assert same == digest
    assert m.expects(request)
    found = m.get(request, same, again)
    assert found is not None
    assert found.body == b'{"took":12345,"hits":{"hits":["b","a"]}}'
    assert (found.outcome, found.cache, found.window, m.hits) == ("cached", "hit", 2, 1)


def test_another_engine_answer_or_another_request_is_not_reused():
    m = memo()
    request = request_key("POST", "idx", {}, {}, b"{}")
    digest = m.answer_digest(engine_answer(1, ["a", "b"]), opensearch=False)
    assert digest is not None
    m.put(request, digest, b'{"took":1}', "cached", "hit", 2)
    changed = engine_answer(1, ["b", "a"])
    other = m.answer_digest(changed, opensearch=False)
    assert other is not None
    assert other != digest
    assert m.get(request, other, changed) is None
    assert m.answer_digest(engine_answer(1, ["a", "b"]), opensearch=True) != digest
    # every part of the request is in its key: page, parameters, rerank headers, targets, method
    keys = {request,
            request_key("POST", "idx", {}, {}, b'{"from":10}'),
            request_key("POST", "idx", {"filter_path": "hits"}, {}, b"{}"),
            request_key("POST", "idx", {}, {"x-rerank": "off"}, b"{}"),
            request_key("POST", "idx2", {}, {}, b"{}"),
            request_key("GET", "idx", {}, {}, b"{}"),
            request_key("POST", "idx", {}, {}, b"{}", credentials_of([(b"Authorization", b"Basic Ym9iOmI=")]))}
    assert len(keys) == 7   # ... and the credentials, which chose the fields of the texts
    # headers that do not shape the answer (tracing ids) do not split the key
    assert request_key("POST", "idx", {}, {"traceparent": "00-1"}, b"{}") == request


def test_expiry_and_generation_retire_entries():
    clock, generation = Clock(), [0]
    m = memo(generation=generation, clock=clock)
    body = engine_answer(1, ["a"])
    digest = m.answer_digest(body, opensearch=False)
    assert digest is not None
    m.put(b"r1", digest, b'{"took":1}', "cached", "hit", 1)
    m.put(b"r2", digest, b'{"took":1}', "cached", "hit", 1)
    generation[0] += 1  # a flush, or a changed mapping
    assert m.get(b"r1", digest, body) is None
    assert len(m) == 1
    m.put(b"r1", digest, b'{"took":1}', "cached", "hit", 1)
    clock.now += 61
    assert m.get(b"r1", digest, body) is None


def test_the_byte_bound_drops_the_least_recently_used():
    body = engine_answer(1, ["a"])
    page = b'{"took":1,"x":"' + b"y" * 1000 + b'"}'
    m = memo(max_bytes=3 * 1300)
    digest = m.answer_digest(body, opensearch=False)
    assert digest is not None
    for request in (b"r1", b"r2", b"r3"):
        m.put(request, digest, page, "cached", "hit", 1)
    assert m.get(b"r1", digest, body) is not None  # r1 is now the most recently used
    m.put(b"r4", digest, page, "cached", "hit", 1)
    assert [r for r in (b"r1", b"r2", b"r3", b"r4") if m.expects(r)] == [b"r1", b"r3", b"r4"]
    assert m.held_bytes <= m.max_bytes
    m.put(b"huge", digest, b"z" * (4 * 1300), "cached", "hit", 1)
    assert not m.expects(b"huge")


def test_a_pretty_answer_gets_its_took_in_place():
    m = memo()
    body = engine_answer(7, ["a"])
    digest = m.answer_digest(body, opensearch=False)
    assert digest is not None
    m.put(b"r", digest, b'{\n  "took": 7,\n  "hits": {}\n}', "cached", "hit", 1)
    found = m.get(b"r", digest, engine_answer(1234, ["a"]))
    assert found is not None
    assert found.body == b'{\n  "took": 1234,\n  "hits": {}\n}'


def test_answers_it_cannot_splice_are_not_kept():
    m = memo()
    assert m.answer_digest(b'{\n  "took" : 3,\n  "hits" : {}\n}', opensearch=False) is not None
    assert m.answer_digest(b'{"timed_out":false,"took":3}', opensearch=False) is None
    assert m.answer_digest(b'{"took":3,"x":"' + b"a" * MAX_ENGINE_ANSWER_BYTES + b'"}', opensearch=False) is None
    # an output without `took` (a client's filter_path dropped it) is kept as it is
    body = engine_answer(5, ["a"])
    digest = m.answer_digest(body, opensearch=False)
    assert digest is not None
    m.put(b"r", digest, b'{"hits":{"hits":[]}}', "cached", "hit", 0)
    found = m.get(b"r", digest, body)
    assert found is not None
    assert found.body == b'{"hits":{"hits":[]}}'


# --- through the proxy, against the real engine ----------------------------------------------------

def _search(url: str, index: str, body: dict, **params: str) -> httpx.Response:
    response = httpx.post(f"{url}/{index}/_search", json=body, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response


def _without_took(response: httpx.Response) -> dict:
    data = response.json()
    data.pop("took", None)
    return data


def test_a_repeated_search_is_answered_from_the_memo_until_a_document_changes(engine, index_name):
    load_corpus(engine.url, index_name)
    reranker = OverlapReranker()
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 3}
    with run_proxy(proxy_settings(engine.url), reranker=reranker) as running:
        first = _search(running.url, index_name, body)
        calls = reranker.calls
        second = _search(running.url, index_name, body)
        assert first.headers["x-rerank"] == "reranked"
        assert second.headers["x-rerank"] == "cached"
        assert _without_took(first) == _without_took(second)
        assert reranker.calls == calls
        assert '"took":' in second.text
        assert second.json()["took"] >= 0
        samples = metric_samples(running.url)
        assert samples[("rerank_proxy_answer_memo_hits_total", ())] == 1

        # another page of the same query is another request: its own hits, not the first page's
        page2 = _search(running.url, index_name, dict(body, **{"from": 3}))
        ids_1 = [h["_id"] for h in first.json()["hits"]["hits"]]
        ids_2 = [h["_id"] for h in page2.json()["hits"]["hits"]]
        assert ids_2
        assert not set(ids_1) & set(ids_2)
        filtered = _search(running.url, index_name, body, filter_path="hits.hits._id")
        assert filtered.json() == {"hits": {"hits": [{"_id": i} for i in ids_1]}}

        # a new version of a candidate changes the engine's answer: computed again, new text scored
        top = ids_1[0]
        updated = httpx.post(f"{engine.url}/{index_name}/_update/{top}?refresh=true",
                             json={"doc": {"body": "jet engine noise jet engine noise"}}, timeout=30)
        assert updated.status_code == 200, updated.text
        documents = reranker.documents
        third = _search(running.url, index_name, body)
        assert third.headers["x-rerank-cache"] == "partial"
        assert reranker.documents == documents + 1
        assert metric_samples(running.url)[("rerank_proxy_answer_memo_hits_total", ())] == 1


def test_the_memo_can_be_turned_off(engine, index_name):
    load_corpus(engine.url, index_name)
    reranker = OverlapReranker()
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 3}
    with run_proxy(proxy_settings(engine.url, CACHE_ANSWERS_MAX_MB="0"), reranker=reranker) as running:
        _search(running.url, index_name, body)
        second = _search(running.url, index_name, body)
        assert second.headers["x-rerank"] == "cached"
        assert second.headers["x-rerank-cache"] == "hit"
        assert not any(name == "rerank_proxy_answer_memo_hits_total" for name, _ in metric_samples(running.url))
