"""The UBI (User Behavior Insights) request extension: `"ext": {"ubi": {...}}` on a search.

Apps written for OpenSearch's UBI plugin send it; Elasticsearch, and an OpenSearch without the
plugin, refuse the unknown extension. So the proxy takes it out of every search body before the
engine sees it, validates it as the plugin does (a 400 for a malformed one), and answers the
query id back (`ext.ubi.query_id`), generated when the app gave none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from rerank_proxy.errors import ProxyError

EXT_KEY = "ext"
UBI_KEY = "ubi"
_STRING_FIELDS = ("query_id", "client_id", "user_query", "object_id_field", "application")
_FIELDS = (*_STRING_FIELDS, "query_attributes")


@dataclass(frozen=True, slots=True)
class UbiRequest:
    """What a search's `ext.ubi` asked for; `query_id` is always set (generated when absent)."""

    query_id: str
    client_id: str | None = None
    user_query: str | None = None
    object_id_field: str | None = None
    application: str | None = None
    query_attributes: dict[str, Any] = field(default_factory=dict)
    generated: bool = False  # the proxy made the query id up


def _parse_error(reason: str) -> ProxyError:
    # The plugin's ObjectParser refuses a bad extension this way (a 400, x_content_parse_exception).
    return ProxyError(400, "x_content_parse_exception", f"[{UBI_KEY}] {reason}")


def pop_ubi(body: dict[str, Any]) -> UbiRequest | None:
    """Remove `ext.ubi` from `body` (and `ext` when ubi was its only key); None when there was none.
    A malformed extension raises the 400 the plugin would answer."""
    ext = body.get(EXT_KEY)
    if not isinstance(ext, dict) or UBI_KEY not in ext:
        return None
    raw = ext.pop(UBI_KEY)
    if not ext:
        del body[EXT_KEY]
    return parse_ubi(raw)


def parse_ubi(raw: Any) -> UbiRequest:
    """The extension's value, checked: an object of known fields, strings, attributes an object."""
    if not isinstance(raw, dict):
        raise _parse_error(f"must be an object, found [{type(raw).__name__}]")
    for key in raw:
        if key not in _FIELDS:
            raise _parse_error(f"unknown field [{key}]; accepted: {', '.join(_FIELDS)}")
    values: dict[str, str | None] = {}
    for name in _STRING_FIELDS:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise _parse_error(f"[{name}] must be a string, found [{type(value).__name__}]")
        values[name] = value
    attributes = raw.get("query_attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise _parse_error(f"[query_attributes] must be an object, found [{type(attributes).__name__}]")
    query_id = values.pop("query_id")
    generated = not query_id
    return UbiRequest(query_id=query_id or str(uuid.uuid4()), query_attributes=dict(attributes or {}),
                      generated=generated, **values)


def answer_ext(response: dict[str, Any], ubi: UbiRequest) -> None:
    """Put the query id in a search response, where the plugin puts it: `ext.ubi.query_id`."""
    ext = response.get(EXT_KEY)
    if not isinstance(ext, dict):
        ext = response[EXT_KEY] = {}
    ext[UBI_KEY] = {"query_id": ubi.query_id}


def header(ubi: UbiRequest) -> tuple[bytes, bytes] | None:
    """The query id as a response header, for clients that read headers (and relayed answers);
    None for an id that cannot be a header value (not printable ASCII: never a split header)."""
    if not (ubi.query_id.isascii() and ubi.query_id.isprintable()):
        return None
    return (b"x-ubi-query-id", ubi.query_id.encode("ascii"))
