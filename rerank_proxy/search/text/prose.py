"""What in a document is prose for the reranker, beyond what its mapping says.

Frameworks that sit on the engines store more than content in text fields. LangChain and LlamaIndex
keep each document's metadata in one `metadata` object beside its content (`text`, `content`), and
dynamic mapping types its strings as `text`: file names, ids, and LlamaIndex's whole node serialised
as JSON (`metadata._node_content`). Sent to a reranker they bill tokens, crowd the content out of
the RERANK_MAX_CHARS cut and score the record's syntax, not its meaning.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

# The top-level object both LangChain's and LlamaIndex's Elasticsearch stores keep metadata in.
METADATA_OBJECT = "metadata"
_INSIDE_METADATA = METADATA_OBJECT + "."


def without_metadata(paths: Iterable[str]) -> set[str]:
    """The text paths outside a top-level `metadata` object, if any prose is left outside it
    (an index whose only text lives there keeps it: an empty text would rank its hits last)."""
    every = set(paths)
    outside = {path for path in every if not path.startswith(_INSIDE_METADATA)}
    return outside or every


def is_serialised_json(text: str) -> bool:
    """Whether a stripped, non-empty string is a JSON object or array: a record, not prose.

    The first and last characters rule out almost every string before any parse, so prose costs
    two comparisons; "[citation needed]" starts and ends like an array and is kept, being no JSON.
    """
    if text[0] not in "{[" or text[-1] not in "}]":
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, (dict, list))
