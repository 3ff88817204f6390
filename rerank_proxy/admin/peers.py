"""One scrape for every worker: each worker serves its own exposition on a Unix socket, and the
worker that receives a scrape merges them all into one.

Why not prometheus_client's multiprocess mode: it writes every counter increment to an mmap file
(the request path would pay for it) and cannot carry the collectors that read live objects at
scrape time (cache, provider, breaker). Here the request path is unchanged; only a scrape costs
something (one local socket round trip per other worker, a JSON decode and a merge).

Counters and histograms are summed. Gauges are summed too (in-flight requests, cache entries,
memory, file descriptors add up), except those in MAX_GAUGES / MIN_GAUGES (the per-host tier's
entries are one figure every worker reads, not a part each holds), and OWN_GAUGES,
which the scraping worker has just measured (the others' values may be old). The supervisor's own
process_* figures are added, so process_cpu_seconds_total is the whole process tree's.
A worker that died takes its counts with it (the sum drops; Prometheus's rate() reads that as a
counter reset), which is rare enough to accept.

The same socket carries the worker's embedder status, so `/_rerank/ready` reports the queue of
every worker (`merge_vectors`), not that of whichever worker took the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric

_log = logging.getLogger("rerank_proxy")

# The vector store is one SQLite file per host: every worker counts the same rows.
MAX_GAUGES = {"rerank_proxy_breaker_state", "process_max_fds", "rerank_proxy_cache_host_entries",
              "rerank_proxy_vector_store_entries"}
OWN_GAUGES = {"rerank_proxy_engine_up"}
MIN_GAUGES = {"process_start_time_seconds"}
PEER_TIMEOUT_S = 2.0


class PeerMetrics:
    """This worker's socket in `directory`, and the merge over every socket found there."""

    def __init__(self, directory: str, metrics: Any, supervisor_pid: int | None = None,
                 vectors: Callable[[], dict[str, Any]] | None = None) -> None:
        self.directory = directory
        self.metrics = metrics
        self.supervisor_pid = supervisor_pid
        self.vectors = vectors  # the built-in model's embedder status; None for hosted providers
        self.path = os.path.join(directory, f"{os.getpid()}.sock")
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(orjson.dumps(self._own()))
                await writer.drain()
            finally:
                writer.close()

        self._server = await asyncio.start_unix_server(answer, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _own(self) -> dict[str, Any]:
        """What this worker tells the others: its metric families and its embedder status."""
        return {"families": snapshot(self.metrics.registry.collect()),
                "vectors": self.vectors() if self.vectors is not None else None}

    async def _everyone(self) -> list[dict[str, Any]]:
        """This worker's report first, then every other worker's that answered."""
        others = [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory))
                  if name.endswith(".sock") and os.path.join(self.directory, name) != self.path]
        fetched = await asyncio.gather(*(self._fetch(path) for path in others))
        return [self._own(), *(report for report in fetched if report is not None)]

    async def merged(self) -> bytes:
        """The exposition of every worker (this one first) and the supervisor's process_* figures."""
        groups = [report["families"] for report in await self._everyone()]
        supervisor = self.supervisor_pid
        if supervisor is not None:
            groups.append(snapshot(ProcessCollector(pid=lambda: supervisor, registry=None).collect()))
        return render(merge(groups))

    async def merged_vectors(self) -> dict[str, Any] | None:
        """The embedder status of every worker, merged (None without the built-in model)."""
        statuses = [report["vectors"] for report in await self._everyone() if report.get("vectors")]
        return merge_vectors(statuses) if statuses else None

    async def _fetch(self, path: str) -> dict[str, Any] | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), PEER_TIMEOUT_S)
        except ConnectionRefusedError:  # the worker is gone: its socket file is stale
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        except (FileNotFoundError, TimeoutError, OSError) as exc:
            _log.warning("worker metrics unavailable", extra={"fields": {"socket": path, "error": repr(exc)}})
            return None
        try:
            report = orjson.loads(await asyncio.wait_for(reader.read(), PEER_TIMEOUT_S))
            if not isinstance(report, dict) or not isinstance(report.get("families"), list):
                raise ValueError("not a worker report")
            return report
        except (TimeoutError, OSError, ValueError) as exc:  # orjson's decode error is a ValueError
            _log.warning("worker metrics unavailable", extra={"fields": {"socket": path, "error": repr(exc)}})
            return None
        finally:
            writer.close()


def snapshot(families: Iterable[Metric]) -> list[Any]:
    """Families as plain lists ([name, help, type, unit, [[sample, labels, value], ...]]): what a
    worker sends. JSON, because parsing the text format back costs about 6 ms per worker."""
    return [[f.name, f.documentation, f.type, f.unit, [[s.name, s.labels, s.value] for s in f.samples]]
            for f in families]


def merge(groups: Iterable[list[Any]]) -> list[Metric]:
    """Snapshots of several processes combined into one family of each name."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for group in groups:
        for name, documentation, kind, unit, samples in group:
            if name not in families:
                families[name] = Metric(name, documentation, kind, unit)
                values[name] = {}
            combine = _combiner(name, kind)
            slot = values[name]
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                slot[key] = value if key not in slot else combine(slot[key], value)
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


# Embedder figures that are one per host, not a part each worker holds: the shared store, its path
# and the model, and the configured limits, which every worker has the same of.
_SAME_IN_EVERY_WORKER = frozenset({"model", "store", "store_entries", "queue_max", "write_queue_max"})


def merge_vectors(statuses: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Several workers' embedder status as one: queues, counts and throughput summed, the shared
    store's figures taken once (the largest count: a worker may have read it a moment earlier)."""
    merged: dict[str, Any] = {"workers": len(statuses)}
    for status in statuses:
        for key, value in status.items():
            known = merged.get(key)
            if key in _SAME_IN_EVERY_WORKER:
                merged[key] = value if known is None or (isinstance(value, int) and value > known) else known
            elif isinstance(value, dict):
                into = merged.setdefault(key, {})
                for name, count in value.items():
                    into[name] = into.get(name, 0) + count
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = value if known is None else known + value
            elif key not in merged:
                merged[key] = value
    return merged


def _combiner(name: str, kind: str) -> Any:
    if kind == "gauge" and name in OWN_GAUGES:
        return lambda first, later: first
    if kind == "gauge" and name in MAX_GAUGES:
        return max
    if kind == "gauge" and name in MIN_GAUGES:
        return min
    return lambda a, b: a + b


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
