"""Rewrite and merge rules: which searches are reranked, what is fetched, how pages are cut."""

import copy
import json
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rerank_proxy.config import IndexRule, load_settings
from rerank_proxy.errors import ProxyError
from rerank_proxy.scoring.final import combine
from rerank_proxy.search.merge import merge, rerank_order
from rerank_proxy.search.plan import (
    Bypass,
    EngineMustAnswer,
    Plan,
    ensure_rewritable,
    match_search_path,
    parse_client_body,
    plan_search,
    read_client_body,
)
from rerank_proxy.search.text.hit_text import hit_text, lookup

SETTINGS = load_settings({"RERANK_WINDOW": "20", "RERANK_PROVIDER": "local"})
MATCH = {"query": {"match": {"t": "jet engine"}}}


def plan(body=None, params=None, targets="docs", headers=None, settings=SETTINGS):
    return plan_search(targets, params or {}, copy.deepcopy(body) if body is not None else None,
                       headers or {}, settings)


def test_search_paths():
    assert match_search_path("/_search") == (None, "search")
    assert match_search_path("/a,b*/_search") == ("a,b*", "search")
    assert match_search_path("/logs-%2A/_msearch") == ("logs-*", "msearch")
    assert match_search_path("/docs/_doc/1") is None
    assert match_search_path("/_search/scroll") is None
    assert match_search_path("/docs/_search/template") is None


def test_candidate_window_and_page():
    p = plan({**MATCH, "from": 5, "size": 5})
    assert isinstance(p, Plan)
    assert p.body["from"] == 0
    assert p.body["size"] == 20
    assert (p.page_from, p.page_size, p.query_text) == (5, 5, "jet engine")


def test_url_from_size_win_and_are_removed_from_the_url():
    p = plan({**MATCH, "size": 3}, {"size": "4", "from": "2", "typed_keys": "true"})
    assert (p.page_from, p.page_size) == (2, 4)
    assert "size=" not in p.target
    assert "from=" not in p.target
    assert "typed_keys=true" in p.target


def test_straddling_page_fetches_past_the_window():
    p = plan({**MATCH, "from": 15, "size": 10})
    assert p.body["size"] == 25


@pytest.mark.parametrize(("body", "params", "reason"), [
    ({**MATCH, "sort": [{"year": "desc"}]}, {}, "sort"),
    (MATCH, {"scroll": "1m"}, "scroll"),
    ({**MATCH, "search_after": [1]}, {}, "search_after"),
    ({**MATCH, "pit": {"id": "x"}}, {}, "pit"),
    ({**MATCH, "size": 0}, {}, "size_0"),
    ({"query": {"match_all": {}}}, {}, "no_query_text"),
    ({**MATCH, "from": 20}, {}, "past_window"),
    ({**MATCH, "rerank": False}, {}, "disabled"),
    (MATCH, {"format": "yaml"}, "format"),
])
def test_bypass_reasons(body, params, reason):
    decision = plan(body, params)
    assert isinstance(decision, Bypass)
    assert decision.reason == reason


STD = {"standard": {"query": {"match": {"t": "jet engine"}}}}


def test_retrievers_are_reranked_and_kept():
    p = plan({"retriever": STD, "size": 5})
    assert isinstance(p, Plan)
    assert p.query_text == "jet engine"
    assert p.body["retriever"] == STD
    assert p.body["size"] == 20
    assert p.body["from"] == 0
    rrf = {"rrf": {"retrievers": [STD, STD], "rank_window_size": 8}}
    p = plan({"retriever": rrf, "size": 5})
    assert isinstance(p, Plan)
    assert p.window == 8
    assert p.body["size"] == 8
    assert p.body["retriever"] == rrf
    assert plan({"retriever": rrf, "from": 8}).reason == "past_window"


@pytest.mark.parametrize(("retriever", "reason"), [
    ({"text_similarity_reranker": {"retriever": STD, "field": "t", "inference_text": "x"}}, "engine_reranker"),
    ({"rrf": {"retrievers": [STD, {"text_similarity_reranker": {"retriever": STD}}]}}, "engine_reranker"),
    ({"standard": {**STD["standard"], "sort": [{"year": "desc"}]}}, "sort"),
    ({"knn": {"field": "v", "query_vector": [1.0], "k": 1, "num_candidates": 1}}, "no_query_text"),
])
def test_retriever_bypasses(retriever, reason):
    assert plan({"retriever": retriever}).reason == reason


