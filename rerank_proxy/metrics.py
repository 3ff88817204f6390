"""Prometheus metrics of one proxy process (scraped at /_rerank/metrics).

Request counts and latencies are split by outcome: reranked, cached, fallback, bypass,
passthrough, error. Provider and cache counters are read from their owners at scrape time
(collectors.py). The two families every request touches are plain tallies (`RequestTally`) turned
into metric families at scrape time: prometheus_client's children take a lock and several calls
per update, a measurable share of a relayed request's CPU, and one event loop needs no lock.
Every family is exported once, under one name: a duplicate `# TYPE` line makes Prometheus reject
the whole scrape. With several workers the scrape endpoint merges every worker's exposition
(peers.py), so this module stays single-process and the request path pays nothing for it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from rerank_proxy.admin.peers import PeerMetrics

# `*_created` series double the series count and Prometheus ignores them in the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("reranked", "cached", "lexical", "fallback", "bypass", "passthrough", "error")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = RequestTally()
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
        self.partial_reranks = Counter(
            "rerank_proxy_partial_reranks",
            "Searches reranked among their warm hits only, the cold ones kept in the engine's places, by reason.",
            ["reason"], registry=self.registry)
        self.arm_searches = Counter("rerank_proxy_experiment_searches",
                                    "Searches served in an experiment, by arm (an _msearch's arms comma-joined).",
                                    ["arm"], registry=self.registry)
        self.arm_latency = Histogram("rerank_proxy_experiment_search_duration_seconds",
                                     "Whole-search latency by experiment arm.", ["arm"],
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.arm_rerank_seconds = Counter("rerank_proxy_experiment_rerank_seconds",
                                          "Time spent scoring (cache and provider) by experiment arm.", ["arm"],
                                          registry=self.registry)
        self.arm_provider_seconds = Counter("rerank_proxy_experiment_provider_seconds",
                                            "Time spent waiting on the provider by experiment arm (its cost).",
                                            ["arm"], registry=self.registry)
        self.engine_up = Gauge("rerank_proxy_engine_up",
                               "1 when the engine answered the last health probe (ready or scrape), else 0.",
                               registry=self.registry)
        # 1 per process: summed over the workers by a merged scrape, it counts the workers it saw.
        Gauge("rerank_proxy_workers", "Worker processes whose metrics this scrape includes.",
              registry=self.registry).set(1)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds, start time
        self._sources: list[Callable[[], Iterable[Any]]] = [self.tally.families]
        self.registry.register(_Collector(self._sources))
        # Set by `serve` when WORKERS > 1: the other workers' expositions are merged in at scrape.
        self.peers: PeerMetrics | None = None

    def track_in_flight(self, count: Callable[[], int]) -> None:
        """The in-flight gauge reads its owner's counter at scrape time: nothing per request."""
        self.in_flight.set_function(count)

    def add_source(self, source: Callable[[], Iterable[Any]]) -> None:
        """A callable yielding metric families at scrape time (cache stats, provider stats...)."""
        self._sources.append(source)

    def observe(self, outcome: str, status: int, seconds: float, engine_ms: float = 0.0,
                rerank_ms: float = 0.0, reason: str = "") -> None:
        self.tally.add(outcome, status, seconds)
        if engine_ms:
            self.engine_latency.observe(engine_ms / 1000)
        if rerank_ms:
            self.rerank_latency.observe(rerank_ms / 1000)
        if outcome == "fallback":
            self.fallbacks.labels(reason or "unknown").inc()
        elif reason and outcome == "reranked":  # a reranked search has a reason only when it was partial
            self.partial_reranks.labels(reason).inc()

    def observe_arm(self, arm: str, seconds: float, rerank_ms: float, provider_ms: float) -> None:
        """A search served in an experiment arm: counted, timed, and its scoring cost."""
        self.arm_searches.labels(arm).inc()
        self.arm_latency.labels(arm).observe(seconds)
        self.arm_rerank_seconds.labels(arm).inc(rerank_ms / 1000)
        self.arm_provider_seconds.labels(arm).inc(provider_ms / 1000)

    def render(self) -> bytes:
        """This process's exposition only."""
        return generate_latest(self.registry)

    async def render_all(self) -> bytes:
        """What a scrape answers: this process, merged with the other workers when there are any."""
        if self.peers is None:
            return self.render()
        return await self.peers.merged()


class RequestTally:
    """Requests by outcome and status class, and their latency histogram by outcome."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}   # per outcome: count per bucket, the last one +Inf
        self.sums: dict[str, float] = {}
        # Series that exist from the start at 0, so rate() sees the first request as an increase.
        for outcome in OUTCOMES:
            self.counts[(outcome, 2)] = 0
            self.buckets[outcome] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[outcome] = 0.0

    def add(self, outcome: str, status: int, seconds: float) -> None:
        key = (outcome, status // 100)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.buckets.get(outcome)
        if buckets is None:
            buckets = self.buckets[outcome] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[outcome] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1   # `le` is inclusive, as bisect_left
        self.sums[outcome] += seconds

    def families(self) -> Iterable[Any]:
        requests = CounterMetricFamily("rerank_proxy_requests", "Requests by outcome and status class.",
                                       labels=["outcome", "status"])
        for (outcome, status_class), count in sorted(self.counts.items()):
            requests.add_metric([outcome, f"{status_class}xx"], count)
        yield requests
        latency = HistogramMetricFamily("rerank_proxy_request_duration_seconds", "Request latency by outcome.",
                                        labels=["outcome"])
        for outcome, counts in sorted(self.buckets.items()):
            cumulative, rows = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts):
                cumulative += count
                rows.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]  # unannotated upstream
            latency.add_metric([outcome], rows, self.sums[outcome])
        yield latency


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
