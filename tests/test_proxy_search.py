"""Reranked searches through the proxy, driven by the official Python clients, against both engines.

Every assertion compares the proxy's answer with the engine's own answer to the same request, so the
only differences allowed are the intended ones: hit order, `_score`/`max_score`, and X-Rerank headers.
"""

from __future__ import annotations

import copy

import httpx
import pytest

from tests.support_data import CORPUS, expected_order, official_client

QUERY = {"match": {"body": "jet engine noise"}}


@pytest.fixture
def via_proxy(engine, proxy):
    client = official_client(engine.kind, proxy.url)
    yield client
    client.close()


@pytest.fixture
def direct(engine):
    client = official_client(engine.kind, engine.url)
    yield client
    client.close()


def _hits(response) -> list[dict]:
    return response["hits"]["hits"]


def search(client, index: str, body: dict) -> dict:
    """One call shape for both official clients (both accept index= and body=)."""
    response = client.search(index=index, body=copy.deepcopy(body))
    return getattr(response, "body", response)


def msearch(client, searches: list[dict]) -> list[dict]:
    response = client.msearch(body=copy.deepcopy(searches))
    return getattr(response, "body", response)["responses"]


def _without_scores(hit: dict) -> dict:
    return {k: v for k, v in hit.items() if k != "_score"}


def test_response_differs_only_in_order_and_scores(corpus_index, via_proxy, direct):
    body = {"query": QUERY, "size": 10, "aggs": {"years": {"terms": {"field": "year"}}},
            "highlight": {"fields": {"body": {}}}, "track_total_hits": True}
    mine = search(via_proxy, corpus_index, body)
    theirs = search(direct, corpus_index, body)
    for key in set(mine) | set(theirs):
        if key in ("took", "hits"):
            continue
        assert mine[key] == theirs[key], key
    assert mine["hits"]["total"] == theirs["hits"]["total"]
    by_id = {h["_id"]: h for h in _hits(theirs)}
    assert sorted(by_id) == sorted(h["_id"] for h in _hits(mine))  # window > corpus: same set
    for hit in _hits(mine):
        assert _without_scores(hit) == _without_scores(by_id[hit["_id"]])
    assert [h["_id"] for h in _hits(mine)] == expected_order("jet engine noise", [h["_id"] for h in _hits(theirs)])
    assert mine["hits"]["max_score"] == max(h["_score"] for h in _hits(mine))


def test_result_header_says_what_happened(engine, fresh_proxy, corpus_index):
    response = httpx.post(f"{fresh_proxy.url}/{corpus_index}/_search", json={"query": QUERY})
    assert response.headers["x-rerank"] == "reranked"     # an empty cache: the provider scored them
    assert "engine;dur=" in response.headers["server-timing"]
    again = httpx.post(f"{fresh_proxy.url}/{corpus_index}/_search", json={"query": QUERY})
    assert again.headers["x-rerank"] == "cached"
    assert again.json()["hits"] == response.json()["hits"]


def test_pages_come_from_the_reranked_window(engine, proxy, corpus_index, direct):
    settings_window = 6
    ids = []
    for start in range(0, len(CORPUS), 4):
        response = httpx.post(f"{proxy.url}/{corpus_index}/_search",
                              json={"query": {"match": {"body": "engine"}}, "from": start, "size": 4,
                                    "rerank": {"window": settings_window}})
        assert response.status_code == 200
        ids += [h["_id"] for h in response.json()["hits"]["hits"]]
    engine_hits = search(direct, corpus_index, {"query": {"match": {"body": "engine"}}, "size": 100})
    engine_ids = [h["_id"] for h in _hits(engine_hits)]
    assert sorted(ids) == sorted(engine_ids)
    assert len(ids) == len(set(ids))
    assert ids[:settings_window] == expected_order("engine", engine_ids[:settings_window])
    assert ids[settings_window:] == engine_ids[settings_window:]


@pytest.mark.parametrize("spec", [False, ["title"], {"excludes": ["body"]}, {"includes": ["meta.*"]}, "ti*"])
def test_source_filtering_matches_the_engine(corpus_index, via_proxy, direct, spec):
    body = {"query": QUERY, "_source": spec, "size": 20}
    mine = search(via_proxy, corpus_index, body)
    theirs = search(direct, corpus_index, body)
    by_id = {h["_id"]: h.get("_source", "<absent>") for h in _hits(theirs)}
    assert {h["_id"]: h.get("_source", "<absent>") for h in _hits(mine)} == by_id


def test_url_q_parameter_and_params(engine, fresh_proxy, corpus_index, direct):
    response = httpx.get(f"{fresh_proxy.url}/{corpus_index}/_search", params={"q": "body:engine", "size": "3"})
    assert response.status_code == 200
    assert response.headers["x-rerank"] == "reranked"
    theirs = httpx.get(f"{engine.url}/{corpus_index}/_search", params={"q": "body:engine", "size": "100"}).json()
    assert [h["_id"] for h in response.json()["hits"]["hits"]] == \
        expected_order("engine", [h["_id"] for h in _hits(theirs)])[:3]


