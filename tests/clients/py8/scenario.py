"""One scenario (create, bulk, refresh, search, msearch, get, update, get, delete, count) run with
elasticsearch-py 8.x, printing one JSON object on stdout.

    python scenario.py --kind elasticsearch --url URL --index NAME --corpus FILE

Runs in its own venv (tests/clients/py8/.venv) because the project's venv has elasticsearch-py 9.
Against Elasticsearch 9 the 8.x client sends `compatible-with=8` media types, which the engine (and
so the proxy) must accept. The corpus file is a JSON list of {"_id": ..., "_source": {...}}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from elasticsearch import ApiError, Elasticsearch

QUERY = "jet engine noise"
UPDATE_ID = "3"
MAPPINGS = {"properties": {"title": {"type": "text"}, "body": {"type": "text"}, "year": {"type": "integer"}}}
SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}
PARTIAL_DOC = {"title": "Jet mixing, revised", "year": 2000}


def hits(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"ids": [], "scores": [], "sources": {}}
    for hit in body["hits"]["hits"]:
        out["ids"].append(hit["_id"])
        out["scores"].append(hit.get("_score"))
        out["sources"][hit["_id"]] = hit.get("_source")
    total = body["hits"].get("total")
    out["total"] = total["value"] if isinstance(total, dict) else total
    out["max_score"] = body["hits"].get("max_score")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True, choices=["elasticsearch"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--corpus", required=True)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        corpus = json.load(f)
    index = args.index
    match = {"match": {"body": QUERY}}
    steps: dict[str, dict[str, Any]] = {}

    def step(name: str, call: Callable[[], Any], summarize: Callable[[Any], dict[str, Any]]) -> None:
        out: dict[str, Any] = {}
        try:
            response = call()
            out.update(summarize(response.body))
            out.update(ok=response.meta.status < 300, status=response.meta.status,
                       rerank=response.meta.headers.get("x-rerank"))
        except ApiError as exc:
            out.update(ok=False, error=f"{type(exc).__name__}: {exc}", status=exc.meta.status,
                       rerank=exc.meta.headers.get("x-rerank"))
        except Exception as exc:  # noqa: BLE001 (any client failure is this step's reported outcome: connection, product check, serialisation)
            out.update(ok=False, error=f"{type(exc).__name__}: {exc}", status=None, rerank=None)
        steps[name] = out

    es = Elasticsearch(args.url, request_timeout=30, max_retries=0)
    try:
        step("create", lambda: es.indices.create(index=index, settings=SETTINGS, mappings=MAPPINGS),
             lambda b: {"acknowledged": b["acknowledged"]})
        operations: list[dict[str, Any]] = []
        for doc in corpus:
            operations += [{"index": {"_index": index, "_id": doc["_id"]}}, doc["_source"]]
        step("bulk", lambda: es.bulk(operations=operations),
             lambda b: {"errors": b["errors"], "items": len(b["items"])})
        step("refresh", lambda: es.indices.refresh(index=index), lambda b: {})
        step("search", lambda: es.search(index=index, query=match, size=5), hits)
        step("search_window", lambda: es.search(index=index, query=match, size=20), hits)
        step("msearch", lambda: es.msearch(searches=[{"index": index}, {"query": match, "size": 5},
                                                      {"index": index}, {"query": {"match_all": {}}, "size": 2}]),
             lambda b: {"responses": [{"status": r.get("status"), "error": r["error"]["type"]} if "error" in r
                                      else {"status": r.get("status"), **hits(r)} for r in b["responses"]]})

        def summarize_get(b: Any) -> dict[str, Any]:
            return {"found": b["found"], "source": b.get("_source"), "version": b.get("_version")}

        step("get", lambda: es.get(index=index, id=UPDATE_ID), summarize_get)
        step("update", lambda: es.update(index=index, id=UPDATE_ID, doc=PARTIAL_DOC),
             lambda b: {"result": b["result"], "version": b["_version"]})
        step("get_updated", lambda: es.get(index=index, id=UPDATE_ID), summarize_get)
        step("delete", lambda: es.delete(index=index, id=UPDATE_ID, refresh=True),
             lambda b: {"result": b["result"], "version": b["_version"]})
        step("count", lambda: es.count(index=index), lambda b: {"count": b["count"]})
    finally:
        es.close()
    print(json.dumps({"client": f"elasticsearch-py {version('elasticsearch')}", "kind": args.kind,
                      "headers_exposed": True, "headers_via": "response.meta.headers", "steps": steps}))


if __name__ == "__main__":
    main()
