"""The console's query template (the app's own DSL with `{{query}}`), against a real proxy and both engines.

Every expected column is the engine's own answer to the template filled in here by plain text
substitution (the query JSON-escaped into the template's text), so the proxy's structural filling is
checked against an independent one, for single comparisons, query-set runs and BEIR runs alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rerank_proxy.config import IndexRule
from rerank_proxy.search.text.hit_text import hit_text
from tests.fixtures.engines import delete_indices
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker, overlap_score
from tests.test_console import (
    API,
    AUTH,
    QUERY,
    TOKEN,
    WINDOW,
    batch_events,
    compare,
    linear_ndcg,
    load_console_corpus,
    with_judgments_file,
)

# The app's search: title boosted, only papers from 1953 on (the extra docs have no year at all).
CLAUSE: dict[str, Any] = {"bool": {
    "must": {"multi_match": {"query": "{{query}}", "fields": ["title^3", "body"]}},
    "filter": {"range": {"year": {"gte": 1953}}}}}
BODY: dict[str, Any] = {"query": {"match": {"body": {"query": "{{ query }}", "operator": "or"}}},
                        "post_filter": {"term": {"meta.tags": "aero"}}, "from": 4, "size": 2}


def filled(template: dict[str, Any], query: str) -> dict[str, Any]:
    """The template with `query` put in by text substitution, JSON-escaped (the documented meaning)."""
    text = json.dumps(template)
    for placeholder in ("{{query}}", "{{ query }}"):
        text = text.replace(placeholder, json.dumps(query)[1:-1])
    return json.loads(text)


def engine_ids(url: str, index: str, body: dict[str, Any]) -> list[str]:
    response = httpx.post(f"{url}/{index}/_search", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return [h["_id"] for h in response.json()["hits"]["hits"]]


def expected(url: str, index: str, template: dict[str, Any], query: str) -> tuple[list[str], list[str]]:
    """(lexical, reranked) ids over the window for the app's search, computed without the proxy."""
    body = filled(template, query)
    if "query" not in body:
        body = {"query": body}
    body = {**{k: v for k, v in body.items() if k not in ("from", "size")}, "size": WINDOW}
    response = httpx.post(f"{url}/{index}/_search", json=body, timeout=30)
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]["hits"]
    lexical = [h["_id"] for h in hits]
    scores = {h["_id"]: overlap_score(query, hit_text(h["_source"], IndexRule("*"))) for h in hits}
    return lexical, sorted(lexical, key=lambda i: (-scores[i], lexical.index(i)))


@pytest.fixture(scope="module")
def index(engine) -> Iterator[str]:
    name = f"t-console-tpl-{uuid.uuid4().hex[:8]}"
    load_console_corpus(engine.url, name)
    yield name
    delete_indices(engine.url, name)


@pytest.fixture(scope="module")
def console(engine, tmp_path_factory) -> Iterator[httpx.Client]:
    monkeypatch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("console-template") / "judgments.sqlite3"
    settings = with_judgments_file(proxy_settings(engine.url, ADMIN_TOKEN=TOKEN), path, monkeypatch)
    with (
        run_proxy(settings, reranker=OverlapReranker()) as running,
        httpx.Client(base_url=running.url, headers=AUTH, timeout=60) as client,
    ):
        yield client
    monkeypatch.undo()


@pytest.mark.parametrize("template", [CLAUSE, BODY], ids=["clause", "search-body"])
def test_template_is_the_search_of_both_columns(console, engine, index, template):
    lexical, reranked = expected(engine.url, index, template, QUERY)
    default = engine_ids(engine.url, index, {"size": WINDOW, "query": {"multi_match": {"query": QUERY,
                                                                                       "lenient": True}}})
    assert lexical != default, "the app's search must retrieve differently from the default multi_match"
    for sent in (template, json.dumps(template)):  # an object, or the JSON text a textarea holds
        result = compare(console, index=index, query=QUERY, window=WINDOW, query_template=sent)
        assert [h["id"] for h in result["lexical"]] == lexical[:10]
        assert [h["id"] for h in result["reranked"]] == reranked[:10]
        assert result["candidates"] == len(lexical)
        assert result["query"] == QUERY
        assert result["search"]["size"] == WINDOW
        assert "from" not in result["search"]


