"""An elasticsearch-py node whose request bodies leave a moment after their head, as over a real network.

On loopback, urllib3 writes a request's head and body back to back, so a proxy always has the whole
request before the engine can answer. Over a network the body of any request larger than a segment, or
sent by a client that writes the head first, arrives later. Some engine answers come from the head
alone ("no handler found" 400, a wrong method's 405): the engine answers, then reads and drops the
body and keeps the connection. A proxy that closes the client's connection when such an early answer
comes back breaks the client's next request (issue 25, defect 4). `DelayedBodyNode` sends the head,
waits `BODY_DELAY_S`, then sends the body (with its Content-Length, never chunked), so the suite meets
that case on every such request. Everything else is elasticsearch-py's own urllib3 node.

urllib3 hides such a close: before reusing a pooled connection it checks whether the peer closed it,
and quietly connects again. So the node also counts the TCP connections it opens (`connects`): the
engine keeps every connection of the suite open, so through a proxy each extra connect is a connection
the proxy closed where the engine would not have.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from elastic_transport import NodeConfig, Urllib3HttpNode

BODY_DELAY_S = 0.03


def _later(body: bytes, delay_s: float) -> Iterator[bytes]:
    time.sleep(delay_s)   # urllib3 has sent the head when it first asks for a chunk
    yield body


class _DelayedBodyPool:
    """urllib3's connection pool, with each body handed over as one chunk after a pause."""

    def __init__(self, pool: Any, delay_s: float) -> None:
        self._pool = pool
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def urlopen(self, method: str, url: str, body: bytes | None = None, headers: Any = None,
                **kwargs: Any) -> Any:
        if body:
            sent = {k: v for k, v in dict(headers or {}).items() if k.lower() != "content-length"}
            sent["Content-Length"] = str(len(body))
            return self._pool.urlopen(method, url, body=_later(body, self._delay_s), headers=sent, **kwargs)
        return self._pool.urlopen(method, url, body=body, headers=headers, **kwargs)


class DelayedBodyNode(Urllib3HttpNode):
    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        self.connects = 0
        node = self
        base = self.pool.ConnectionCls

        class CountingConnection(base):  # type: ignore[valid-type,misc]  # the pool's own class, known at run time
            def connect(self) -> None:
                node.connects += 1
                super().connect()

        self.pool.ConnectionCls = CountingConnection
        self.pool = _DelayedBodyPool(self.pool, BODY_DELAY_S)  # type: ignore[assignment]  # a wrapper with urlopen, all the node calls


def connects(client: Any) -> int:
    """TCP connections the client's nodes have opened so far (DelayedBodyNode only)."""
    return sum(getattr(node, "connects", 0) for node in client.transport.node_pool.all())
