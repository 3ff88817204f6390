"""A bounded asyncio HTTP load generator, run as its own process by the benchmarks.

    python -m bench.loadgen SPEC.json OUT.json

SPEC (JSON):
- `mode: "list"`: send `requests` (each {url, method, body?, headers?, tag?}) in order, cycling until
  `count` requests were sent (default: each once), with `concurrency` in flight; one record per
  request: [i, tag, start_s, latency_ms, status, {captured headers}].
- `mode: "mix"`: for `duration_s`, with `concurrency` in flight, draw a kind by `weights`
  ({"search": w, "get": w, "bulk": w}); searches use a distinct query each (a query of `queries`
  plus a number), gets a random id of `get_ids`, bulks the `bulk_body`. Records per kind: latencies
  and status counts only (a long run would make per-request records too big).
Both bounded by `max_s` (hard stop). Progress goes to stderr every `progress_s` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httptools

# How one request can fail: the connection (refused, reset, closed early), its deadline, or an answer
# that is not HTTP. Each is recorded in the request's row and the run goes on; anything else is a bug here.
REQUEST_ERRORS = (OSError, TimeoutError, httptools.HttpParserError)


class _Answer(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its answer parsed as the bytes arrive (so the
    time is taken when the last byte is read, not when a client library hands the answer over)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[tuple[int, dict[str, str], float]] | None = None
        self.capture: frozenset[str] = frozenset()
        self.headers: dict[str, str] = {}
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.decode("latin-1").lower()
        if lowered in self.capture:
            self.headers[lowered] = value.decode("latin-1")

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.done is not None and not self.done.done():
            self.done.set_result((self.parser.get_status_code(), self.headers, time.perf_counter()))


class Client:
    """HTTP/1.1 over one keep-alive connection per (host, port), re-opened when the server closes it.

    A plain client, not a library's: at 32 searches in flight on a 2-core machine the load generator
    shares the CPU with what it measures, and every millisecond it spends is charged to the proxy."""

    def __init__(self, capture: list[str]) -> None:
        self.capture = frozenset(capture)
        self.connections: dict[tuple[str, int], _Answer] = {}

    async def request(self, method: str, url: str, body: bytes | None,
                      headers: dict[str, str]) -> tuple[int, dict[str, str], float]:
        """(status, captured headers, perf_counter at the last byte)."""
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 80)
        conn = self.connections.get(address)
        if conn is None or not conn.keep_alive or conn.transport is None or conn.transport.is_closing():
            _, conn = await asyncio.get_running_loop().create_connection(_Answer, *address)
            self.connections[address] = conn
        conn.capture, conn.headers = self.capture, {}
        conn.done = asyncio.get_running_loop().create_future()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}\r\n\r\n" if body is not None else "\r\n")
        assert conn.transport is not None
        conn.transport.write("".join(head).encode("latin-1") + (body or b""))
        try:
            return await conn.done
        finally:
            if not conn.keep_alive and conn.transport is not None:
                conn.transport.close()

    def close(self) -> None:
        for conn in self.connections.values():
            if conn.transport is not None:
                conn.transport.close()


def _progress(message: str) -> None:
    print(f"[loadgen {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run_list(spec: dict[str, Any]) -> dict[str, Any]:
    requests = spec["requests"]
    count = int(spec.get("count") or len(requests))
    capture = [h.lower() for h in spec.get("capture_headers", [])]
    concurrency = int(spec.get("concurrency", 1))
    max_s = float(spec.get("max_s", 3600))
    progress_s = float(spec.get("progress_s", 5))
    timeout_s = float(spec.get("timeout_s", 30))
    counter = itertools.count()
    records: list[list[Any]] = []
    t0 = time.perf_counter()
    prepared = [(r["method"], r["url"], r.get("body").encode() if isinstance(r.get("body"), str) else None,
                 r.get("headers") or {}, r.get("tag", "")) for r in requests]

    async def worker() -> None:
        client = Client(capture)
        try:
            while True:
                i = next(counter)
                if i >= count or time.perf_counter() - t0 > max_s:
                    return
                method, url, body, headers, tag = prepared[i % len(prepared)]
                start = time.perf_counter()
                try:
                    status, found, end = await asyncio.wait_for(client.request(method, url, body, headers), timeout_s)
                    captured = {h: found.get(h, "") for h in capture}
                except REQUEST_ERRORS as exc:  # recorded, not fatal: the benchmark reports errors
                    status, captured, end = 0, {"error": f"{type(exc).__name__}: {exc}"[:200]}, time.perf_counter()
                    client.close()
                    client = Client(capture)
                records.append([i, tag, round(start - t0, 6), (end - start) * 1000, status, captured])
        finally:
            client.close()

    async def reporter() -> None:
        while True:
            await asyncio.sleep(progress_s)
            done = len(records)
            _progress(f"{done}/{count} requests, {done / (time.perf_counter() - t0):.0f}/s")

    task = asyncio.create_task(reporter())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    task.cancel()
    elapsed = time.perf_counter() - t0
    records.sort(key=lambda r: r[0])
    return {"mode": "list", "elapsed_s": elapsed, "concurrency": concurrency, "records": records}


async def run_mix(spec: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(spec.get("seed", 1))
    base = spec["base_url"]
    duration = float(spec["duration_s"])
    concurrency = int(spec.get("concurrency", 8))
    progress_s = float(spec.get("progress_s", 10))
    weights = spec["weights"]
    kinds = list(weights)
    queries = spec["queries"]
    search_path = spec["search_path"]
    get_paths = [spec["get_path"].format(id=i) for i in spec["get_ids"]]
    bulk = spec["bulk_body"].encode()
    serial = itertools.count(1)
    stats: dict[str, dict[str, Any]] = {k: {"latencies_ms": [], "status": {}} for k in kinds}
    headers_json = {"content-type": "application/json"}
    headers_nd = {"content-type": "application/x-ndjson"}
    t0 = time.perf_counter()

    timeout_s = float(spec.get("timeout_s", 30))

    async def one(client: Client, kind: str) -> Client:
        if kind == "search":
            n = next(serial)
            query = f"{queries[n % len(queries)]} {n}"
            body = json.dumps({"query": {"multi_match": {"query": query, "fields": ["title^2", "text"]}}}).encode()
            method, url, data, headers = "POST", base + search_path, body, headers_json
        elif kind == "get":
            method, url, data, headers = "GET", base + rng.choice(get_paths), None, {}
        else:
            method, url, data, headers = "POST", base + "/_bulk", bulk, headers_nd
        start = time.perf_counter()
        try:
            code, _, end = await asyncio.wait_for(client.request(method, url, data, headers), timeout_s)
            status = str(code)
        except REQUEST_ERRORS as exc:
            status, end = type(exc).__name__, time.perf_counter()
            client.close()
            client = Client([])
        entry = stats[kind]
        entry["latencies_ms"].append(round((end - start) * 1000, 3))
        entry["status"][status] = entry["status"].get(status, 0) + 1
        return client

    async def worker() -> None:
        client = Client([])
        try:
            while time.perf_counter() - t0 < duration:
                client = await one(client, rng.choices(kinds, [weights[k] for k in kinds])[0])
        finally:
            client.close()

    async def reporter() -> None:
        while True:
            await asyncio.sleep(progress_s)
            counts = {k: len(v["latencies_ms"]) for k, v in stats.items()}
            _progress(f"{time.perf_counter() - t0:.0f}/{duration:.0f}s {counts}")

    task = asyncio.create_task(reporter())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    task.cancel()
    return {"mode": "mix", "elapsed_s": time.perf_counter() - t0, "concurrency": concurrency, "stats": stats}


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("mode", "list") == "mix":
        return await run_mix(spec)
    return await run_list(spec)


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    try:
        import uvloop
        out = uvloop.run(main_async(spec))
    except ImportError:
        out = asyncio.run(main_async(spec))
    with open(sys.argv[2], "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
