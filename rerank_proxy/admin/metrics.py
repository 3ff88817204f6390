"""Prometheus metrics of one proxy process (scraped at /_rerank/metrics).

Request counts and latencies are split by outcome: reranked, cached, fallback, bypass,
passthrough, error. Provider and cache counters are read from their owners at scrape time
(collectors.py), so the request path only touches a counter and a histogram per request.
Every family is exported once, under one name: a duplicate `# TYPE` line makes Prometheus reject
the whole scrape. With several workers the scrape endpoint merges every worker's exposition
(peers.py), so this module stays single-process and the request path pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# `*_created` series double the series count and Prometheus ignores them in the text format.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("reranked", "cached", "lexical", "fallback", "bypass", "passthrough", "error")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("rerank_proxy_requests", "Requests by outcome and status class.",
                                ["outcome", "status"], registry=self.registry)
        self.latency = Histogram("rerank_proxy_request_duration_seconds", "Request latency by outcome.",
                                 ["outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.engine_latency = Histogram("rerank_proxy_engine_duration_seconds",
                                        "Engine time of intercepted searches.",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rerank_latency = Histogram("rerank_proxy_rerank_duration_seconds",
                                        "Rerank time (cache + provider) per search.",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("rerank_proxy_in_flight_requests", "Requests being handled.",
                               registry=self.registry)
        self.fallbacks = Counter("rerank_proxy_fallbacks", "Searches answered in lexical order, by reason.",
                                 ["reason"], registry=self.registry)
        self.engine_up = Gauge("rerank_proxy_engine_up",
                               "1 when the engine answered the last health probe (ready or scrape), else 0.",
                               registry=self.registry)
        # 1 per process: summed over the workers by a merged scrape, it counts the workers it saw.
        Gauge("rerank_proxy_workers", "Worker processes whose metrics this scrape includes.",
              registry=self.registry).set(1)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds, start time
        self._sources: list[Callable[[], Iterable[Any]]] = []
        self.registry.register(_Collector(self._sources))
        # labels() takes a lock and a dict lookup per call: resolved children are kept here instead.
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}
        # Series that exist from the start at 0, so rate() sees the first request as an increase.
        for outcome in OUTCOMES:
            self._counted[(outcome, 2)] = self.requests.labels(outcome, "2xx")
            self._timed[outcome] = self.latency.labels(outcome)
        # Set by `serve` when WORKERS > 1: the other workers' expositions are merged in at scrape.
        self.peers: Any = None

    def track_in_flight(self, count: Callable[[], int]) -> None:
        """The in-flight gauge reads its owner's counter at scrape time: nothing per request."""
        self.in_flight.set_function(count)

    def add_source(self, source: Callable[[], Iterable[Any]]) -> None:
        """A callable yielding metric families at scrape time (cache stats, provider stats...)."""
        self._sources.append(source)

    def observe(self, outcome: str, status: int, seconds: float, engine_ms: float = 0.0,
                rerank_ms: float = 0.0, reason: str = "") -> None:
        key = (outcome, status // 100)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.requests.labels(outcome, f"{status // 100}xx")
        counter.inc()
        histogram = self._timed.get(outcome)
        if histogram is None:
            histogram = self._timed[outcome] = self.latency.labels(outcome)
        histogram.observe(seconds)
        if engine_ms:
            self.engine_latency.observe(engine_ms / 1000)
        if rerank_ms:
            self.rerank_latency.observe(rerank_ms / 1000)
        if outcome == "fallback":
            self.fallbacks.labels(reason or "unknown").inc()

    def render(self) -> bytes:
        """This process's exposition only."""
        return generate_latest(self.registry)

    async def render_all(self) -> bytes:
        """What a scrape answers: this process, merged with the other workers when there are any."""
        if self.peers is None:
            return self.render()
        return await self.peers.merged()


class _Collector:
    def __init__(self, sources: list[Callable[[], Iterable[Any]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Any]:
        for source in self.sources:
            yield from source()

    def describe(self) -> Iterable[Any]:
        return []


def counter(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def gauge(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family