def test_filter_path_is_planned_not_bypassed():
    p = plan(MATCH, {"filter_path": "hits.hits._id"})
    assert isinstance(p, Plan)
    assert p.filter_path is not None
    assert "filter_path" not in p.target
    assert plan(MATCH, {"filter_path": "-"}).reason == "filter_path"


@pytest.mark.parametrize(("body", "params", "source"), [
    ({**MATCH, "stored_fields": ["title"]}, {}, (False, ())),
    ({**MATCH, "stored_fields": []}, {}, (False, ())),
    (MATCH, {"stored_fields": "year"}, (False, ())),
    ({**MATCH, "stored_fields": ["title"], "_source": ["meta.*"]}, {}, (True, ("meta.*",))),
    ({**MATCH, "stored_fields": ["title"]}, {"_source": "title"}, (True, ("title",))),
])
def test_stored_fields_fetch_the_source_and_return_what_was_asked(body, params, source):
    p = plan(body, params)
    assert isinstance(p, Plan)
    assert p.body["_source"] is True
    assert (p.source.fetch, p.source.includes) == source
    assert p.body.get("stored_fields") == body.get("stored_fields")
    assert "_source" not in p.target


@pytest.mark.parametrize(("body", "params"), [({**MATCH, "stored_fields": "_none_"}, {}),
                                         ({**MATCH, "stored_fields": ["a", "_none_"]}, {}),
                                         (MATCH, {"stored_fields": "_none_"})])
def test_stored_fields_none_is_the_engines(body, params):
    assert plan(body, params).reason == "stored_fields_none"


def test_fields_only_searches_are_reranked():
    p = plan({**MATCH, "_source": False, "fields": ["title"], "docvalue_fields": ["year"]})
    assert isinstance(p, Plan)
    assert "_source" not in p.body
    assert p.source.fetch is False
    assert p.body["fields"] == ["title"]
    assert p.body["docvalue_fields"] == ["year"]


def test_score_sort_is_still_reranked():
    assert isinstance(plan({**MATCH, "sort": ["_score"]}), Plan)
    assert isinstance(plan({**MATCH, "sort": [{"_score": {"order": "desc"}}]}), Plan)


def test_header_switches_off_and_overrides_query():
    assert plan(MATCH, headers={"x-rerank": "off"}).reason == "disabled"
    assert plan(MATCH, headers={"x-rerank-query": "what%20I%20meant"}).query_text == "what I meant"


def test_body_extension_is_stripped_and_validated():
    decision = plan({**MATCH, "rerank": {"query": "override", "explain": True}})
    assert decision.query_text == "override"
    assert "rerank" not in decision.body
    with pytest.raises(ProxyError) as err:
        plan({**MATCH, "rerank": {"bogus": 1}})
    assert err.value.status == 400
    assert "bogus" in err.value.reason
    with pytest.raises(ProxyError):
        plan({**MATCH, "rerank": {"window": "ten"}})


def test_bad_numbers_are_400():
    for body, params in [({**MATCH, "size": -1}, {}), (MATCH, {"from": "x"}), ({**MATCH, "from": -3}, {})]:
        with pytest.raises(ProxyError) as err:
            plan(body, params)
        assert err.value.status == 400


def test_index_rules():
    settings = load_settings({"RERANK_INDICES": "products*", "RERANK_RULES":
                              '[{"index":"products-old","enabled":false},{"index":"products-b*","window":7}]'})
    assert plan(MATCH, targets="logs", settings=settings).reason == "index_not_configured"
    assert plan(MATCH, targets="products-old", settings=settings).reason == "index_not_configured"
    assert plan(MATCH, targets="products-new", settings=settings).window == 100
    assert plan(MATCH, targets="products-b1", settings=settings).window == 7
    assert plan(MATCH, targets=".kibana", settings=settings).reason == "index_not_configured"


def test_source_filter_moves_to_the_proxy():
    p = plan({**MATCH, "_source": ["title"]})
    assert "_source" not in p.body
    assert p.source.includes == ("title",)
    p = plan(MATCH, {"_source": "false"})
    assert p.source.fetch is False
    assert "_source" not in p.target


