"""What the console asks the engine about its catalogue: indices and their text fields.

These feed the page's pickers only; they go through the proxy's engine transport (same TLS, failover
and credentials as searches) and never carry the console's admin token to the engine.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from rerank_proxy.errors import ProxyError
from rerank_proxy.search.text.mapping_fields import answer_paths

# Wider than what the reranker is sent by default (`RERANK_TEXT_TYPES`): a picker offers every
# string-valued field, keywords included, for the user to choose from.
TEXT_TYPES = frozenset({"text", "keyword", "match_only_text", "search_as_you_type", "wildcard",
                        "constant_keyword"})


async def _get_json(runtime: Any, target: str) -> Any:
    answer = await runtime.engine.fetch("GET", target, [(b"accept", b"application/json")], None)
    if answer.status != 200:
        raise ProxyError(answer.status if answer.status >= 400 else 502, "engine_exception",
                         f"the engine answered {answer.status} to {target.split('?')[0]}")
    return orjson.loads(answer.body)


async def list_indices(runtime: Any) -> list[dict[str, Any]]:
    """User indices (no dot-indices), with doc counts and whether the proxy reranks them."""
    rows = await _get_json(runtime, "/_cat/indices?format=json&h=index,docs.count,health,status")
    out = []
    for row in rows if isinstance(rows, list) else []:
        name = str(row.get("index", ""))
        if not name or name.startswith("."):
            continue
        rule = runtime.settings.rule_for(name)
        docs = row.get("docs.count")
        out.append({"name": name, "docs": int(docs) if str(docs or "").isdigit() else None,
                    "health": row.get("health"), "reranked": rule is not None,
                    "rule": None if rule is None else {"fields": list(rule.fields), "template": rule.template,
                                                       "window": rule.window, "max_chars": rule.max_chars}})
    return sorted(out, key=lambda r: r["name"])


async def text_fields(runtime: Any, index: str) -> list[str]:
    """Text-like `_source` fields of an index (sub-fields like `title.raw` are not in `_source`)."""
    data = await _get_json(runtime, f"/{quote(index, safe='*')}/_mapping")
    return sorted(answer_paths(data, TEXT_TYPES))
