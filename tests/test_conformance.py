"""Conformance: the proxy's answer to a request compared with the engine's own answer to the same
request, field by field, on both real engines (hit order and scores aside, the only intended
differences of a reranked search)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import expected_order, load_corpus
from tests.support_rerankers import OverlapReranker

BODY = {"query": {"match": {"body": "jet engine noise"}}, "size": 20,
        "aggs": {"authors": {"terms": {"field": "meta.author"}}, "latest": {"max": {"field": "year"}}}}
FILTER_PATHS = [
    "hits.hits._id", "hits.hits._source.title", "hits.total", "took,hits.hits._id", "hits.**._id",
    "-hits.hits._source", "hits.hits._*", "**.value", "aggregations.*.buckets.key",
    "hits.hits._source.meta.tags", "-hits.hits._source.meta,-_shards", "-**.author", "hits.hits._source.*,-**.tags",
    "hits.hits", "*.total", "took,-took", "-**", "nothing.here", " hits.hits._id , ", "", ",",
]


def post_raw(url: str, content: bytes, content_type: str, params: dict[str, str] | None = None) -> httpx.Response:
    """POST `content` byte for byte (httpx encodes nothing), as `content_type`."""
    return httpx.post(url, content=content, headers={"content-type": content_type}, params=params)


def shape(value: Any) -> Any:
    """The key structure of a response: values replaced by their JSON kind, arrays as sorted lists
    of their elements' shapes (hit order is the reranker's)."""
    if isinstance(value, dict):
        return {key: shape(child) for key, child in value.items()}
    if isinstance(value, list):
        return sorted((shape(item) for item in value), key=repr)
    if isinstance(value, bool) or value is None:
        return repr(value)
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def ids(value: Any) -> list[str]:
    """Every `_id` anywhere in a response, sorted."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend([child] if key == "_id" else ids(child))
    elif isinstance(value, list):
        for item in value:
            found.extend(ids(item))
    return sorted(found)


def without_volatile(value: Any) -> Any:
    """The response with what legitimately differs removed: took, scores, hit order."""
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in ("took", "_score", "max_score")}
    if isinstance(value, list):
        return sorted((without_volatile(v) for v in value), key=repr)
    return value


@pytest.mark.parametrize("filter_path", FILTER_PATHS)
def test_filter_path_is_reranked_and_filtered_like_the_engine(engine, proxy, corpus_index, filter_path):
    mine = httpx.post(f"{proxy.url}/{corpus_index}/_search", params={"filter_path": filter_path}, json=BODY)
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", params={"filter_path": filter_path}, json=BODY)
    assert mine.status_code == theirs.status_code == 200
    assert mine.headers["x-rerank"] in ("reranked", "cached"), mine.headers.get("x-rerank-reason")
    assert shape(mine.json()) == shape(theirs.json())
    assert without_volatile(mine.json()) == without_volatile(theirs.json())
    assert ids(mine.json()) == ids(theirs.json())


def test_filter_path_keeps_the_reranked_order(engine, proxy, corpus_index):
    full = httpx.post(f"{proxy.url}/{corpus_index}/_search", json=BODY).json()
    filtered = httpx.post(f"{proxy.url}/{corpus_index}/_search", params={"filter_path": "hits.hits._id"}, json=BODY)
    assert [h["_id"] for h in filtered.json()["hits"]["hits"]] == [h["_id"] for h in full["hits"]["hits"]]


@pytest.mark.parametrize("filter_path", ["responses.hits.hits._id", "-responses.hits.hits._source", "**.value",
                                         "responses.hits.total,-responses.hits.total.relation"])