def test_final_scores_modes():
    assert combine([0.2, 0.8], [3.0, 1.0], "rerank", 0.5) == [0.2, 0.8]
    assert combine([0.2, 0.8], [3.0, 1.0], "blend", 0.5) == [0.5, 0.5]
    assert combine([0.2, 0.8], [3.0, 1.0], "blend", 1.0) == [0.0, 1.0]


def test_rerank_order_puts_the_last_positions_after_the_others():
    assert rerank_order([0.5, 0.2, 0.9]) == [2, 0, 1]
    assert rerank_order([0.2, 0.2, 0.2]) == [0, 1, 2]  # ties keep the engine's order
    assert rerank_order([0.2, 0.2, 0.9, 0.2], last=[0, 3]) == [2, 1, 0, 3]
    assert rerank_order([0.1, 0.1], last=[0, 1]) == [0, 1]


def _response(n):
    return {"took": 1, "hits": {"total": {"value": n, "relation": "eq"}, "max_score": 9.0,
                                "hits": [{"_index": "docs", "_id": str(i), "_score": float(n - i),
                                          "_source": {"t": f"doc {i}"}} for i in range(n)]},
            "aggregations": {"a": {"value": 1}}}


@hsettings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), window=st.integers(1, 40), size=st.integers(1, 25),
       seed_scores=st.lists(st.floats(0, 1, allow_nan=False), min_size=60, max_size=60))
def test_paging_covers_every_hit_once(n, window, size, seed_scores):
    settings = SETTINGS.with_overrides(rerank_window=window, rerank_rules=())
    seen: list[str] = []
    start = 0
    while start < n:
        decision = plan({**MATCH, "from": start, "size": size}, settings=settings)
        if isinstance(decision, Bypass):
            assert decision.reason == "past_window"
            page = _response(n)["hits"]["hits"][start:start + size]  # the engine's own page
        else:
            response = _response(min(n, decision.body["size"]))
            k = min(window, len(response["hits"]["hits"]))
            merged = merge(response, decision, seed_scores[:k])
            page = merged["hits"]["hits"]
            assert merged["aggregations"] == {"a": {"value": 1}}
            assert len(page) == min(size, n - start)
        seen.extend(h["_id"] for h in page)
        start += size
    assert sorted(seen, key=int) == [str(i) for i in range(n)]


def test_merge_reorders_and_sets_max_score():
    decision = plan({**MATCH, "size": 3})
    merged = merge(_response(5), decision, [0.1, 0.9, 0.5, 0.3, 0.2])
    assert [h["_id"] for h in merged["hits"]["hits"]] == ["1", "2", "3"]
    assert merged["hits"]["max_score"] == 0.9
    assert merged["hits"]["total"] == {"value": 5, "relation": "eq"}


def test_fallback_keeps_lexical_order():
    decision = plan({**MATCH, "from": 1, "size": 2})
    merged = merge(_response(5), decision, None)
    assert [h["_id"] for h in merged["hits"]["hits"]] == ["1", "2"]
    assert merged["hits"]["max_score"] == 9.0


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=10)
hits_strategy = st.lists(st.fixed_dictionaries(
    {"_id": st.text(min_size=1, max_size=6), "_score": st.one_of(st.none(), st.floats(0, 100, allow_nan=False))},
    optional={"_source": json_values, "_index": st.text(max_size=5), "highlight": json_values}), max_size=40)


@hsettings(max_examples=300, deadline=None)
@given(hits=hits_strategy, start=st.integers(0, 30), size=st.integers(1, 30), explain=st.booleans(),
       source=st.sampled_from([None, False, ["a"], {"excludes": ["b.*"]}, "x*"]),
       scores=st.lists(st.floats(-10, 10, allow_nan=False), min_size=40, max_size=40))
def test_merge_never_raises_and_returns_a_page_of_the_candidates(hits, start, size, explain, source, scores):
    body = {**MATCH, "from": start, "size": size, "rerank": {"explain": explain}}
    if source is not None:
        body["_source"] = source
    decision = plan(body)
    if isinstance(decision, Bypass):
        return
    response = {"hits": {"total": {"value": len(hits)}, "max_score": None, "hits": copy.deepcopy(hits)}}
    window = min(decision.window, len(hits))
    merged = merge(response, decision, scores[:window] if window else None)
    page = merged["hits"]["hits"]
    all_ids = [h["_id"] for h in hits]
    page_ids = [h["_id"] for h in page]
    assert len(page) == max(0, min(size, len(hits) - start))
    assert not Counter(page_ids) - Counter(all_ids)  # only candidates, none twice more than given
    if window:
        ranked = sorted(range(window), key=lambda i: (-scores[i], i))
        expected = ([hits[i]["_id"] for i in ranked] + all_ids[window:])[start:start + size]
        assert page_ids == expected


