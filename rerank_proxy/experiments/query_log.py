"""UBI query records, written to the engine in bulk from a bounded queue, off the request path.

A search only appends its record to a queue (`offer`, O(1)); one background task per worker takes
up to FLUSH_RECORDS of them at a time (or whatever FLUSH_MS gathered) into one `_bulk` request. A
full queue drops the record, and so does a slow (WRITE_TIMEOUT_S), unreachable or refusing engine:
counted by reason (`rerank_proxy_ubi_records_dropped_total`), never a search slowed or failed. At
shutdown what is queued gets one last flush (CLOSE_FLUSH_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client.core import CounterMetricFamily

from rerank_proxy.engine.headers import CREDENTIAL_HEADERS
from rerank_proxy.engine.transport import EngineTransport
from rerank_proxy.errors import ProxyError
from rerank_proxy.experiments.ubi import UbiRequest
from rerank_proxy.metrics import counter

_log = logging.getLogger("rerank_proxy")

FLUSH_RECORDS = 500
FLUSH_MS = 500
WRITE_TIMEOUT_S = 10.0
ARM_OFF = "off"  # the `arm` of a search served with no experiment
WARN_EVERY_S = 60.0
CLOSE_FLUSH_S = 2.0  # the last flush at shutdown, within the worker's grace period
DROP_REASONS = ("queue_full", "engine_error", "refused", "shutdown")

MAPPING: dict[str, Any] = {
    "properties": {
        "query_id": {"type": "keyword"},
        "client_id": {"type": "keyword"},
        "application": {"type": "keyword"},
        "user_query": {"type": "keyword"},
        "object_id_field": {"type": "keyword"},
        "query_response_object_ids": {"type": "keyword"},
        "arm": {"type": "keyword"},
        "object_teams": {"type": "keyword"},
        "shadow_object_ids": {"type": "keyword"},
        "timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
        "query_attributes": {"type": "object"},
    },
}

Credentials = tuple[tuple[bytes, bytes], ...]


def credentials(raw_headers: Iterable[tuple[bytes, bytes]]) -> Credentials:
    """The search's credential headers: its record is written with them, as the search was read."""
    return tuple((k, v) for k, v in raw_headers if k.lower() in CREDENTIAL_HEADERS)


