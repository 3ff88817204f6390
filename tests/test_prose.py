"""Framework records in text fields: serialised JSON and `metadata` objects are not sent as prose."""

from __future__ import annotations

import orjson
import pytest

from rerank_proxy.config import IndexRule
from rerank_proxy.search.text.hit_text import hit_text
from rerank_proxy.search.text.mapping_fields import RERANK_TEXT_TYPES, TextPaths, answer_paths
from rerank_proxy.search.text.prose import is_serialised_json, without_metadata

DEFAULT = IndexRule("*")
# The shape LlamaIndex's Elasticsearch store writes: the content, and the whole node again as JSON.
NODE = {"id_": "n1", "text": "Boundary layers on flat plates.", "metadata": {"file_name": "a.txt"},
        "relationships": {"1": {"node_id": "d1"}}}
LLAMA_SOURCE = {"content": "Boundary layers on flat plates.",
                "metadata": {"file_name": "a.txt", "_node_content": orjson.dumps(NODE).decode(),
                             "_node_type": "TextNode", "document_id": "d1", "doc_id": "d1", "ref_doc_id": "d1"}}
LLAMA_MAPPING = {"llama": {"mappings": {"properties": {
    "content": {"type": "text"},
    "embedding": {"type": "dense_vector", "dims": 3},
    "metadata": {"properties": {
        "file_name": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "_node_content": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "_node_type": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "document_id": {"type": "keyword"}, "doc_id": {"type": "keyword"}, "ref_doc_id": {"type": "keyword"}}}}}}}


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2]", '[{"id": "x"}]', "{}", '{"nested": {"k": [true, null]}}'])
def test_json_objects_and_arrays_are_records(text: str):
    assert is_serialised_json(text)


@pytest.mark.parametrize("text", ["[citation needed]", "{braces} in prose", "plain words", '"a quoted string"',
                                  "42", "[1, 2", "{not: json}", "x"])
def test_prose_that_looks_like_json_at_one_end_is_kept(text: str):
    assert not is_serialised_json(text)


def test_metadata_fields_are_dropped_when_content_lies_outside_them():
    assert without_metadata({"text", "metadata.source", "metadata.title"}) == {"text"}
    assert without_metadata({"content", "metadatafoo", "meta.note"}) == {"content", "metadatafoo", "meta.note"}


def test_an_index_whose_only_text_is_metadata_keeps_it():
    assert without_metadata({"metadata.summary"}) == {"metadata.summary"}


def test_llamaindex_schema_sends_the_content_only():
    paths = TextPaths(without_metadata(answer_paths(LLAMA_MAPPING, RERANK_TEXT_TYPES)))
    assert paths.paths == ("content",)
    assert hit_text(LLAMA_SOURCE, DEFAULT, paths) == "Boundary layers on flat plates."


def test_the_every_string_default_skips_serialised_json_too():
    # No mapping read (refused, or never): every string, less the serialised node.
    text = hit_text(LLAMA_SOURCE, DEFAULT, None)
    assert "_node_content" not in text
    assert "relationships" not in text
    assert text.startswith("Boundary layers on flat plates.")


def test_a_document_of_nothing_but_json_keeps_it_rather_than_an_empty_text():
    source = {"message": '{"event": "login", "user": "ann"}'}
    assert hit_text(source, DEFAULT, None) == source["message"]
    assert hit_text(source, DEFAULT, TextPaths(["message"])) == source["message"]


def test_named_fields_are_sent_as_named_json_or_not():
    source = {"payload": '{"k": "v"}', "title": "T"}
    assert hit_text(source, IndexRule("*", fields=("payload",)), None) == '{"k": "v"}'
