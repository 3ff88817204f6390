"""Query-text extraction from the DSL real apps send (pure unit and property tests)."""

from hypothesis import given
from hypothesis import strategies as st

from rerank_proxy.search.text.query_text import clean_query_string, extract_query_text


def q(query):
    return extract_query_text({"query": query})


def test_match_forms():
    assert q({"match": {"title": "jet engine"}}) == "jet engine"
    assert q({"match": {"title": {"query": "jet engine", "operator": "and"}}}) == "jet engine"
    assert q({"match_phrase": {"body": "boundary layer"}}) == "boundary layer"
    assert q({"match_phrase_prefix": {"body": {"query": "bound"}}}) == "bound"
    assert q({"match_bool_prefix": {"body": "heat tra"}}) == "heat tra"


def test_field_spanning_forms():
    assert q({"multi_match": {"query": "wing flutter", "fields": ["title^2", "body"]}}) == "wing flutter"
    assert q({"combined_fields": {"query": "shock wave", "fields": ["a", "b"]}}) == "shock wave"


def test_query_string_syntax_is_removed():
    assert q({"query_string": {"query": "title:(jet engine) AND noise^2"}}) == "jet engine noise"
    assert q({"simple_query_string": {"query": "\"wing flutter\" +speed -subsonic"}}) == "wing flutter speed"
    assert clean_query_string("a OR b NOT c") == "a b"
    assert clean_query_string("heat~2 transf* body:laminar") == "heat transf laminar"


def test_url_q_parameter():
    assert extract_query_text(None, "body:noise jet") == "noise jet"
    assert extract_query_text({"query": {"match": {"t": "extra"}}}, "jet") == "jet extra"


def test_compound_queries():
    query = {"bool": {
        "must": [{"match": {"t": "jet"}}],
        "should": {"multi_match": {"query": "engine", "fields": ["a"]}},
        "filter": [{"match": {"lang": "en"}}, {"term": {"year": 1960}}],
        "must_not": [{"match": {"t": "helicopter"}}],
    }}
    assert q(query) == "jet engine"
    assert q({"dis_max": {"queries": [{"match": {"a": "x y"}}, {"match": {"b": "z"}}]}}) == "x y z"
    assert q({"function_score": {"query": {"match": {"a": "decay"}}, "functions": []}}) == "decay"
    assert q({"constant_score": {"filter": {"match": {"a": "flat"}}}}) == "flat"
    assert q({"boosting": {"positive": {"match": {"a": "good"}}, "negative": {"match": {"a": "bad"}},
                           "negative_boost": 0.5}}) == "good"
    assert q({"nested": {"path": "p", "query": {"match": {"p.t": "deep"}}}}) == "deep"
    painless = {"script_score": {"query": {"match": {"a": "scripted words"}},
                                 "script": {"source": "_score * doc['boost'].value", "lang": "painless"}}}
    assert q(painless) == "scripted words"


def test_duplicates_are_joined_once():
    query = {"bool": {"should": [{"match": {"title": "jet"}}, {"match": {"body": "jet"}}]}}
    assert q(query) == "jet"


def test_no_text():
    assert q({"match_all": {}}) == ""
    assert q({"term": {"id": "x"}}) == ""
    assert q({"bool": {"filter": [{"match": {"a": "b"}}]}}) == ""
    assert extract_query_text(None) == ""
    assert extract_query_text({"size": 3}) == ""


dsl = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["match", "bool", "must", "should", "query", "multi_match",
                                         "query_string", "dis_max", "queries", "filter", "title",
                                         "function_score", "boosting", "positive", "x"]),
                        children, max_size=4)),
    max_leaves=30)


@given(dsl, st.one_of(st.none(), st.text(max_size=30)))
def test_never_raises_and_returns_a_string(query, q_param):
    text = extract_query_text({"query": query}, q_param)
    assert isinstance(text, str)
    assert text == text.strip()


def test_deep_nesting_is_bounded():
    query: dict = {"match": {"t": "bottom"}}
    for _ in range(5000):
        query = {"bool": {"must": [query]}}
    assert q(query) == ""  # past the depth limit nothing is read, and nothing overflows


STD = {"standard": {"query": {"match": {"title": "jet engine"}}}}


def test_standard_retriever_text():
    assert extract_query_text({"retriever": STD}) == "jet engine"
    filtered = {"standard": {"query": {"bool": {"must": {"match": {"b": "noise"}}, "filter": {"term": {"y": 1}}}}}}
    assert extract_query_text({"retriever": filtered}) == "noise"


def test_compound_retrievers_take_text_from_their_standard_children():
    knn = {"knn": {"field": "v", "query_vector": [1, 2], "k": 5, "num_candidates": 10}}
    other = {"standard": {"query": {"multi_match": {"query": "wing flutter", "fields": ["a"]}}}}
    assert extract_query_text({"retriever": {"rrf": {"retrievers": [STD, knn, other]}}}) == "jet engine wing flutter"
    linear = {"linear": {"retrievers": [{"retriever": STD, "weight": 2}, {"retriever": knn, "weight": 1}]}}
    assert extract_query_text({"retriever": linear}) == "jet engine"
    assert extract_query_text({"retriever": {"rrf": {"retrievers": [STD, STD]}}}) == "jet engine"
    wrapped = {"rule": {"retriever": STD, "ruleset_ids": ["r"], "match_criteria": {}}}
    assert extract_query_text({"retriever": wrapped}) == "jet engine"
    assert extract_query_text({"retriever": knn}) == ""


@given(st.recursive(st.none() | st.integers() | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["standard", "rrf", "retriever", "retrievers", "query", "match"]), c,
                        max_size=3), max_leaves=20))
def test_any_retriever_shape_is_safe(retriever):
    assert isinstance(extract_query_text({"retriever": retriever}), str)