def query_record(ubi: UbiRequest, hits: Any, now_ms: int | None = None, arm: str = ARM_OFF,
                 teams: Sequence[str | None] = ()) -> dict[str, Any]:
    """One search's record in the UBI query schema, with the experiment's arm, and for the
    interleaved arm each returned hit's team (`object_teams`, null for the shared top)."""
    record: dict[str, Any] = {
        "query_id": ubi.query_id,
        "client_id": ubi.client_id,
        "user_query": ubi.user_query,
        "query_attributes": ubi.query_attributes,
        "query_response_object_ids": response_object_ids(hits, ubi.object_id_field),
        "timestamp": _iso(time.time_ns() // 1_000_000 if now_ms is None else now_ms),
        "arm": arm,
    }
    if teams:
        record["object_teams"] = list(teams)
    if ubi.object_id_field is not None:
        record["object_id_field"] = ubi.object_id_field
    if ubi.application is not None:
        record["application"] = ubi.application
    return record


def response_object_ids(hits: Any, object_id_field: str | None) -> list[str]:
    """The returned hits' ids: the `object_id_field` value of each `_source` when given (a dotted
    path), else (or when a hit lacks it) the hit's `_id`."""
    ids: list[str] = []
    for hit in hits if isinstance(hits, list) else ():
        if not isinstance(hit, dict):
            continue
        value = _source_value(hit.get("_source"), object_id_field) if object_id_field else None
        if value is None:
            value = hit.get("_id")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            ids.append(str(value))
    return ids


def _source_value(source: Any, path: str) -> Any:
    if isinstance(source, dict) and path in source:
        return source[path]
    for part in path.split("."):
        if not isinstance(source, dict):
            return None
        source = source.get(part)
    return source


def _items_written(answer: Any) -> int:
    """How many items of a `_bulk` answer were written (2xx)."""
    items = answer.get("items") if isinstance(answer, dict) else None
    written = 0
    for item in items if isinstance(items, list) else ():
        result: Any = next(iter(item.values()), None) if isinstance(item, dict) else None
        status = result.get("status") if isinstance(result, dict) else None
        written += isinstance(status, int) and 200 <= status < 300
    return written


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class QueryLog:
    """The worker's queue of UBI query records and the task that writes them."""

    def __init__(self, engine: EngineTransport, index: str, max_queued: int, flush_records: int = FLUSH_RECORDS,
                 flush_ms: int = FLUSH_MS, write_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self.engine = engine
        self.index = index
        self.max_queued = max_queued
        self.flush_records = flush_records
        self.flush_s = flush_ms / 1000
        self.write_timeout_s = write_timeout_s
        self.written = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._queue: deque[tuple[dict[str, Any], Credentials]] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._index_ready = False
        self._warned: dict[str, float] = {}

    def offer(self, record: dict[str, Any], auth: Credentials = ()) -> None:
        """Queue a record (dropped, counted, when the queue is full); the writer starts on the first."""
        if len(self._queue) >= self.max_queued:
            self.dropped["queue_full"] += 1
            return
        self._queue.append((record, auth))
        self._arrived.set()
        if len(self._queue) >= self.flush_records:
            self._full.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def aclose(self) -> None:
        """Stop the writer (shutdown), then one last flush of what is queued, within CLOSE_FLUSH_S;
        what that leaves is dropped with the worker (counted: `shutdown`)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_FLUSH_S
        while self._queue and (left := deadline - loop.time()) > 0:
            await self._write_batch(min(left, self.write_timeout_s))
        self.dropped["shutdown"] += len(self._queue)
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._queue) < self.flush_records:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_s)
            await self._write_batch(self.write_timeout_s)

    async def _write_batch(self, timeout_s: float) -> None:
        """Up to FLUSH_RECORDS queued records, one bulk write per set of credentials. A write cut off
        (shutdown) puts its records back at the front: written again by the last flush, the same
        `_id`s, so never twice."""
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.flush_records))]
        by_auth: dict[Credentials, list[dict[str, Any]]] = {}
        for record, auth in batch:
            by_auth.setdefault(auth, []).append(record)
        for auth, records in by_auth.items():
            try:
                await self._write(records, auth, timeout_s)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))
                raise
            batch = [entry for entry in batch if entry[1] != auth]  # what a cut-off write puts back

    async def _write(self, records: list[dict[str, Any]], auth: Credentials, timeout_s: float) -> None:
        """One bulk write, bounded in time; every record not written is counted as dropped."""
        try:
            written, refused = await asyncio.wait_for(self._bulk(records, auth), timeout_s)
        except (TimeoutError, ProxyError, OSError, ValueError) as exc:  # ValueError: an answer not JSON
            self.dropped["engine_error"] += len(records)
            self._warn("engine_error", "UBI query records dropped: the engine did not take them",
                       {"records": len(records), "error": f"{type(exc).__name__}: {exc}"})
            return
        self.written += written
        self.dropped["refused"] += refused
        if refused:
            self._warn("refused", "UBI query records refused by the engine", {"records": refused, "index": self.index})

    def _warn(self, reason: str, message: str, fields: dict[str, Any]) -> None:
        """A warning per reason at most every WARN_EVERY_S: a refusing engine fails every batch."""
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[reason] = now
            _log.warning(message, extra={"fields": {**fields, "dropped_total": self.dropped[reason]}})

    async def _bulk(self, records: list[dict[str, Any]], auth: Credentials) -> tuple[int, int]:
        """(written, refused) of one `_bulk` of `records`; the index is created first if absent."""
        if not self._index_ready:
            await self._create_index(auth)
        lines = []
        for record in records:
            lines.append(orjson.dumps({"index": {"_id": record["query_id"]}}))  # the id: a resend overwrites
            lines.append(orjson.dumps(record))
        headers = [*auth, (b"content-type", b"application/x-ndjson")]
        answer = await self.engine.fetch("POST", f"/{quote(self.index, safe='')}/_bulk", headers,
                                         b"\n".join(lines) + b"\n")
        if answer.status != 200:
            return 0, len(records)
        ok = _items_written(orjson.loads(answer.body))
        return ok, len(records) - ok

    async def _create_index(self, auth: Credentials) -> None:
        """The index with its mapping (keyword ids, a date timestamp), unless it exists already."""
        body = orjson.dumps({"mappings": MAPPING})
        answer = await self.engine.fetch("PUT", f"/{quote(self.index, safe='')}",
                                         [*auth, (b"content-type", b"application/json")], body)
        if answer.status == 200 or b"resource_already_exists_exception" in answer.body:
            self._index_ready = True

    def families(self) -> Iterable[Any]:
        """The metric families, read at scrape time."""
        yield counter("rerank_proxy_ubi_records_written", "UBI query records written to the engine.",
                      self.written)
        dropped = CounterMetricFamily("rerank_proxy_ubi_records_dropped",
                                      "UBI query records dropped, by reason.",
                                      labels=["reason"])
        for reason, count in self.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
