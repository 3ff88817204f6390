"""One scrape for every worker: each worker serves its own exposition on a Unix socket, and the
worker that receives a scrape merges them all into one.

Why not prometheus_client's multiprocess mode: it writes every counter increment to an mmap file
(the request path would pay for it) and cannot carry the collectors that read live objects at
scrape time (cache, provider, breaker). Here the request path is unchanged; only a scrape costs
something (one local socket round trip per other worker plus a text parse and merge).

Counters and histograms are summed. Gauges are summed too (in-flight requests, cache entries,
memory, file descriptors add up), except those in MAX_GAUGES / MIN_GAUGES, and OWN_GAUGES,
which the scraping worker has just measured (the others' values may be old). The supervisor's own
process_* figures are added, so process_cpu_seconds_total is the whole process tree's.
A worker that died takes its counts with it (the sum drops; Prometheus's rate() reads that as a
counter reset), which is rare enough to accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rerank_proxy.admin.metrics import gauge

_log = logging.getLogger("rerank_proxy")

MAX_GAUGES = {"rerank_proxy_breaker_state", "process_max_fds"}
OWN_GAUGES = {"rerank_proxy_engine_up"}
MIN_GAUGES = {"process_start_time_seconds"}
PEER_TIMEOUT_S = 2.0


class PeerMetrics:
    """This worker's socket in `directory`, and the merge over every socket found there."""

    def __init__(self, directory: str, metrics: Any, supervisor_pid: int | None = None) -> None:
        self.directory = directory
        self.metrics = metrics
        self.supervisor_pid = supervisor_pid
        self.path = os.path.join(directory, f"{os.getpid()}.sock")
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(self.metrics.render())
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

    async def merged(self, own: bytes) -> bytes:
        others = [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory))
                  if name.endswith(".sock") and os.path.join(self.directory, name) != self.path]
        fetched = await asyncio.gather(*(self._fetch(path) for path in others))
        texts = [own.decode(), *(text for text in fetched if text is not None)]
        extra: list[Metric] = [gauge("rerank_proxy_workers", "Worker processes whose metrics this scrape merged.",
                                     len(texts))]
        if self.supervisor_pid is not None:
            extra.extend(ProcessCollector(pid=lambda: self.supervisor_pid, registry=None).collect())
        return render(merge_expositions(texts, extra))

    async def _fetch(self, path: str) -> str | None:
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
            return (await asyncio.wait_for(reader.read(), PEER_TIMEOUT_S)).decode()
        except (TimeoutError, OSError) as exc:
            _log.warning("worker metrics unavailable", extra={"fields": {"socket": path, "error": repr(exc)}})
            return None
        finally:
            writer.close()


def merge_expositions(texts: Iterable[str], extra: Iterable[Metric] = ()) -> list[Metric]:
    """Families of several expositions (and `extra` ones) combined into one of each."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(family: Metric) -> None:
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            values[family.name] = {}
        combine = _combiner(family)
        slot = values[family.name]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            slot[key] = sample.value if key not in slot else combine(slot[key], sample.value)

    for text in texts:
        for family in text_string_to_metric_families(text):
            add(family)
    for family in extra:
        add(family)
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def _combiner(family: Metric) -> Any:
    if family.type == "gauge" and family.name in OWN_GAUGES:
        return lambda first, later: first
    if family.type == "gauge" and family.name in MAX_GAUGES:
        return max
    if family.type == "gauge" and family.name in MIN_GAUGES:
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