def test_msearch_reranks_each_sub_search_in_order(corpus_index, via_proxy, direct):
    searches = [{"index": corpus_index}, {"query": QUERY, "size": 3},
                {"index": corpus_index}, {"query": {"match_all": {}}, "size": 2},
                {"index": "no-such-index-anywhere"}, {"query": QUERY}]
    mine = msearch(via_proxy, searches)
    theirs = msearch(direct, searches)
    assert len(mine) == 3
    engine_ids = [h["_id"] for h in _hits(search(direct, corpus_index, {"query": QUERY, "size": 100}))]
    assert [h["_id"] for h in mine[0]["hits"]["hits"]] == expected_order("jet engine noise", engine_ids)[:3]
    assert [h["_id"] for h in mine[1]["hits"]["hits"]] == [h["_id"] for h in theirs[1]["hits"]["hits"]]
    assert mine[2]["status"] == theirs[2]["status"] == 404


@pytest.mark.parametrize("extra", [{"sort": [{"year": "asc"}]}, {"size": 0}, {"rerank": False}])
def test_bypassed_searches_are_the_engines_own(engine, proxy, corpus_index, extra):
    body = {"query": QUERY, **extra}
    mine = httpx.post(f"{proxy.url}/{corpus_index}/_search", json=body)
    plain = {k: v for k, v in body.items() if k != "rerank"}
    theirs = httpx.post(f"{engine.url}/{corpus_index}/_search", json=plain)
    assert mine.headers["x-rerank"] == "bypass"
    a, b = mine.json(), theirs.json()
    a.pop("took"), b.pop("took")
    assert a == b


def test_explain_only_when_asked(engine, proxy, corpus_index):
    plain = httpx.post(f"{proxy.url}/{corpus_index}/_search", json={"query": QUERY}).json()
    assert all("_rerank" not in h for h in plain["hits"]["hits"])
    explained = httpx.post(f"{proxy.url}/{corpus_index}/_search",
                           json={"query": QUERY, "rerank": {"explain": True}}).json()
    assert all({"lexical_rank", "lexical_score", "score"} <= set(h["_rerank"]) for h in explained["hits"]["hits"])


@pytest.mark.parametrize("mode", ["rerank", "blend"])
def test_hits_with_no_text_come_last_in_lexical_order(engine, fresh_proxy, index_name, mode):
    """Blank texts are never sent; they get the lowest score of the others and rank after them."""
    docs = [{"year": 1990}, {"title": "jet engine noise"}, {"year": 1991}, {"title": "wing"}, {"title": "  "}]
    lines = []
    for i, doc in enumerate(docs):
        lines += [f'{{"index": {{"_id": "{i}"}}}}', httpx.Response(200, json=doc).text]
    bulk = httpx.post(f"{engine.url}/{index_name}/_bulk?refresh=true", content="\n".join(lines) + "\n",
                      headers={"content-type": "application/x-ndjson"})
    assert bulk.status_code == 200
    assert not bulk.json()["errors"]
    direct_order = httpx.post(f"{engine.url}/{index_name}/_search", json={"query": {"match_all": {}}}).json()
    blanks = [h["_id"] for h in direct_order["hits"]["hits"] if h["_id"] in ("0", "2", "4")]
    body = {"query": {"match_all": {}}, "rerank": {"score_mode": mode}}
    response = httpx.post(f"{fresh_proxy.url}/{index_name}/_search", json=body,
                          headers={"X-Rerank-Query": "jet engine"})
    assert response.status_code == 200
    assert response.headers["x-rerank"] == "reranked"
    hits = response.json()["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["1", "3", *blanks]
    assert [h["_score"] for h in hits[2:]] == [hits[1]["_score"]] * 3


def test_query_override_header(engine, fresh_proxy, corpus_index, direct):
    response = httpx.post(f"{fresh_proxy.url}/{corpus_index}/_search", json={"query": {"match_all": {}}},
                          headers={"X-Rerank-Query": "wing flutter"})
    assert response.headers["x-rerank"] == "reranked"
    ids = [h["_id"] for h in _hits(search(direct, corpus_index, {"query": {"match_all": {}}, "size": 100}))]
    assert [h["_id"] for h in response.json()["hits"]["hits"]] == expected_order("wing flutter", ids)[:10]


def test_engine_errors_pass_through(engine, proxy):
    body = {"query": QUERY}
    mine = httpx.post(f"{proxy.url}/no-such-index-xyz/_search", json=body)
    theirs = httpx.post(f"{engine.url}/no-such-index-xyz/_search", json=body)
    assert mine.status_code == theirs.status_code == 404
    assert mine.json() == theirs.json()


@pytest.mark.parametrize(("payload", "status"), [
    (b"{not json", 400), (b"\xff\xfe{}", 400), (b"[" * 5000 + b"]" * 5000, 400),
    (b'{"query": {"match": {"body": "x"}}, "rerank": {"colour": 1}}', 400),
    (b'{"query": {"match": {"body": "x"}}, "size": -4}', 400),
])
def test_bad_input_gets_an_engine_style_error(engine, proxy, corpus_index, payload, status):
    response = httpx.post(f"{proxy.url}/{corpus_index}/_search", content=payload,
                          headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()
    assert error["status"] == status
    assert error["error"]["type"]
    assert error["error"]["reason"]
    assert "Traceback" not in response.text


def test_broken_msearch_ndjson(engine, proxy, corpus_index):
    response = httpx.post(f"{proxy.url}/_msearch", content=b'{"index":"a"}\n{"query":\n',
                          headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 400
    assert response.json()["error"]["type"]
