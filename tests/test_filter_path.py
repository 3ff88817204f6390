"""filter_path rules, each case checked against what Elasticsearch 9 and OpenSearch 2 answered for
the same response (tests/test_conformance.py compares with the live engines)."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rerank_proxy.search.filter_path import apply, parse

DOC: dict[str, Any] = {
    "took": 3, "timed_out": False, "_shards": {"total": 1, "successful": 1},
    "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 0.98,
             "hits": [{"_index": "i", "_id": "3", "_score": 0.98,
                       "_source": {"title": "jet", "meta": {}, "arr": [], "objs": [{"x": 1}, {"x": 2, "y": 3}],
                                   "nums": [1, 2], "n": None}}]},
    "aggregations": {"t": {"buckets": [{"key": "a", "doc_count": 1}]}, "m": {"value": 2.0}},
}
SOURCE = DOC["hits"]["hits"][0]["_source"]


def run(fp, doc=DOC, opensearch=False):
    return apply(doc, parse(fp), opensearch=opensearch)


def src(**keys):
    return {"hits": {"hits": [{"_source": keys}]}}


@pytest.mark.parametrize(("fp", "expected"), [
    ("hits.hits._id", {"hits": {"hits": [{"_id": "3"}]}}),
    (" hits.hits._id ,", {"hits": {"hits": [{"_id": "3"}]}}),
    ("hits.**._id", {"hits": {"hits": [{"_id": "3"}]}}),
    ("took,hits.total", {"took": 3, "hits": {"total": {"value": 1, "relation": "eq"}}}),
    ("**.value", {"hits": {"total": {"value": 1}}, "aggregations": {"m": {"value": 2.0}}}),
    ("aggregations.*.buckets.key", {"aggregations": {"t": {"buckets": [{"key": "a"}]}}}),
    ("*.total", {"_shards": {"total": 1}, "hits": {"total": {"value": 1, "relation": "eq"}}}),
    ("hits.hits._source.meta", src(meta={})),
    ("hits.hits._source.arr", src(arr=[])),
    ("hits.hits._source.n", src(n=None)),
    ("hits.hits._source.objs.y", src(objs=[{"y": 3}])),
    ("hits.hits._source.o*s.x", src(objs=[{"x": 1}, {"x": 2}])),
    ("hits.hits._source.meta.*", {}),
    ("hits..hits._id", {}),
    ("nothing", {}),
    ("took,-took", {}),
    ("-**", {}),
    ("took,-hits.**", {"took": 3}),
    ("hits.hits._source.*,-hits.hits._source.objs.x",
     src(title="jet", meta={}, arr=[], objs=[{"y": 3}], nums=[1, 2], n=None)),
])
def test_both_engines(fp, expected):
    assert run(fp) == expected
    assert run(fp, opensearch=True) == expected


def test_whole_response_for_no_filter():
    assert run("") is DOC
    assert run(",") is DOC
    assert run("**") == DOC


def test_exclusions_only_keep_the_rest():
    out = run("-hits.hits._source,-_shards")
    assert "_shards" not in out
    assert "_source" not in out["hits"]["hits"][0]
    assert out["took"] == 3


def test_exclusion_that_empties_a_container_drops_it():
    assert "objs" not in run("-hits.hits._source.objs.x,-hits.hits._source.objs.y")["hits"]["hits"][0]["_source"]
    assert run("-hits.hits._source.objs.x")["hits"]["hits"][0]["_source"]["objs"] == [{"y": 3}]
    assert "_source" not in run("-hits.hits._source.*")["hits"]["hits"][0]


def test_originally_empty_containers_on_an_exclusion_path():
    es = run("-**.x")["hits"]["hits"][0]["_source"]
    os_ = run("-**.x", opensearch=True)["hits"]["hits"][0]["_source"]
    assert es["meta"] == {}
    assert es["arr"] == []
    assert es["objs"] == [{"y": 3}]
    assert es["nums"] == [1, 2]
    assert "meta" not in os_
    assert "arr" not in os_
    assert os_["objs"] == [{"y": 3}]
    empty = {"took": 1, "hits": {"hits": []}}
    assert run("-hits.hits._source", empty) == empty
    assert run("-hits.hits._source", empty, opensearch=True) == {"took": 1}  # hits emptied too


def test_empty_arrays_under_inclusions_are_dropped():
    assert run("hits.hits._id", {"hits": {"hits": []}}) == {}
    assert run("hits.hits", {"hits": {"hits": []}}) == {"hits": {"hits": []}}


def test_lone_minus_is_refused():
    with pytest.raises(ValueError, match=r"filter_path entry \[-\] is empty"):
        parse("-")


def test_input_is_not_changed():
    before = repr(DOC)
    run("-hits.hits._source.objs.x")
    run("hits.hits._source.objs.y")
    assert repr(DOC) == before


_json = st.recursive(st.none() | st.integers() | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
                     max_leaves=15)


@hsettings(deadline=None)
@given(st.dictionaries(st.sampled_from("abc"), _json, max_size=3), st.sampled_from(["a", "a.b", "*.c", "**.a", "b.**"]))
def test_inclusion_and_its_exclusion_partition_the_leaves(doc, path):
    """Every key kept by `path` is dropped by `-path` and the other way round, at the top level."""
    kept, dropped = run(path, doc), run("-" + path, doc)
    assert set(kept) <= set(doc)
    assert set(dropped) <= set(doc)
    for key in doc:
        if key in kept and key in dropped:
            assert isinstance(doc[key], (dict, list))   # split inside the container