def test_msearch_filter_path(engine, proxy, corpus_index, filter_path):
    lines = f'{{"index": "{corpus_index}"}}\n{{"query": {{"match": {{"body": "jet"}}}}, "size": 20}}\n' * 2
    params = {"filter_path": filter_path}
    mine = post_raw(f"{proxy.url}/_msearch", lines.encode(), "application/x-ndjson", params)
    theirs = post_raw(f"{engine.url}/_msearch", lines.encode(), "application/x-ndjson", params)
    assert mine.status_code == theirs.status_code == 200
    assert "reranked" in mine.headers["x-rerank"] or "cached" in mine.headers["x-rerank"]
    assert without_volatile(mine.json()) == without_volatile(theirs.json())
    assert shape(mine.json()) == shape(theirs.json())


def test_lone_minus_filter_path_is_the_engines_answer(engine, proxy, corpus_index):
    mine = httpx.post(f"{proxy.url}/{corpus_index}/_search", params={"filter_path": "-"}, json=BODY)
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", params={"filter_path": "-"}, json=BODY)
    assert mine.status_code == theirs.status_code          # Elasticsearch 200, OpenSearch 400
    assert mine.headers["x-rerank"] == "bypass"
    assert mine.headers["x-rerank-reason"] == "filter_path"


STANDARD = {"standard": {"query": {"match": {"body": "jet engine noise"}}}}
RETRIEVERS = {
    "standard": STANDARD,
    "rrf": {"rrf": {"retrievers": [STANDARD, {"standard": {"query": {"match": {"title": "noise"}}}}],
                    "rank_window_size": 20}},
    "linear": {"linear": {"retrievers": [{"retriever": STANDARD, "weight": 2}]}},
    "text_similarity_reranker": {"text_similarity_reranker": {"retriever": STANDARD, "field": "body",
                                                              "inference_id": "none", "inference_text": "jet"}},
}


@pytest.mark.parametrize("kind", list(RETRIEVERS))
def test_retrievers_answer_like_the_engine(engine, proxy, corpus_index, kind):
    """Elasticsearch 9 runs the standard retriever (reranked through the proxy); the minimal
    distribution has no rrf/linear/text_similarity_reranker and OpenSearch no retrievers at all:
    then the engine's own error must come back, byte for byte."""
    body = {"retriever": RETRIEVERS[kind], "size": 20}
    mine = httpx.post(f"{proxy.url}/{corpus_index}/_search", json=body)
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", json=body)
    assert mine.status_code == theirs.status_code
    if theirs.status_code != 200:
        assert mine.content == theirs.content
        expected = "engine_reranker" if kind == "text_similarity_reranker" else "engine_error"
        assert (mine.headers["x-rerank"], mine.headers["x-rerank-reason"]) == ("bypass", expected)
        return
    assert mine.headers["x-rerank"] in ("reranked", "cached")
    assert without_volatile(mine.json()) == without_volatile(theirs.json())
    engine_ids = [h["_id"] for h in theirs.json()["hits"]["hits"]]
    assert [h["_id"] for h in mine.json()["hits"]["hits"]] == expected_order("jet engine noise", engine_ids)


def test_engine_refusing_the_candidate_request_answers_the_clients_own(engine, proxy, index_name):
    """A window above index.max_result_window: the engine refuses the candidate fetch, but the
    client's own page is fine, so the client gets the engine's answer to it."""
    created = httpx.put(f"{engine.url}/{index_name}", json={"settings": {"index.max_result_window": 5}})
    assert created.status_code == 200, created.text
    httpx.post(f"{engine.url}/{index_name}/_doc?refresh=true", json={"body": "jet engine"}).raise_for_status()
    body = {"query": {"match": {"body": "jet"}}, "size": 3}
    mine = httpx.post(f"{proxy.url}/{index_name}/_search", json=body)
    theirs = httpx.post(f"{engine.url}/{index_name}/_search", json=body)
    assert mine.status_code == theirs.status_code == 200
    assert (mine.headers["x-rerank"], mine.headers["x-rerank-reason"]) == ("bypass", "engine_error")
    assert without_volatile(mine.json()) == without_volatile(theirs.json())


