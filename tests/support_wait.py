"""Waiting on a public, observable condition, with a deadline: never a bare sleep, never forever.

`wait_until` (threads) and `async_wait_until` (the test's event loop) poll a predicate over
something a user of the proxy could see as well (an HTTP answer, a metric, a public property)
and fail with a clear AssertionError naming what did not happen (`what`: a text, or a function
giving one at that moment, to say what was seen last). `metric_samples` reads the proxy's
Prometheus page into {(name, labels): value}.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0  # generous: a loaded 2-core CI machine; success returns as soon as it holds

What = str | Callable[[], str]


def _timed_out(what: What, timeout_s: float, value: object) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout_s} s waiting for {said} (last value: {value!r})")


def wait_until(predicate: Callable[[], T], what: What, timeout_s: float = DEFAULT_TIMEOUT_S,
               interval_s: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, value)
        time.sleep(interval_s)


@overload
async def async_wait_until(predicate: Callable[[], Awaitable[T]], what: What,
                           timeout_s: float = ..., interval_s: float = ...) -> T: ...


@overload
async def async_wait_until(predicate: Callable[[], T], what: What,
                           timeout_s: float = ..., interval_s: float = ...) -> T: ...


async def async_wait_until(predicate: Callable[[], Any], what: What,
                           timeout_s: float = DEFAULT_TIMEOUT_S, interval_s: float = 0.02) -> Any:
    """`wait_until` for coroutines: yields to the event loop between polls; `predicate` may be a
    coroutine function (a search, a read through the proxy's own API)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, value)
        await asyncio.sleep(interval_s)


def metric_samples(proxy_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of `GET /_rerank/metrics`, keyed by (sample name, sorted label pairs)."""
    response = httpx.get(f"{proxy_url}/_rerank/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def requests_by_outcome(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    """`rerank_proxy_requests_total` summed over status classes, by outcome."""
    counts: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == "rerank_proxy_requests_total":
            outcome = dict(labels)["outcome"]
            counts[outcome] = counts.get(outcome, 0.0) + value
    return counts
