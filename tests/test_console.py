"""The relevance console's API against a real proxy in front of both real engines.

The overlap reranker makes the reranked order known in advance, so every column the console shows
is checked against an independent computation: the engine's own answer to the same search, the
overlap scores of the same hit texts, and nDCG computed by hand.
"""

from __future__ import annotations

import io
import json
import math
import uuid
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_proxy.config import IndexRule, Settings
from rerank_proxy.console.beir import parse_qrels_tsv
from rerank_proxy.console.judgments import query_id
from rerank_proxy.console.ndcg import ndcg_at_k
from rerank_proxy.console.store import ConsoleDB
from rerank_proxy.search.text.hit_text import hit_text
from tests.fixtures.engines import delete_indices
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_data import DEFAULT_RULE, TEXT_PATHS, default_text, load_corpus
from tests.support_rerankers import OverlapReranker, overlap_score
from tests.support_wait import wait_until

TOKEN = "console-admin-7d1e0c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/_rerank/console/api"
QUERY = "jet engine noise"
WINDOW = 30
ANY_INDEX = DEFAULT_RULE  # the default rule: every index, hit text from the mapping's text fields

# Added to the shared test corpus so a query has more than 10 hits and reranking moves hits into
# and out of the top 10 (the "new" and "out" cases of the page).
EXTRA_DOCS: dict[str, dict[str, Any]] = {
    "x0": {"title": "Noise", "body": "Noise, noise and more noise: a glossary entry on noise."},
    "x1": {"title": "Noise measurement units", "body": "Decibels and noise: weighting curves for noise surveys."},
    "x2": {"title": "Engine maintenance", "body": "Engine oil, engine filters and engine checks."},
    "x3": {"title": "Quiet jet", "body": "The quieter jet engine: a long report. " + (
        "Acoustic liners, nacelle geometry, fan blade sweep and the certification process are described "
        "at length. ") * 6 + "It ends with noise."},
}


# --- helpers shared with the browser test ---------------------------------------------------------

