"""A small corpus for integration tests, its loader, and the orders the overlap reranker must give."""

from __future__ import annotations

from typing import Any

import httpx

from rerank_proxy.config import IndexRule
from rerank_proxy.search.text.hit_text import hit_text
from rerank_proxy.search.text.mapping_fields import RERANK_TEXT_TYPES, TextPaths, answer_paths
from tests.support_rerankers import overlap_score

_TOPICS = [
    ("Jet engine noise at takeoff", "Measured noise of jet engines during takeoff and climb."),
    ("Engine inlet design", "Inlet design for a supersonic engine, with noise notes."),
    ("Wing flutter", "Flutter of swept wings at high subsonic speed."),
    ("Jet mixing", "Mixing of a hot jet with the surrounding air; engine exhaust noise."),
    ("Boundary layer transition", "Transition of the laminar boundary layer on a flat plate."),
    ("Engine engine engine", "An engine paper that repeats the word engine many times: engine."),
    ("Helicopter rotor noise", "Rotor blade noise of helicopters in forward flight."),
    ("Heat transfer", "Heat transfer in hypersonic flow over a blunt body, no engine involved."),
    ("Noise of jet engines", "Jet engine noise reduction with chevrons and mixers."),
    ("Shock waves", "Shock wave and boundary layer interaction at the engine intake."),
    ("Propeller design", "Design of quiet propellers; noise compared with a jet."),
    ("Panel flutter", "Panel flutter in supersonic flow, wing skin panels."),
]

CORPUS: list[dict[str, Any]] = [
    {"title": title, "body": body, "year": 1950 + i, "meta": {"author": f"author {i % 4}", "tags": ["aero", f"t{i}"]}}
    for i, (title, body) in enumerate(_TOPICS)
]


MAPPINGS = {"properties": {"title": {"type": "text"}, "body": {"type": "text"}, "year": {"type": "integer"},
                           "meta": {"properties": {"author": {"type": "keyword"}, "tags": {"type": "keyword"}}}}}
# What the proxy's default text is made of for this corpus: the fields MAPPINGS types as prose.
TEXT_PATHS = TextPaths(answer_paths({"corpus": {"mappings": MAPPINGS}}, RERANK_TEXT_TYPES))
DEFAULT_RULE = IndexRule(pattern="*", text_from_mapping=True)


def default_text(doc: dict[str, Any]) -> str:
    """The text a proxy on its defaults sends the reranker for a document of an index mapped by MAPPINGS."""
    return hit_text(doc, DEFAULT_RULE, TEXT_PATHS)


def load_corpus(url: str, index: str) -> None:
    """Create `index` with explicit mappings and the corpus (ids "0".."11"), refreshed."""
    with httpx.Client(base_url=url, timeout=30) as client:
        created = client.put(f"/{index}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                                "mappings": MAPPINGS})
        assert created.status_code == 200, created.text
        lines = []
        for i, doc in enumerate(CORPUS):
            lines.append(httpx.Response(200, json={"index": {"_id": str(i)}}).text)
            lines.append(httpx.Response(200, json=doc).text)
        bulk = client.post(f"/{index}/_bulk?refresh=true", content="\n".join(lines) + "\n",
                           headers={"content-type": "application/x-ndjson"})
        assert bulk.status_code == 200, bulk.text
        assert not bulk.json()["errors"], bulk.text


def expected_order(query: str, engine_ids: list[str]) -> list[str]:
    """The order the overlap reranker gives to the engine's candidates (ties keep engine order)."""
    scores = {i: overlap_score(query, default_text(CORPUS[int(i)])) for i in engine_ids}
    return sorted(engine_ids, key=lambda i: (-scores[i], engine_ids.index(i)))


def official_client(kind: str, url: str, **kwargs: Any) -> Any:
    """The official Python client of the engine kind, pointed at `url`."""
    if kind == "elasticsearch":
        from elasticsearch import Elasticsearch

        return Elasticsearch(url, request_timeout=30, **kwargs)
    from opensearchpy import OpenSearch

    return OpenSearch([url], timeout=30, **kwargs)
