"""The mapping walker and `TextPaths`: which `_source` fields are prose, and their strings in document order."""

from __future__ import annotations

from rerank_proxy.config import IndexRule
from rerank_proxy.console.engine import TEXT_TYPES as PICKER_TYPES
from rerank_proxy.search.text.hit_text import hit_text
from rerank_proxy.search.text.mapping_fields import RERANK_TEXT_TYPES, TextPaths, answer_paths, field_paths

PRODUCT_MAPPING = {"properties": {
    "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
    "sku": {"type": "keyword"},
    "brand": {"type": "keyword", "fields": {"text": {"type": "text"}}},
    "price": {"type": "scaled_float", "scaling_factor": 100},
    "summary": {"type": "match_only_text"},
    "suggest": {"type": "search_as_you_type"},
    "meaning": {"type": "semantic_text", "inference_id": "e5"},
    "log": {"type": "wildcard"},
    "attrs": {"type": "flattened"},
    "seller": {"properties": {"name": {"type": "text"}, "id": {"type": "keyword"},
                              "address": {"properties": {"city": {"type": "text"}, "zip": {"type": "keyword"}}}}},
    "reviews": {"type": "nested", "properties": {"body": {"type": "text"}, "stars": {"type": "byte"}}},
    "category": {"type": "object", "properties": {"code": {"type": "keyword"}}},
    "alias_of_title": {"type": "alias", "path": "title"},
}}


def test_only_prose_types_are_text_objects_and_nested_walked_into():
    assert sorted(field_paths(PRODUCT_MAPPING["properties"], RERANK_TEXT_TYPES)) == [
        "brand", "meaning", "reviews.body", "seller.address.city", "seller.name", "suggest", "summary", "title"]


def test_a_keyword_with_a_text_multi_field_counts_under_its_own_path():
    # Multi-fields index the parent's value and are no _source path: `brand.text` is read as `brand`.
    paths = set(field_paths(PRODUCT_MAPPING["properties"], RERANK_TEXT_TYPES))
    assert "brand" in paths
    assert "brand.text" not in paths
    assert "title.raw" not in paths


def test_the_console_pickers_walk_the_same_mapping_with_keywords_included():
    paths = set(field_paths(PRODUCT_MAPPING["properties"], PICKER_TYPES))
    assert {"sku", "seller.id", "category.code", "log", "title", "brand"} <= paths
    assert "price" not in paths
    assert "attrs" not in paths


def test_a_mapping_answer_is_the_union_of_its_indices():
    answer = {"logs-1": {"mappings": {"properties": {"message": {"type": "text"}, "host": {"type": "keyword"}}}},
              "logs-2": {"mappings": {"properties": {"message": {"type": "text"}, "note": {"type": "text"}}}},
              "empty": {"mappings": {}}, "odd": "not an object"}
    assert answer_paths(answer, RERANK_TEXT_TYPES) == {"message", "note"}
    assert answer_paths([], RERANK_TEXT_TYPES) == set()
    assert answer_paths({"x": {"mappings": {"properties": {"a": "junk", "b": {"properties": 3}}}}},
                        RERANK_TEXT_TYPES) == set()


def test_strings_come_in_document_order_not_the_mappings():
    paths = TextPaths(["title", "body", "meta.note"])
    out: list[str] = []
    paths.strings_into({"sku": "AB-1", "body": " Body first ", "meta": {"note": "n", "code": "C9"},
                        "title": "Title last", "empty": ""}, out)
    assert out == ["Body first", "n", "Title last"]


def test_arrays_nested_objects_and_literal_dotted_keys():
    paths = TextPaths(["reviews.body", "seller.address.city", "tags"])
    out: list[str] = []
    paths.strings_into({"reviews": [{"body": "great", "stars": 5}, {"body": ["ok", ["fine"]]}, "junk"],
                        "seller.address.city": "Lyon", "tags": ["a", 3, None, " ", "b"]}, out)
    assert out == ["great", "ok", "fine", "Lyon", "a", "b"]


def test_a_text_field_holding_an_object_gives_nothing():
    # An old-format semantic_text value is {"text": ..., "inference": {model ids, embeddings}}.
    out: list[str] = []
    TextPaths(["meaning"]).strings_into({"meaning": {"text": "x", "inference": {"inference_id": "e5"}}}, out)
    assert out == []


def test_hit_text_with_paths_joins_and_cuts_like_the_default():
    source = {"title": "Trail shoe", "sku": "TS-0042", "brand": "Acme", "body": "Light and grippy."}
    rule = IndexRule(pattern="*", max_chars=20, text_from_mapping=True)
    assert hit_text(source, rule, TextPaths(["title", "body"])) == "Trail shoe\nLight and"
    assert hit_text(source, IndexRule(pattern="*"), None) == "Trail shoe\nTS-0042\nAcme\nLight and grippy."
    # Explicit fields and templates always win over the mapping.
    assert hit_text(source, IndexRule(pattern="*", fields=("sku",)), TextPaths(["title"])) == "TS-0042"
    assert hit_text(source, IndexRule(pattern="*", template="{brand}"), TextPaths(["title"])) == "Acme"
    assert hit_text("not an object", rule, TextPaths(["title"])) == ""
    assert not TextPaths([])
    assert TextPaths(["a", "a"]).paths == ("a",)