def _bool_nest(levels: int) -> bytes:
    """A query nested `levels` bool/must pairs deep (JSON depth 2 * levels + 3)."""
    return (b'{"query":' + b'{"bool":{"must":' * levels + b'{"match":{"body":"jet"}}' + b"}}" * levels + b"}")


BODIES = {
    "duplicate_top": b'{"size":1,"size":2,"query":{"match":{"body":"jet"}}}',
    "duplicate_spaced": b'{"query" : {"match" : {"body" : "jet", "body" : "noise"}}}',
    "size_1e3": b'{"size":1e3,"query":{"match":{"body":"jet engine"}}}',
    "size_3.0": b'{"size":3.0,"query":{"match":{"body":"jet engine"}}}',
    "size_3.5_from_1e0": b'{"size":3.5,"from":1e0,"query":{"match":{"body":"jet engine"}}}',
    "size_string_float": b'{"size":"3.0","query":{"match":{"body":"jet engine"}}}',
    "size_out_of_range": b'{"size":1e30,"query":{"match":{"body":"jet"}}}',
    "size_not_a_number": b'{"size":"many","query":{"match":{"body":"jet"}}}',
    "lone_surrogate": b'{"query":{"match":{"body":"jet \\ud800"}}}',
    "depth_300": _bool_nest(149),
    "array_depth_1000": b'{"query":{"match":{"body":"jet"}},"x":' + b"[" * 1000 + b"]" * 1000 + b"}",
    "object_depth_1000": b'{"query":{"match":{"body":"jet"}},"ext":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
    "array_depth_5000": b"[" * 5000 + b"]" * 5000,
    "broken": b'{"query":',
}


@pytest.mark.parametrize("name", list(BODIES))
def test_bodies_answer_like_the_engine(engine, proxy, corpus_index, name):
    mine = post_raw(f"{proxy.url}/{corpus_index}/_search", BODIES[name], "application/json")
    theirs = post_raw(f"{engine.url}/{corpus_index}/_search", BODIES[name], "application/json")
    assert mine.status_code == theirs.status_code, (mine.text[:300], theirs.text[:300])
    assert mine.status_code < 500
    if theirs.status_code != 200:
        assert mine.json()["error"]["type"] == theirs.json()["error"]["type"]
        assert mine.json()["error"]["reason"] == theirs.json()["error"]["reason"]
        assert mine.headers["x-rerank"] == "bypass"
        return
    assert len(mine.json()["hits"]["hits"]) == len(theirs.json()["hits"]["hits"])
    if name.startswith("size_"):
        assert mine.headers["x-rerank"] in ("reranked", "cached")   # accepted as the engine accepts it
        assert mine.json()["hits"]["total"] == theirs.json()["hits"]["total"]


def test_query_nested_1000_levels_is_elasticsearchs_own_400(es_engine, index_name):
    """Elasticsearch refuses queries nested past indices.query.bool.max_nested_depth itself; the
    proxy passes the body on. Not run against OpenSearch 2.19: the same body, sent to it directly,
    killed the node (no nesting limit for bool queries; the stack overflowed)."""
    load_corpus(es_engine.url, index_name)
    nested = _bool_nest(499)
    with run_proxy(proxy_settings(es_engine.url), reranker=OverlapReranker()) as proxy:
        mine = post_raw(f"{proxy.url}/{index_name}/_search", nested, "application/json")
    theirs = post_raw(f"{es_engine.url}/{index_name}/_search", nested, "application/json")
    assert mine.status_code == theirs.status_code == 400
    assert mine.json() == theirs.json()
    assert mine.headers["x-rerank"] == "bypass"


