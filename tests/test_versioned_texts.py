"""Hit texts remembered by document version: reused while a document is unchanged, rebuilt when it
changes, and the version fields the proxy asks for never shown to a client that did not."""

from __future__ import annotations

import hashlib

import httpx

from rerank_proxy.config import IndexRule
from rerank_proxy.search.text.hit_text import VersionedTexts, hit_texts
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _hit(doc_id: str, seq_no: int | None, title: str) -> dict:
    hit: dict = {"_index": "books", "_id": doc_id, "_source": {"title": title}}
    if seq_no is not None:
        hit.update(_seq_no=seq_no, _primary_term=1)
    return hit


def test_a_known_version_reuses_its_text_and_a_new_one_rebuilds_it():
    rule = IndexRule("*")
    memo = VersionedTexts(_digest)
    first, _ = memo.texts([_hit("1", 4, "wing flutter")], rule)
    again, digests = memo.texts([{**_hit("1", 4, "ignored: same version"), "_source": {"title": "other"}}], rule)
    assert again == first == ["wing flutter"]
    assert digests == [_digest("wing flutter")]
    updated, digests = memo.texts([_hit("1", 5, "jet noise")], rule)
    assert updated == ["jet noise"]
    assert digests == [_digest("jet noise")]


def test_hits_without_versions_and_other_rules_are_built_afresh():
    memo = VersionedTexts(_digest)
    hits = [_hit("1", None, "wing"), _hit("2", None, "jet"), "not a hit"]
    texts, digests = memo.texts(hits, IndexRule("*"))
    assert texts == hit_texts(hits, IndexRule("*"))
    assert len(memo) == 0
    assert digests == [_digest(t) for t in texts]
    versioned = [{**_hit("3", 1, "wing"), "_source": {"title": "wing", "body": "flutter"}}]
    memo.texts(versioned, IndexRule("*"))
    titled, _ = memo.texts(versioned, IndexRule("*", fields=("title",)))   # another rule: not the memo's text
    assert titled == ["wing"]


def test_the_memo_is_bounded():
    memo = VersionedTexts(_digest, max_entries=10)
    for n in range(35):
        memo.texts([_hit(str(n), 1, f"doc {n}")], IndexRule("*"))
    assert len(memo) <= 10


def test_an_updated_document_is_scored_on_its_new_text(engine, index_name):
    load_corpus(engine.url, index_name)
    reranker = OverlapReranker()
    search = {"query": {"bool": {"should": [{"match": {"title": "zebra"}}, {"match_all": {}}]}}, "size": 3}
    with run_proxy(proxy_settings(engine.url), reranker=reranker) as running, \
            httpx.Client(base_url=running.url, timeout=30) as client:
        first = client.post(f"/{index_name}/_search", json=search)
        assert first.headers["x-rerank"] == "reranked"
        assert all("_seq_no" not in h and "_primary_term" not in h for h in first.json()["hits"]["hits"])
        assert client.post(f"/{index_name}/_search", json=search).headers["x-rerank"] == "cached"
        # Rewrite one document so that it alone matches the query words: its new text must be scored.
        client.put(f"/{index_name}/_doc/7?refresh=true", json={"title": "zebra", "body": "zebra stripes"})
        sent_before = reranker.documents
        after = client.post(f"/{index_name}/_search", json=search)
        assert reranker.documents == sent_before + 1           # only the changed document was sent
        assert after.json()["hits"]["hits"][0]["_id"] == "7"
        asked = client.post(f"/{index_name}/_search", json={**search, "seq_no_primary_term": True})
        assert all(isinstance(h["_seq_no"], int) and h["_primary_term"] >= 1 for h in asked.json()["hits"]["hits"])