# --- hit text: the faster builders must give byte-identical text (cache and vector keys hash it) ---

_ORACLE_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _oracle_flatten(value):
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, list):
        for item in value:
            yield from _oracle_flatten(item)


def _oracle_all_strings(value):
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _oracle_all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _oracle_all_strings(item)


def _oracle_hit_text(source, rule):
    """The generator-based builder the proxy used before (kept here as the reference)."""
    if rule.template:
        text = _ORACLE_PLACEHOLDER.sub(lambda m: " ".join(_oracle_flatten(lookup(source, m.group(1).strip()))),
                                       rule.template)
    elif rule.fields:
        text = "\n".join(part for f in rule.fields for part in _oracle_flatten(lookup(source, f)))
    else:
        every = list(_oracle_all_strings(source))
        text = "\n".join([s for s in every if not _oracle_is_json(s)] or every)
    return text[: rule.max_chars]


def _oracle_is_json(text):
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


source_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(" \t\nab{}.", max_size=6)),
    lambda c: st.one_of(st.lists(c, max_size=3),
                        st.dictionaries(st.sampled_from(["a", "b", "a.b", "c", " a"]), c, max_size=3)),
    max_leaves=12)
rules = st.one_of(
    st.builds(IndexRule, st.just("*"), max_chars=st.integers(1, 40)),
    st.builds(IndexRule, st.just("*"),
              fields=st.lists(st.sampled_from(["a", "b", "a.b", "c", "x"]), max_size=3).map(tuple),
              max_chars=st.integers(1, 40)),
    st.builds(IndexRule, st.just("*"), template=st.text(st.sampled_from("ab{}. \n:"), max_size=14),
              max_chars=st.integers(1, 40)),
    st.builds(IndexRule, st.just("*"), template=st.sampled_from(["t: {a}\nb: {b}", "{ a.b }{c}", "{a}{{b}}", "{}{x"])),
)


@hsettings(max_examples=600, deadline=None)
@given(source=source_values, rule=rules)
def test_hit_text_matches_the_reference_builder(source, rule):
    assert hit_text(source, rule) == _oracle_hit_text(source, rule)


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"size":1,"size":2}', "duplicate_key"),
    (b'{"query" : {"match" : {"t" : "a", "t" : "b"}}}', "duplicate_key"),
    (b'{"q":"\\ud800"}', "invalid_json"),
    (b'{"x":' + b"[" * 300 + b"]" * 300 + b"}", "too_deep"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),
    (b'{"query":', "invalid_json"),
])
def test_bodies_the_engine_must_answer(raw, reason):
    with pytest.raises(EngineMustAnswer) as caught:
        parse_client_body(raw)
    assert caught.value.reason == reason


def test_a_body_is_checked_for_rewriting_only_when_it_is_rewritten():
    """Planning needs the parse alone; a search relayed as sent skips the second, slower look."""
    raw = b'{"size":0,"size":0,"aggs":{}}'
    body = read_client_body(raw)
    assert body == {"size": 0, "aggs": {}}
    assert isinstance(plan_search("docs", {}, body, {}, SETTINGS), Bypass)   # size 0: nothing to rerank
    with pytest.raises(EngineMustAnswer) as caught:
        ensure_rewritable(raw, body)
    assert caught.value.reason == "duplicate_key"


def test_bodies_the_proxy_rewrites():
    assert parse_client_body(b'{"a":{"a":1},"b":[{"a":2},{"a":3}]}') == {"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}
    assert parse_client_body(b"  ") is None


@pytest.mark.parametrize(("size", "expected"), [(1e3, 1000), (3.0, 3), (3.5, 3), ("3.0", 3), ("7", 7)])
def test_from_size_as_the_engines_read_them(size, expected):
    p = plan({**MATCH, "size": size, "from": 1e0})
    assert isinstance(p, Plan)
    assert (p.page_from, p.page_size) == (1, expected)


@pytest.mark.parametrize("size", [1e30, "many", True, [1], float("inf")])
def test_from_size_the_engine_must_refuse(size):
    assert plan({**MATCH, "size": size}).reason == "from_size"
