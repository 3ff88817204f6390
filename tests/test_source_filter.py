"""Client `_source` filtering applied by the proxy (unit level; the engine comparison is in
test_proxy_search.py)."""

import pytest

from rerank_proxy.errors import ProxyError
from rerank_proxy.search.text import source_filter as sf

DOC = {"title": "T", "meta": {"author": "A", "year": 1960, "tags": ["x", "y"]},
       "sections": [{"name": "n1", "text": "t1"}, {"name": "n2", "text": "t2"}], "body": "B"}


def apply(spec):
    return sf.apply(DOC, sf.from_body(spec))


def test_identity_and_false():
    assert apply(True) == DOC
    assert apply(None) == DOC
    assert sf.from_body(False).fetch is False


def test_includes():
    assert apply(["title"]) == {"title": "T"}
    assert apply("meta") == {"meta": DOC["meta"]}
    assert apply(["meta.author", "body"]) == {"meta": {"author": "A"}, "body": "B"}
    assert apply(["sections.name"]) == {"sections": [{"name": "n1"}, {"name": "n2"}]}
    assert apply(["me*"]) == {"meta": DOC["meta"]}


def test_excludes_win():
    assert apply({"excludes": ["meta"]}) == {k: v for k, v in DOC.items() if k != "meta"}
    assert apply({"includes": ["meta"], "excludes": ["meta.year"]}) == {
        "meta": {"author": "A", "tags": ["x", "y"]}}
    assert apply({"includes": ["*"], "excludes": ["*.text"]})["sections"] == [{"name": "n1"}, {"name": "n2"}]


def test_url_parameters():
    assert sf.from_params(None, None, None) is None
    off = sf.from_params("false", None, None)
    assert off is not None
    assert off.fetch is False
    flt = sf.from_params("title,body", None, None)
    assert flt is not None
    assert sf.apply(DOC, flt) == {"title": "T", "body": "B"}
    flt = sf.from_params(None, "meta", "meta.tags")
    assert flt is not None
    assert sf.apply(DOC, flt) == {"meta": {"author": "A", "year": 1960}}


def test_bad_spec_is_a_400():
    with pytest.raises(ProxyError) as err:
        sf.from_body(42)
    assert err.value.status == 400
