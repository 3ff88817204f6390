"""Reading a whole index through the engine transport: the scroll API in `_doc` order.

The scroll API is the same on Elasticsearch and OpenSearch, and `_doc` order is the cheapest
full read. Used to warm the built-in model's vector store (at start-up, and by `rerank-proxy warm`).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import orjson

from rerank_proxy.engine.transport import EngineTransport
from rerank_proxy.errors import ProxyError

SCROLL_KEEP_ALIVE = "5m"
_JSON = [(b"Content-Type", b"application/json"), (b"Accept", b"application/json")]


class ScrollError(Exception):
    """The engine could not be read (unreachable, or it refused the scroll): one clear message."""


class Scroll:
    def __init__(self, engine: EngineTransport, index: str, size: int, source: tuple[str, ...] | None) -> None:
        self.engine, self.index, self.size, self.source = engine, index, size, source
        self.scroll_id: str | None = None

    async def first(self) -> tuple[list[dict[str, Any]], int | None]:
        body: dict[str, Any] = {"size": self.size, "sort": ["_doc"], "track_total_hits": True,
                                "_source": list(self.source) if self.source is not None else True}
        data = await self._call("POST", f"/{quote(self.index, safe='*,')}/_search?scroll={SCROLL_KEEP_ALIVE}", body)
        total = data.get("hits", {}).get("total")
        return self._hits(data), total.get("value") if isinstance(total, dict) else total

    async def next(self) -> list[dict[str, Any]]:
        return self._hits(await self._call("POST", "/_search/scroll",
                                           {"scroll": SCROLL_KEEP_ALIVE, "scroll_id": self.scroll_id}))

    async def clear(self) -> None:
        if self.scroll_id:
            with contextlib.suppress(ProxyError):  # it expires by itself after SCROLL_KEEP_ALIVE
                await self.engine.fetch("DELETE", "/_search/scroll", _JSON,
                                        orjson.dumps({"scroll_id": [self.scroll_id]}))
            self.scroll_id = None

    def _hits(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.scroll_id = data.get("_scroll_id") or self.scroll_id
        return data.get("hits", {}).get("hits") or []

    async def _call(self, method: str, target: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self.engine.fetch(method, target, _JSON, orjson.dumps(body))
        except ProxyError as exc:
            raise ScrollError(f"cannot read {self.index!r} from the engine: {exc.reason}") from None
        if answer.status != 200:
            raise ScrollError(f"engine answered {answer.status} to {method} {target.split('?')[0]}: "
                              f"{answer.body[:500].decode('utf-8', 'replace')}")
        data = orjson.loads(answer.body)
        return data if isinstance(data, dict) else {}
