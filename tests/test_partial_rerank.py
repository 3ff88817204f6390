"""A window partly cold is reranked among its warm hits; the cold hits keep their lexical places."""

from __future__ import annotations

from pathlib import Path

import httpx

from rerank_proxy.config import load_settings
from rerank_proxy.search.merge import rerank_order
from rerank_proxy.search.partial import MAX_COLD_SHARE, PARTIAL_REASON, partial_pins
from tests.fixtures.proxy import run_proxy
from tests.support_wait import metric_samples, wait_until
from tests.test_cold_start import bulk_load, synthetic_corpus


def test_pinned_positions_keep_their_place_and_the_others_fill_the_rest_by_score():
    scores = [0.1, 0.0, 0.9, 0.0, 0.5]
    assert rerank_order(scores, pinned=[1, 3]) == [2, 1, 4, 3, 0]
    assert rerank_order(scores, last=[2], pinned=[1]) == [4, 1, 0, 3, 2]   # a blank still goes last of the movable


def test_a_window_is_partly_reranked_only_while_at_most_the_bound_is_cold():
    texts = [f"doc {i}" for i in range(10)]
    bound = int(MAX_COLD_SHARE * len(texts))
    assert partial_pins(texts, frozenset({"doc 2", "doc 7"})) == [2, 7]
    assert partial_pins(texts, frozenset(texts[:bound])) == list(range(bound))
    assert partial_pins(texts, frozenset(texts[:bound + 1])) == []   # too cold: lexical order
    assert partial_pins(texts, frozenset()) == []
    assert partial_pins(texts, frozenset({"not in the window"})) == []


def _search(client: httpx.Client, url: str, index: str, *, explain: bool = False) -> httpx.Response:
    # size 100: the page is the whole window
    body: dict = {"query": {"match": {"body": "wing flow"}}, "size": 100, "_source": False}
    if explain:
        body["rerank"] = {"explain": True}
    response = client.post(f"{url}/{index}/_search", json=body)
    assert response.status_code == 200, response.text
    return response


def test_new_cold_documents_keep_their_lexical_places_while_the_warm_ones_are_reranked(
        es_engine, index_name: str, tmp_path: Path):
    """A warm window, then a few new documents matching the query (cold): the next search is
    reranked (vectors_partial), the new hits exactly where the engine put them; once they are
    embedded the search is wholly reranked again."""
    docs = synthetic_corpus(60)
    for doc in docs:
        doc["body"] += " wing flow"
    bulk_load(es_engine.url, index_name, docs)
    settings = load_settings({"UPSTREAM_URLS": es_engine.url, "LOCAL_COLD_WAIT_MS": "0",
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    with run_proxy(settings) as proxy, httpx.Client(timeout=60) as client:
        def whole(response: httpx.Response) -> bool:
            outcome = response.headers.get("x-rerank")
            return outcome in ("reranked", "cached") and "x-rerank-reason" not in response.headers

        wait_until(lambda: whole(_search(client, proxy.url, index_name)), "the first window warm", timeout_s=120,
                   interval_s=0)
        new = "\n".join(f'{{"index":{{"_id":"new-{i}"}}}}\n{{"title":"fresh {i}","body":"wing flow wing flow {i}"}}'
                        for i in range(4))
        bulked = client.post(f"{es_engine.url}/{index_name}/_bulk?refresh=true", content=new + "\n",
                             headers={"content-type": "application/x-ndjson"})
        assert not bulked.json()["errors"]
        engine_ids = [h["_id"] for h in _search(client, es_engine.url, index_name).json()["hits"]["hits"]]
        partial = _search(client, proxy.url, index_name, explain=True)
        assert partial.headers["x-rerank"] == "reranked"
        assert partial.headers["x-rerank-reason"] == PARTIAL_REASON
        hits = partial.json()["hits"]["hits"]
        cold = [n for n, h in enumerate(hits) if not h["_rerank"]["scored"]]
        assert {hits[n]["_id"] for n in cold} == {f"new-{i}" for i in range(4)}
        assert all(engine_ids[n] == hits[n]["_id"] for n in cold)           # in their lexical places
        warm_ids = [h["_id"] for n, h in enumerate(hits) if n not in cold]
        assert sorted(warm_ids) == sorted(i for n, i in enumerate(engine_ids) if n not in cold)
        assert warm_ids != [i for n, i in enumerate(engine_ids) if n not in cold]   # the warm ones moved
        shown = [h["_score"] for h in hits]
        assert shown == sorted(shown, reverse=True)                          # scores still descend
        counted = metric_samples(proxy.url)
        assert counted[("rerank_proxy_partial_reranks_total", (("reason", PARTIAL_REASON),))] >= 1
        wait_until(lambda: whole(_search(client, proxy.url, index_name)),
                   "the new documents embedded: a whole rerank", timeout_s=120, interval_s=0)