@pytest.mark.parametrize("name", ["duplicate_top", "lone_surrogate", "depth_300", "object_depth_1000"])
def test_msearch_lines_answer_like_the_engine(engine, proxy, corpus_index, name):
    content = f'{{"index": "{corpus_index}"}}\n'.encode() + BODIES[name] + b"\n"
    mine = post_raw(f"{proxy.url}/_msearch", content, "application/x-ndjson")
    theirs = post_raw(f"{engine.url}/_msearch", content, "application/x-ndjson")
    assert mine.status_code == theirs.status_code
    assert mine.status_code < 500
    assert without_volatile(mine.json()) == without_volatile(theirs.json())


def test_searches_not_reranked_say_so(engine, proxy, corpus_index):
    none = httpx.post(f"{proxy.url}/{corpus_index}/_search", json={"query": {"match": {"body": "zebra"}}})
    assert none.status_code == 200
    assert none.json()["hits"]["hits"] == []
    assert (none.headers["x-rerank"], none.headers["x-rerank-reason"]) == ("lexical", "no_hits")
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 20}
    lexical = httpx.post(f"{proxy.url}/{corpus_index}/_search", json={**body, "rerank": {"score_mode": "lexical"}})
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", json=body)
    assert (lexical.headers["x-rerank"], lexical.headers["x-rerank-reason"]) == ("lexical", "score_mode")
    assert [h["_id"] for h in lexical.json()["hits"]["hits"]] == [h["_id"] for h in theirs.json()["hits"]["hits"]]
    missing = httpx.post(f"{proxy.url}/{corpus_index}-missing/_search", json=body)
    assert missing.status_code == 404
    assert (missing.headers["x-rerank"], missing.headers["x-rerank-reason"]) == ("bypass", "engine_error")


FIELD_FORMS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {  # name: (body fields, URL parameters)
    "stored_fields": ({"stored_fields": ["title"]}, {}),
    "stored_fields_empty": ({"stored_fields": []}, {}),
    "stored_fields_url": ({}, {"stored_fields": "year"}),
    "stored_fields_and_source": ({"stored_fields": ["title"], "_source": ["meta.*"]}, {}),
    "stored_fields_and_url_source": ({"stored_fields": ["title"]}, {"_source": "title"}),
    "docvalue_fields_only": ({"docvalue_fields": ["year", "meta.author"], "_source": False}, {}),
    "fields_only": ({"fields": ["title", "meta.*"], "_source": False}, {}),
    "fields_and_filter_path": ({"fields": ["title"], "_source": False}, {"filter_path": "hits.hits.fields"}),
}


@pytest.mark.parametrize("name", list(FIELD_FORMS))
def test_field_only_searches_are_reranked_and_answer_like_the_engine(engine, proxy, corpus_index, name):
    """The proxy fetches `_source` for the text and returns what the client asked for."""
    extra, params = FIELD_FORMS[name]
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 20, **extra}
    mine = httpx.post(f"{proxy.url}/{corpus_index}/_search", params=params, json=body)
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", params=params, json=body)
    assert mine.status_code == theirs.status_code == 200
    assert mine.headers["x-rerank"] in ("reranked", "cached"), mine.headers.get("x-rerank-reason")
    assert shape(mine.json()) == shape(theirs.json())
    assert without_volatile(mine.json()) == without_volatile(theirs.json())
    if "filter_path" not in params:
        engine_ids = [h["_id"] for h in theirs.json()["hits"]["hits"]]
        assert [h["_id"] for h in mine.json()["hits"]["hits"]] == expected_order("jet engine noise", engine_ids)


def test_stored_fields_none_is_the_engines_answer(engine, proxy, corpus_index):
    body = {"query": {"match": {"body": "jet engine noise"}}, "stored_fields": "_none_"}
    mine = httpx.post(f"{proxy.url}/{corpus_index}/_search", json=body)
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", json=body)
    assert (mine.headers["x-rerank"], mine.headers["x-rerank-reason"]) == ("bypass", "stored_fields_none")
    assert mine.status_code == theirs.status_code == 200
    assert without_volatile(mine.json()) == without_volatile(theirs.json())
