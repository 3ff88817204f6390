"""A Cohere-protocol test server for the benchmarks: counts what it is asked, answers after a fixed delay.

It is the project's own Cohere v2 server (`rerank_proxy.local.rerank_server.build_app`) around a deterministic
scorer that sleeps a fixed time per request and scores each document by a hash of (query, text).
It is NOT Cohere's API: it only speaks its protocol.

Extra endpoints for the benchmark:
- `GET /_stats[?records=1]`: requests, documents, search units counted by Cohere's rule
  (ceil(documents / 100) per request), and with records=1 one row per request:
  [query, documents, provider_ms] where provider_ms is the server's own time for the request,
  from the moment its ASGI app is called until the last byte of the reply is handed to the server.
- `POST /_stats/reset`: zero everything.

    python -m bench.count_server --port 8799 --delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import orjson

from rerank_proxy.local.rerank_server import build_app
from rerank_proxy.scoring.providers.base import RerankResult

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("bench_request", default=None)


class CountingScorer:
    """The Reranker protocol: fixed delay, deterministic scores in [0, 1)."""

    name = "bench-counter"
    model = "bench-counter-1"
    pointwise = True

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        record = _current.get()
        if record is not None:
            record["query"] = query
            record["documents"] = len(documents)
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        prefix = query.encode() + b"\x1f"
        scores = [int.from_bytes(hashlib.blake2b(prefix + d.encode(), digest_size=4).digest(), "big") / 2**32
                  for d in documents]
        return RerankResult(scores=scores, billed_units=math.ceil(len(documents) / 100))

    async def aclose(self) -> None:
        return None


class Counting:
    """ASGI wrapper: times and counts every rerank request, serves /_stats."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.documents = 0
        self.search_units = 0
        self.errors = 0
        self.records: list[list[Any]] = []
        self.started = time.time()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/_stats":
            want = b"records=1" in scope.get("query_string", b"")
            body: dict[str, Any] = {"requests": self.requests, "documents": self.documents,
                    "search_units": self.search_units, "errors": self.errors,
                    "since_s": time.time() - self.started}
            if want:
                body["records"] = self.records
            await _reply(send, orjson.dumps(body))
            return
        if path == "/_stats/reset":
            self.reset()
            await _reply(send, b'{"reset": true}')
            return
        if not path.endswith("rerank"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record: dict[str, Any] = {}
        token = _current.set(record)
        status = [0]

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            _current.reset(token)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if status[0] == 200 and "documents" in record:
            self.requests += 1
            self.documents += record["documents"]
            self.search_units += math.ceil(record["documents"] / 100)
            self.records.append([record["query"], record["documents"], round(elapsed_ms, 3)])
        else:
            self.errors += 1


async def _reply(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    app = Counting(build_app(CountingScorer(args.delay_ms / 1000), api_key=args.api_key))
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, timeout_keep_alive=75)


if __name__ == "__main__":
    main()