def with_judgments_file(settings: Settings, path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the console's judgments file at `path` (CONSOLE_JUDGMENTS_FILE)."""
    return settings.with_overrides(console_judgments_file=str(path))


def stored(path: Path) -> ConsoleDB:
    """The console's database at `path`, read as another worker would."""
    return ConsoleDB(path, 1 << 30)


def linear_ndcg(ranking: list[str], qrels: dict[str, int], k: int = 10) -> float:
    """Graded nDCG@k with linear gains, written out independently of the console's module."""
    def dcg(grades: list[int]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(grades))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    return dcg([qrels.get(d, 0) for d in ranking[:k]]) / dcg(ideal)


def load_console_corpus(url: str, index: str) -> None:
    load_corpus(url, index)
    lines = []
    for doc_id, doc in EXTRA_DOCS.items():
        lines += [json.dumps({"index": {"_id": doc_id}}), json.dumps(doc)]
    response = httpx.post(f"{url}/{index}/_bulk?refresh=true", content="\n".join(lines) + "\n",
                          headers={"content-type": "application/x-ndjson"}, timeout=30)
    assert response.status_code == 200, response.text
    assert not response.json()["errors"], response.text


def engine_hits(url: str, index: str, query: str, window: int) -> list[dict[str, Any]]:
    """The engine's own answer to the search the console sends for a typed query."""
    body = {"size": window, "query": {"multi_match": {"query": query, "lenient": True}}}
    response = httpx.post(f"{url}/{index}/_search", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["hits"]["hits"]


def expected_columns(url: str, index: str, query: str, window: int,
                     rule: IndexRule = ANY_INDEX) -> tuple[list[str], list[str]]:
    """(lexical ids, reranked ids) over the whole window, computed without the proxy."""
    hits = engine_hits(url, index, query, window)
    lexical = [h["_id"] for h in hits]
    paths = TEXT_PATHS if rule.text_from_mapping else None  # the console corpus is mapped by MAPPINGS
    scores = {h["_id"]: overlap_score(query, hit_text(h["_source"], rule, paths)) for h in hits}
    return lexical, sorted(lexical, key=lambda i: (-scores[i], lexical.index(i)))


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def console_index(engine) -> Iterator[str]:
    name = f"t-console-{uuid.uuid4().hex[:8]}"
    load_console_corpus(engine.url, name)
    yield name
    delete_indices(engine.url, name)


@pytest.fixture(scope="module")
def judgments_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("console") / "judgments.sqlite3"


@pytest.fixture(scope="module")
def console(engine, judgments_file) -> Iterator[httpx.Client]:
    """An httpx client with the admin token, to a proxy (overlap reranker) in front of `engine`."""
    monkeypatch = pytest.MonkeyPatch()
    settings = with_judgments_file(proxy_settings(engine.url, ADMIN_TOKEN=TOKEN), judgments_file, monkeypatch)
    with (
        run_proxy(settings, reranker=OverlapReranker()) as running,
        httpx.Client(base_url=running.url, headers=AUTH, timeout=60) as client,
    ):
        yield client
    monkeypatch.undo()


def compare(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post(f"{API}/compare", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def batch_events(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", f"{API}/batch", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


# --- page and auth --------------------------------------------------------------------------------

def test_page_and_api_need_the_admin_token(console):
    base = str(console.base_url)
    assert httpx.get(f"{base}{API}/options").status_code == 401
    assert httpx.get(f"{base}{API}/options", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{base}{API}/options?token={TOKEN}").status_code == 401, "?token= is for the page only"
    plain = httpx.get(f"{base}/_rerank/console")
    assert plain.status_code == 401
    assert plain.json()["error"]["type"] == "security_exception"
    login = httpx.get(f"{base}/_rerank/console", headers={"accept": "text/html"})
    assert login.status_code == 401
    assert 'name="token"' in login.text
    assert "lexical" not in login.text
    rejected = httpx.get(f"{base}/_rerank/console?token=nope", headers={"accept": "text/html"})
    assert rejected.status_code == 401
    assert "not accepted" in rejected.text


def test_page_cookie_opens_the_page_only(console):
    base = str(console.base_url)
    with httpx.Client(base_url=base) as browser:
        first = browser.get(f"/_rerank/console?token={TOKEN}")
        assert first.status_code == 200
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/_rerank/console" in cookie
        assert TOKEN.lower() not in cookie, "the cookie is derived from the token, not the token"
        assert browser.get("/_rerank/console").status_code == 200, "a reload works"
        assert browser.get(f"{API}/options").status_code == 401, "the API needs the bearer token"
        signin = browser.get("/_rerank/console?signin", headers={"accept": "text/html"})
        assert signin.status_code == 401
        assert 'name="token"' in signin.text
        assert browser.get("/_rerank/console").status_code == 401, "signing out clears the cookie"
    forged = httpx.get(f"{base}/_rerank/console", cookies={"rerank_console_page": "0" * 64})
    assert forged.status_code == 401


def test_page_is_self_contained(console):
    base = str(console.base_url)
    for response in (httpx.get(f"{base}/_rerank/console?token={TOKEN}"), console.get("/_rerank/console")):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        assert 'id="lexical-list"' in html
        assert 'id="reranked-list"' in html
        assert "{{NONCE}}" not in html, "every placeholder of the page is filled"
        assert "{{CONSOLE_" not in html, "every placeholder of the page is filled"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "connect-src 'self'" in policy
        nonce = policy.split("'nonce-")[1].split("'")[0]
        assert html.count(f'nonce="{nonce}"') == 2, "the inline style and script carry the nonce"
        assert "http://" not in html.replace("http://www.w3.org/2000/svg", ""), "nothing is loaded from elsewhere"
        assert "https://" not in html, "nothing is loaded from elsewhere"
        assert "<script src" not in html
        assert "<link" not in html
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert TOKEN not in html


class _FormFields(HTMLParser):
    """The form controls of a page and which of them a <label> names (for=id, or around it)."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[str] = []
        self.labelled: set[str] = set()
        self.label_texts: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._open.append(a.get("for"))
            if a.get("for"):
                self.label_texts[str(a["for"])] = ""
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append(str(a.get("id")))
            if self._open:
                self.labelled.add(str(a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            self.label_texts[str(self._open[-1])] += data


def test_every_form_field_of_the_page_has_a_visible_label():
    """Each input, select and textarea is named by a <label> (for=id, or around it), not a placeholder."""
    from rerank_proxy.console.page import _asset

    fields = _FormFields()
    fields.feed(_asset("console.html"))
    fields.labelled |= {f for f, text in fields.label_texts.items() if text.strip()}
    assert {"beir-path", "beir-split", "beir-limit", "query-dsl", "judge-scale"} <= set(fields.controls)
    assert [c for c in fields.controls if c not in fields.labelled] == []
    for beir in ("beir-path", "beir-split", "beir-limit"):
        assert fields.label_texts[beir].strip(), f"#{beir} has a <label for> with text"


def test_console_is_off_without_an_admin_token(engine):
    with run_proxy(proxy_settings(engine.url), reranker=OverlapReranker()) as running:
        assert httpx.get(f"{running.url}/_rerank/console?token=x").status_code == 404
        assert httpx.get(f"{running.url}{API}/options", headers={"Authorization": "Bearer x"}).status_code == 404


# --- catalogue and options ------------------------------------------------------------------------

def test_options_list_the_scorers(console):
    options = console.get(f"{API}/options").json()
    by_id = {p["id"]: p for p in options["providers"]}
    assert by_id["configured"] == {"id": "configured", "available": True, "provider": "overlap",
                                   "model": "overlap-v1", "models_switchable": False, "score_mode": "rerank",
                                   "reason": ""}
    assert by_id["lexical"]["available"] is True
    assert "local" in by_id
    assert (by_id["local"]["available"] or by_id["local"]["reason"])
    assert options["k"] == 10
    assert options["defaults"]["window"] == 100


def test_indices_hide_dot_indices(console, engine, console_index):
    hidden = f".t-console-hidden-{uuid.uuid4().hex[:6]}"
    created = httpx.put(f"{engine.url}/{hidden}", json={"settings": {"number_of_replicas": 0}}, timeout=30)
    try:
        listed = console.get(f"{API}/indices").json()["indices"]
        names = [i["name"] for i in listed]
        assert console_index in names
        assert not any(n.startswith(".") for n in names)
        if created.status_code == 200:
            assert hidden not in names
        row = next(i for i in listed if i["name"] == console_index)
        assert row["docs"] == 12 + len(EXTRA_DOCS)
        assert row["reranked"] is True
        assert row["rule"]["window"] == 100
    finally:
        httpx.delete(f"{engine.url}/{hidden}", timeout=30)


def test_fields_of_an_index(console, console_index):
    fields = console.get(f"{API}/fields", params={"index": console_index}).json()["fields"]
    assert fields == ["body", "meta.author", "meta.tags", "title"]


# --- compare --------------------------------------------------------------------------------------

def test_compare_shows_both_rankings_with_rank_changes(console, engine, console_index):
    lexical, reranked = expected_columns(engine.url, console_index, QUERY, WINDOW)
    result = compare(console, index=console_index, query=QUERY, window=WINDOW)
    assert [h["id"] for h in result["lexical"]] == lexical[:10]
    assert [h["id"] for h in result["reranked"]] == reranked[:10]
    assert result["candidates"] == len(lexical)
    assert result["window"] == WINDOW
    assert result["provider"] == {"choice": "configured", "name": "overlap", "model": "overlap-v1"}
    assert result["score_mode"] == "rerank"

    kinds = set()
    for rank, hit in enumerate(result["reranked"]):
        before = lexical.index(hit["id"])
        assert hit["rank"] == rank + 1
        assert hit["lexical_rank"] == before + 1
        want = "new" if before >= 10 else "up" if rank < before else "down" if rank > before else "same"
        assert hit["change"]["kind"] == want
        assert hit["change"]["by"] == abs(before - rank) or want == "new"
        kinds.add(want)
        assert hit["rerank_score"] == pytest.approx(overlap_score(QUERY, hit["text"]))
        assert hit["score"] == hit["rerank_score"]
    for rank, hit in enumerate(result["lexical"]):
        after = reranked.index(hit["id"])
        assert hit["reranked_rank"] == after + 1
        want = "out" if after >= 10 else "up" if after < rank else "down" if after > rank else "same"
        assert hit["change"]["kind"] == want
        kinds.add(want)
    assert {"up", "down", "new", "out"} <= kinds, "the corpus exercises every kind of change"

    scores = [h["score"] for h in result["lexical"]]
    assert scores == sorted(scores, reverse=True)
    first = result["reranked"][0]
    assert first["text"] == default_text(EXTRA_DOCS.get(first["id"]) or _corpus_doc(first["id"]))
    timings = result["timings"]
    assert timings["engine_ms"] > 0
    assert timings["rerank_ms"] >= 0
    assert timings["engine_took_ms"] is not None
    assert timings["cache"]["sent"] + timings["cache"]["cached"] + timings["cache"]["coalesced"] == len(lexical)
    again = compare(console, index=console_index, query=QUERY, window=WINDOW)
    assert again["timings"]["cache"]["status"] == "hit"
    assert result["query_id"] == query_id(console_index, QUERY)


def _corpus_doc(doc_id: str) -> dict[str, Any]:
    from tests.support_data import CORPUS

    return CORPUS[int(doc_id)]


def test_compare_matches_what_clients_of_the_proxy_get(console, console_index):
    """The reranked column is the order the proxy gives a normal search with the same options,
    which reuses the scores the comparison computed (same query, same texts, same cache)."""
    result = compare(console, index=console_index, query=QUERY, window=WINDOW)
    body = {"size": 10, "query": {"multi_match": {"query": QUERY, "lenient": True}}, "rerank": {"window": WINDOW}}
    searched = httpx.post(f"{console.base_url}/{console_index}/_search", json=body, timeout=30)
    assert searched.headers["x-rerank"] == "cached"
    assert [h["_id"] for h in searched.json()["hits"]["hits"]] == [h["id"] for h in result["reranked"]]


def test_window_and_fields_change_the_comparison(console, engine, console_index):
    small = compare(console, index=console_index, query=QUERY, window=5)
    assert small["candidates"] == 5
    assert small["window"] == 5
    lexical5 = [h["id"] for h in small["lexical"]]
    assert sorted(lexical5) == sorted(h["id"] for h in small["reranked"]), "only the window is reranked"
    assert all(h["change"]["kind"] != "new" for h in small["reranked"])

    titles = compare(console, index=console_index, query=QUERY, window=WINDOW, fields=["title"])
    assert titles["text_rule"]["fields"] == ["title"]
    _, reranked = expected_columns(engine.url, console_index, QUERY, WINDOW, IndexRule("*", fields=("title",)))
    assert [h["id"] for h in titles["reranked"]] == reranked[:10]
    for hit in titles["reranked"]:
        assert hit["text"] == hit["label"], "the text is the title alone"

    template = compare(console, index=console_index, query=QUERY, window=WINDOW,
                       template="{title} by {meta.author}")
    for hit in template["reranked"]:
        author = "" if hit["id"].startswith("x") else _corpus_doc(hit["id"])["meta"]["author"]
        assert hit["text"] == f"{hit['label']} by {author}", "missing fields render empty"


def test_lexical_scorer_and_score_modes(console, console_index):
    lexical = compare(console, index=console_index, query=QUERY, window=WINDOW, provider="lexical")
    assert [h["id"] for h in lexical["reranked"]] == [h["id"] for h in lexical["lexical"]]
    assert all(h["change"]["kind"] == "same" and h["rerank_score"] is None for h in lexical["reranked"])
    assert lexical["score_mode"] == "lexical"
    assert lexical["timings"]["cache"] == {}

    blend = compare(console, index=console_index, query=QUERY, window=WINDOW, score_mode="blend", blend_weight=0.5)
    assert blend["score_mode"] == "blend"
    assert all(0.0 <= h["score"] <= 1.0 for h in blend["reranked"])
    full = compare(console, index=console_index, query=QUERY, window=WINDOW, score_mode="blend", blend_weight=1.0)
    rerank = compare(console, index=console_index, query=QUERY, window=WINDOW, score_mode="rerank")
    assert [h["id"] for h in full["reranked"]] == [h["id"] for h in rerank["reranked"]]


def test_local_scorer_is_offered_or_explained(console, console_index):
    local = next(p for p in console.get(f"{API}/options").json()["providers"] if p["id"] == "local")
    response = console.post(f"{API}/compare", json={"index": console_index, "query": QUERY, "provider": "local",
                                                    "window": WINDOW})
    if local["available"]:
        assert response.status_code == 200, response.text
        assert response.json()["provider"]["name"] == "local"
    else:
        assert response.status_code == 400
        assert local["reason"] in response.text


@pytest.fixture
def compatible_server() -> Iterator[tuple[str, list[str]]]:
    """A Cohere-compatible rerank server on loopback: model "keep" keeps the order it is sent,
    any other model reverses it. Yields (url, models seen)."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.fixtures.proxy import free_port

    seen: list[str] = []

    async def rerank(request: Request) -> JSONResponse:
        body = await request.json()
        model = body.get("model", "")
        seen.append(model)
        n = len(body["documents"])
        scores = [-(i + 1.0) if model == "keep" else i + 1.0 for i in range(n)]
        return JSONResponse({"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/rerank", rerank, methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the compatible rerank server to start")
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(timeout=10)


def test_another_model_of_the_configured_provider(engine, console_index, compatible_server, tmp_path, monkeypatch):
    from rerank_proxy.config import load_settings

    url, seen = compatible_server
    settings = load_settings({"UPSTREAM_URLS": engine.url, "ADMIN_TOKEN": TOKEN, "RERANK_PROVIDER": "compatible",
                              "RERANK_BASE_URL": url, "RERANK_MODEL": "keep", "LOG_LEVEL": "warning"})
    settings = with_judgments_file(settings, tmp_path / "j.sqlite3", monkeypatch)
    with run_proxy(settings) as running, httpx.Client(base_url=running.url, headers=AUTH, timeout=60) as client:
        configured = client.get(f"{API}/options").json()["providers"][0]
        assert configured["provider"] == "compatible"
        assert configured["model"] == "keep"
        assert configured["models_switchable"] is True
        kept = compare(client, index=console_index, query=QUERY, window=WINDOW)
        assert [h["id"] for h in kept["reranked"]] == [h["id"] for h in kept["lexical"]]
        assert kept["provider"]["model"] == "keep"
        flipped = compare(client, index=console_index, query=QUERY, window=WINDOW, model="flip")
        assert flipped["provider"] == {"choice": "configured", "name": "compatible", "model": "flip"}
        ids = [h["_id"] for h in engine_hits(engine.url, console_index, QUERY, WINDOW)]
        assert [h["id"] for h in flipped["reranked"]] == ids[::-1][:10]
        assert seen.count("flip") == 1
        assert "keep" in seen
        again = compare(client, index=console_index, query=QUERY, window=WINDOW, model="flip")
        assert again["timings"]["cache"]["status"] == "hit", "the extra reranker and its cache are kept"
        assert seen.count("flip") == 1


def test_dsl_clause_replaces_the_default_query(console, engine, console_index):
    result = compare(console, index=console_index, window=WINDOW, dsl={"match": {"title": "noise"}})
    assert result["query"] == "noise"
    direct = httpx.post(f"{engine.url}/{console_index}/_search",
                        json={"size": WINDOW, "query": {"match": {"title": "noise"}}}).json()["hits"]["hits"]
    assert [h["id"] for h in result["lexical"]] == [h["_id"] for h in direct][:10]


def test_deeply_nested_dsl_is_the_engines_answer_not_a_500(console, engine, console_index):
    """300 levels (past what orjson writes): the engine decides, as for a search through the proxy."""
    deep: dict[str, Any] = {"match_all": {}}
    for _ in range(149):
        deep = {"bool": {"filter": deep}}
    dsl = {"bool": {"must": {"match": {"title": "noise"}}, "filter": deep}}
    mine = console.post(f"{API}/compare", json={"index": console_index, "window": WINDOW, "dsl": dsl})
    theirs = httpx.post(f"{engine.url}/{console_index}/_search",
                        content=json.dumps({"size": WINDOW, "query": dsl}),
                        headers={"content-type": "application/json"})
    assert mine.status_code == theirs.status_code < 500, mine.text[:300]
    if theirs.status_code != 200:
        assert theirs.json()["error"]["type"] in mine.json()["error"]["reason"]


@pytest.mark.parametrize(("body", "reason"), [
    ({"index": "_all", "query": "x"}, "[index]"),
    ({"index": ".security", "query": "x"}, "[index]"),
    ({"index": "a,b", "query": "x"}, "[index]"),
    ({"index": "docs", "query": ""}, "[query]"),
    ({"index": "docs", "query": "x", "window": 0}, "[window]"),
    ({"index": "docs", "query": "x", "window": 5000}, "[window]"),
    ({"index": "docs", "query": "x", "provider": "cohere"}, "[provider]"),
    ({"index": "docs", "query": "x", "score_mode": "best"}, "[score_mode]"),
    ({"index": "docs", "query": "x", "fields": ["ti tle"]}, "[fields]"),
    ({"index": "docs", "query": "x", "model": "other-model"}, "cannot switch models"),
    ([1, 2], "JSON object"),
])
def test_compare_rejects_bad_input(console, body, reason):
    response = console.post(f"{API}/compare", json=body)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]["reason"]


def test_compare_reports_engine_errors(console):
    response = console.post(f"{API}/compare", json={"index": "t-console-no-such-index", "query": "x"})
    assert response.status_code == 404
    assert "index_not_found" in response.json()["error"]["reason"]


# --- judgments and metrics ------------------------------------------------------------------------

def test_judgments_persist_export_and_drive_ndcg(console, console_index, judgments_file):
    query = "jet engine noise report"
    result = compare(console, index=console_index, query=query, window=WINDOW)
    lexical = [h["id"] for h in result["lexical"]]
    reranked = [h["id"] for h in result["reranked"]]
    lifted = max(reranked, key=lambda d: (lexical.index(d) if d in lexical else 10) - reranked.index(d))
    dropped = lexical[0] if lexical[0] != lifted else lexical[1]

    def put(doc: str, grade: int | None) -> dict[str, Any]:
        response = console.put(f"{API}/judgments", json={"index": console_index, "query": query,
                                                         "doc_id": doc, "grade": grade})
        assert response.status_code == 200, response.text
        return response.json()

    assert put(lifted, 1)["judgments"] == {lifted: 1}
    assert put(dropped, 0)["judgments"] == {lifted: 1, dropped: 0}
    qid = query_id(console_index, query)
    got = console.get(f"{API}/judgments", params={"index": console_index, "query": query}).json()
    assert got == {"query_id": qid, "judgments": {lifted: 1, dropped: 0}}

    # Persisted in the file, readable by another store (another worker, a restart).
    assert stored(judgments_file).get(qid) == {lifted: 1, dropped: 0}

    again = compare(console, index=console_index, query=query, window=WINDOW)
    qrels = {lifted: 1, dropped: 0}
    assert again["judgments"] == qrels
    assert again["ndcg"]["lexical"] == pytest.approx(ndcg_at_k(lexical, qrels))
    assert again["ndcg"]["reranked"] == pytest.approx(ndcg_at_k(reranked, qrels))
    at = reranked.index(lifted)
    assert again["ndcg"]["reranked"] == pytest.approx(1 / math.log2(at + 2))

    metrics = console.post(f"{API}/metrics", json={"index": console_index, "window": WINDOW}).json()
    row = next(r for r in metrics["rows"] if r["id"] == qid)
    assert row["lexical"] == pytest.approx(again["ndcg"]["lexical"])
    assert row["reranked"] == pytest.approx(again["ndcg"]["reranked"])
    assert row["relevant"] == 1
    assert row["judged"] == 2
    assert metrics["evaluated"] >= 1
    assert metrics["k"] == 10

    listed = console.get(f"{API}/judgments", params={"index": console_index}).json()["queries"]
    assert {"id": qid, "query": query, "judged": 2, "relevant": 1} in listed

    tsv = console.get(f"{API}/judgments/qrels.tsv", params={"index": console_index})
    assert tsv.headers["content-type"].startswith("text/tab-separated-values")
    assert tsv.text.splitlines()[0] == "query-id\tcorpus-id\tscore"
    assert f"{qid}\t{lifted}\t1" in tsv.text.splitlines()
    assert f"{qid}\t{dropped}\t0" in tsv.text.splitlines()
    assert parse_qrels_tsv(tsv.text)[qid] == qrels
    queries = [json.loads(line) for line in console.get(f"{API}/judgments/queries.jsonl",
                                                        params={"index": console_index}).text.splitlines()]
    assert {"_id": qid, "text": query, "metadata": {"index": console_index}} in queries
    archive = zipfile.ZipFile(io.BytesIO(console.get(f"{API}/judgments/export.zip").content))
    assert sorted(archive.namelist()) == ["qrels/test.tsv", "queries.jsonl"]
    assert f"{qid}\t{lifted}\t1" in archive.read("qrels/test.tsv").decode()

    assert put(dropped, None)["judgments"] == {lifted: 1}
    assert put(lifted, None)["judgments"] == {}
    assert console.get(f"{API}/judgments", params={"index": console_index, "query": query}).json()["judgments"] == {}


def test_graded_judgments_drive_graded_ndcg(console, console_index, judgments_file):
    query = "engine noise reduction"
    assert console.get(f"{API}/options").json()["grades"][0] == "not relevant"
    result = compare(console, index=console_index, query=query, window=WINDOW)
    lexical = [h["id"] for h in result["lexical"]]
    reranked = [h["id"] for h in result["reranked"]]
    ids = list(dict.fromkeys(reranked + lexical))
    grades = dict(zip(ids[:4], [3, 1, 2, 0], strict=True))
    for doc, grade in grades.items():
        put = console.put(f"{API}/judgments", json={"index": console_index, "query": query, "doc_id": doc,
                                                     "grade": grade})
        assert put.status_code == 200, put.text
    qid = query_id(console_index, query)
    assert stored(judgments_file).get(qid) == grades, "the store keeps the grade, not just relevant or not"

    again = compare(console, index=console_index, query=query, window=WINDOW)
    assert again["judgments"] == grades
    assert again["ndcg"]["lexical"] == pytest.approx(linear_ndcg(lexical, grades))
    assert again["ndcg"]["reranked"] == pytest.approx(linear_ndcg(reranked, grades))
    binary = {d: min(g, 1) for d, g in grades.items()}
    assert linear_ndcg(reranked, binary) == pytest.approx(1.0)
    assert again["ndcg"]["reranked"] < 0.99, "grades count: the grade-1 hit above the grade-2 one costs nDCG"

    metrics = console.post(f"{API}/metrics", json={"index": console_index, "window": WINDOW}).json()
    row = next(r for r in metrics["rows"] if r["id"] == qid)
    assert row["reranked"] == pytest.approx(again["ndcg"]["reranked"])
    assert row["relevant"] == 3
    assert row["judged"] == 4
    tsv = console.get(f"{API}/judgments/qrels.tsv", params={"index": console_index}).text
    assert parse_qrels_tsv(tsv)[qid] == grades
    for doc in grades:
        console.put(f"{API}/judgments", json={"index": console_index, "query": query, "doc_id": doc, "grade": None})
    assert stored(judgments_file).get(qid) == {}


@pytest.mark.parametrize("body", [
    {"query": "q", "doc_id": "1", "grade": 1},
    {"index": "docs", "query": "q", "doc_id": "", "grade": 1},
    {"index": "docs", "query": "q", "doc_id": "1", "grade": 7},
    {"index": "docs", "query": "q", "doc_id": "1", "grade": 4},
    {"index": "docs", "query": "q", "doc_id": "1", "grade": -1},
    {"index": "docs", "query": "q", "doc_id": "1", "grade": 1.5},
    {"index": "docs", "query": "q", "doc_id": "1", "grade": True},
])
def test_judgments_reject_bad_input(console, body):
    assert console.put(f"{API}/judgments", json=body).status_code == 400


# --- batch runs -----------------------------------------------------------------------------------

def _win_and_loss(client: httpx.Client, index: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Two queries with qrels: one the reranker wins (+), one it loses (-), one unjudged."""
    win, loss = QUERY, "noise"
    won = compare(client, index=index, query=win, window=WINDOW)
    lost = compare(client, index=index, query=loss, window=WINDOW)
    won_lex, won_rr = [h["id"] for h in won["lexical"]], [h["id"] for h in won["reranked"]]
    lost_lex, lost_rr = [h["id"] for h in lost["lexical"]], [h["id"] for h in lost["reranked"]]
    up = max(won_rr, key=lambda d: (won_lex.index(d) if d in won_lex else 10) - won_rr.index(d))
    down = max(lost_lex, key=lambda d: (lost_rr.index(d) if d in lost_rr else 10) - lost_lex.index(d))
    assert won_rr.index(up) < (won_lex.index(up) if up in won_lex else 10)
    assert (lost_rr.index(down) if down in lost_rr else 10) > lost_lex.index(down)
    return ({"q-win": win, "q-loss": loss, "q-none": "wing flutter"},
            {"q-win": {up: 1}, "q-loss": {down: 1}, "q-none": {}})


def test_batch_with_inline_qrels_streams_progress_and_sorts_wins_and_losses(console, console_index):
    queries, qrels = _win_and_loss(console, console_index)
    tsv = "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n"
                                                     for q, docs in qrels.items() for d, g in docs.items())
    events = batch_events(console, {"index": console_index, "window": WINDOW,
                                    "queries": [{"id": q, "text": t} for q, t in queries.items()], "qrels": tsv})
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["done"] for e in progress] == [0, 1, 2, 3]
    assert all(e["total"] == 3 for e in progress)
    result = events[-1]
    assert result["type"] == "result"
    assert result["queries"] == 3
    assert result["evaluated"] == 2
    rows = result["rows"]
    assert rows[-1]["id"] == "q-none", "queries that cannot be evaluated come last"
    assert rows[-1]["delta"] is None, "queries that cannot be evaluated come last"
    deltas = [r["delta"] for r in rows[:2]]
    assert sorted(map(abs, deltas), reverse=True) == [abs(d) for d in deltas], "biggest change first"
    by_id = {r["id"]: r for r in rows}
    assert by_id["q-win"]["delta"] > 0
    assert by_id["q-loss"]["delta"] < 0
    assert result["wins"] == 1
    assert result["losses"] == 1
    assert result["ties"] == 0
    assert result["mean"]["delta"] == pytest.approx((by_id["q-win"]["delta"] + by_id["q-loss"]["delta"]) / 2)
    assert result["mean"]["lexical"] == pytest.approx((by_id["q-win"]["lexical"] + by_id["q-loss"]["lexical"]) / 2)


def test_batch_from_a_beir_folder(console, console_index, tmp_path):
    queries, qrels = _win_and_loss(console, console_index)
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{g}\n" for q, docs in qrels.items() for d, g in docs.items()))
    (tmp_path / "corpus.jsonl").write_text("")
    result = batch_events(console, {"index": console_index, "window": WINDOW, "beir_path": str(tmp_path)})[-1]
    # BEIR runs only the queries that have qrels lines; q-none has none.
    assert [r["id"] for r in result["rows"]] in (["q-win", "q-loss"], ["q-loss", "q-win"])
    assert result["wins"] == 1
    assert result["losses"] == 1
    limited = batch_events(console, {"index": console_index, "window": WINDOW, "beir_path": str(tmp_path), "limit": 1})
    assert limited[-1]["queries"] == 1
    missing = console.post(f"{API}/batch", json={"index": console_index, "beir_path": str(tmp_path / "nope")})
    assert missing.status_code == 400


def test_batch_from_a_beir_folder_reads_graded_qrels(console, console_index, tmp_path):
    result = compare(console, index=console_index, query=QUERY, window=WINDOW)
    lexical = [h["id"] for h in result["lexical"]]
    reranked = [h["id"] for h in result["reranked"]]
    ids = list(dict.fromkeys(reranked + lexical))
    grades = dict(zip(ids[:4], [1, 3, 0, 2], strict=True))
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "g1", "text": QUERY}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text(  # TREC's 4-column form, grades as TREC writes them
        "".join(f"g1 0 {doc} {grade}\n" for doc, grade in grades.items()))
    [row] = batch_events(console, {"index": console_index, "window": WINDOW, "beir_path": str(tmp_path)})[-1]["rows"]
    assert row["judged"] == 4
    assert row["relevant"] == 3
    assert row["lexical"] == pytest.approx(linear_ndcg(lexical, grades))
    assert row["reranked"] == pytest.approx(linear_ndcg(reranked, grades))
    assert row["reranked"] != pytest.approx(linear_ndcg(reranked, {d: min(g, 1) for d, g in grades.items()}))


def test_batch_uses_stored_judgments_and_query_sets(console, console_index):
    query = "engine inlet"
    hits = compare(console, index=console_index, query=query, window=WINDOW)["reranked"]
    put = {"index": console_index, "query": query, "doc_id": hits[0]["id"], "grade": 1}
    assert console.put(f"{API}/judgments", json=put).status_code == 200
    saved = console.put(f"{API}/querysets/smoke set", json={"queries": [query, " engine  inlet ", "panel flutter"]})
    assert saved.status_code == 200
    assert saved.json()["queries"] == [query, "panel flutter"]
    listed = {s["name"]: s for s in console.get(f"{API}/querysets").json()["sets"]}
    assert listed["smoke set"]["queries"] == 2, "the listing gives sizes, not every query of every set"
    assert console.get(f"{API}/querysets/smoke set").json() == {"name": "smoke set",
                                                                 "queries": [query, "panel flutter"]}
    for body in ({"queries": [query, "panel flutter"]}, {"query_set": "smoke set"}):
        result = batch_events(console, {"index": console_index, "window": WINDOW, **body})[-1]
        assert sorted(r["query"] for r in result["rows"]) == ["engine inlet", "panel flutter"]
        row = next(r for r in result["rows"] if r["query"] == query)
        assert row["id"] == query_id(console_index, query)
        assert row["reranked"] == pytest.approx(1.0)
    assert console.delete(f"{API}/querysets/smoke set").json() == {"deleted": True}
    assert "smoke set" not in [s["name"] for s in console.get(f"{API}/querysets").json()["sets"]]
    assert console.get(f"{API}/querysets/smoke set").status_code == 404
    gone = console.post(f"{API}/batch", json={"index": console_index, "query_set": "smoke set"})
    assert gone.status_code == 404
    assert "smoke set" in gone.json()["error"]["reason"]
    assert console.put(f"{API}/querysets/bad*name", json={"queries": ["x"]}).status_code == 400
    put["grade"] = None
    console.put(f"{API}/judgments", json=put)


def test_batch_rejects_bad_input(console, console_index):
    assert console.post(f"{API}/batch", json={"index": console_index}).status_code == 400
    assert console.post(f"{API}/batch", json={"index": console_index, "queries": ["x"],
                                              "qrels": "q1\td1"}).status_code == 400
    assert console.post(f"{API}/batch", json={"index": console_index, "queries": ["x"],
                                              "provider": "nope"}).status_code == 400


# --- pieces without an engine ---------------------------------------------------------------------

def test_ndcg_matches_the_trec_definition():
    qrels = {"a": 2, "b": 1, "c": 0}
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["a", "b", "x"], qrels) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "b", "a"], qrels) == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / ideal)
    assert ndcg_at_k(["x"] * 10 + ["a"], qrels) == 0.0, "only the top 10 count"
    assert ndcg_at_k(["a"], {"a": 0}) is None, "no relevant judgment: not evaluable"


def test_static_assets_ship_with_the_package():
    from importlib import resources

    static = resources.files("rerank_proxy.console") / "static"
    for name in ("console.html", "console.css", "console.js"):
        assert (static / name).is_file()
    assert "cdn" not in (static / "console.html").read_text().lower()