def test_query_is_json_escaped_into_the_template(console, engine, index):
    query = 'noise "jet\\engine" {{query}} \u00e9'
    result = compare(console, index=index, query=query, window=WINDOW, query_template=CLAUSE)
    assert result["search"]["query"] == filled(CLAUSE, query), "every placeholder holds the query text, verbatim"
    assert result["search"]["query"]["bool"]["must"]["multi_match"]["query"] == query
    assert [h["id"] for h in result["lexical"]] == expected(engine.url, index, CLAUSE, query)[0][:10]


def test_the_fixed_dsl_clause_still_works(console, engine, index):
    result = compare(console, index=index, window=WINDOW, dsl={"match": {"title": "noise"}})
    assert result["query"] == "noise"
    assert [h["id"] for h in result["lexical"]] == engine_ids(
        engine.url, index, {"size": WINDOW, "query": {"match": {"title": "noise"}}})[:10]


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"query_template": '{"match": {"title": {{query}}}}'}, 400, "not JSON once {{query}} is filled in"),
    ({"query_template": '{"match": {"title": "x"'}, 400, "not JSON"),
    ({"query_template": {"match": {"title": "noise"}}}, 400, "no {{query}} placeholder"),
    ({"query_template": ["{{query}}"]}, 400, "must be a JSON object"),
    ({"query_template": {"match": {"title": "{{query}}"}, "term": {"x": 1}}}, 400, "one query clause"),
    ({"query_template": CLAUSE, "dsl": {"match_all": {}}}, 400, "not both"),
    ({"query_template": "x" * 100_001}, 400, "longer than"),
])
def test_bad_templates_are_400s_in_the_engine_error_shape(console, index, body, status, reason):
    response = console.post(f"{API}/compare", json={"index": index, "query": QUERY, **body})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status"] == status
    assert set(error) == {"error", "status"}
    assert error["error"]["root_cause"][0]["reason"] == error["error"]["reason"]
    assert error["error"]["type"] in ("x_content_parse_exception", "illegal_argument_exception")
    assert reason in error["error"]["reason"]


def test_a_template_needs_a_query_and_a_batch_refuses_a_fixed_clause(console, index):
    alone = console.post(f"{API}/compare", json={"index": index, "query_template": CLAUSE})
    assert alone.status_code == 400
    assert "{{query}}" in alone.json()["error"]["reason"]
    fixed = console.post(f"{API}/batch", json={"index": index, "queries": [QUERY], "dsl": {"match_all": {}}})
    assert fixed.status_code == 400
    assert "[query_template]" in fixed.json()["error"]["reason"]


def _qrels(engine_url: str, index: str, queries: dict[str, str]) -> dict[str, dict[str, int]]:
    """For each query: grade 2 on the template's last top-10 hit and 1 on the default search's first
    hit, so a run with the template and one without it score differently."""
    qrels = {}
    for qid, text in queries.items():
        mine = expected(engine_url, index, CLAUSE, text)[0][:10]
        default = engine_ids(engine_url, index, {"size": 10, "query": {"multi_match": {"query": text}}})
        qrels[qid] = {mine[-1]: 2, default[0]: 1}
    return qrels


def test_query_set_and_beir_runs_use_the_template(console, engine, index, tmp_path):
    queries = {"t1": QUERY, "t2": "flutter wing panel"}
    qrels = _qrels(engine.url, index, queries)
    want = {}
    for qid, text in queries.items():
        lexical, reranked = expected(engine.url, index, CLAUSE, text)
        want[qid] = (linear_ndcg(lexical, qrels[qid]), linear_ndcg(reranked, qrels[qid]))

    tsv = "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, docs in qrels.items()
                                                     for d, g in docs.items())
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                    for q, t in queries.items()))
    (tmp_path / "qrels" / "test.tsv").write_text(tsv)
    inline = {"queries": [{"id": q, "text": t} for q, t in queries.items()], "qrels": tsv}
    for source in (inline, {"beir_path": str(tmp_path)}):
        with_template = batch_events(console, {"index": index, "window": WINDOW, "query_template": CLAUSE,
                                               **source})[-1]
        without = batch_events(console, {"index": index, "window": WINDOW, **source})[-1]
        got = {r["id"]: (r["lexical"], r["reranked"]) for r in with_template["rows"]}
        assert got == {q: pytest.approx(v) for q, v in want.items()}
        plain = {r["id"]: (r["lexical"], r["reranked"]) for r in without["rows"]}
        assert plain != got, "without the template the run searches differently"
