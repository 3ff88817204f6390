"""ResilientReranker: deadline, per-attempt timeout, retries, Retry-After, concurrency, breaker.

Faults come from real loopback servers (support_loopback.FaultServer) in front of the real Cohere
client. Timeouts are tens of milliseconds. Tests assert what happened (which attempts ran, which
error ended them, which back-off waits were asked for, recorded by a `sleep` that returns at once)
rather than clock windows; where honouring a deadline is the point, only a generous upper bound
is checked. The breaker's cooldown runs on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from rerank_proxy.config import Settings
from rerank_proxy.scoring.providers.base import RerankError, RerankResult
from rerank_proxy.scoring.providers.cohere import CohereReranker
from rerank_proxy.scoring.providers.errors import (
    RerankDeadlineExceeded,
    RerankResponseError,
    RerankStatusError,
)
from rerank_proxy.scoring.providers.resilience import RerankUnavailable, ResilientReranker
from tests.support_loopback import FaultServer, response_bytes, send_json

KEY = "co-resilience-key-0123456789"
OK = {"results": [{"index": 1, "relevance_score": 0.25}, {"index": 0, "relevance_score": 0.75}],
      "meta": {"billed_units": {"search_units": 1}}}


def settings(**overrides) -> Settings:
    base = Settings(rerank_provider="cohere", rerank_api_key=KEY, rerank_deadline_ms=1000,
                    rerank_attempt_timeout_ms=500, rerank_max_retries=2, rerank_max_concurrency=16,
                    rerank_breaker_failures=3, rerank_breaker_cooldown_s=30.0)
    return base.with_overrides(**overrides)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def resilient(url: str, clock=time.monotonic, sleep=asyncio.sleep, **overrides) -> ResilientReranker:
    config = settings(rerank_base_url=url, **overrides)
    return ResilientReranker(CohereReranker.from_settings(config), config, clock, sleep=sleep,
                             jitter=lambda: 0.0)


def script(*steps):
    """A handler that plays `steps` in order (the last one repeats). A step is
    (status, payload[, headers]), raw bytes, or an async callable (request, writer)."""
    played = [0]

    async def handle(request, writer):
        played[0] += 1
        step = steps[min(played[0], len(steps)) - 1]
        if callable(step):
            return await step(request, writer)
        if isinstance(step, bytes):
            writer.write(step)
            await writer.drain()
            return False
        await send_json(writer, *step)
    return handle


HANG_S = 5


async def hang(request, writer):
    await asyncio.sleep(HANG_S)  # the server's own timed behaviour; cancelled at teardown


class Backoffs:
    """A `sleep` for ResilientReranker that records each wait it is asked for, with how many
    requests the server had seen by then, and returns at once."""

    def __init__(self, server: FaultServer) -> None:
        self.server = server
        self.waits: list[float] = []
        self.requests_before: list[int] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.requests_before.append(len(self.server.requests))


# --- retries -----------------------------------------------------------------------------------------

async def test_an_attempt_slower_than_the_attempt_timeout_is_retried():
    handler = script(hang, (200, OK))
    async with FaultServer(handler) as server:
        backoffs = Backoffs(server)
        async with aclosing(resilient(server.url, sleep=backoffs, rerank_attempt_timeout_ms=50,
                                      rerank_deadline_ms=10_000)) as reranker:
            started = time.monotonic()
            result = await reranker.rerank("q", ["a", "b"])
            elapsed = time.monotonic() - started
    assert result.scores == [0.75, 0.25]
    assert reranker.stats.attempts == 2
    assert len(server.requests) == 2
    # the first attempt was cut by the attempt timeout (not the 10 s deadline), then one back-off,
    # taken after that first request and before the second
    assert reranker.stats.errors == {"timeout": 1}
    assert reranker.stats.timeouts == 1
    assert reranker.stats.retries == 1
    assert backoffs.waits == [0.0]
    assert backoffs.requests_before == [1]
    assert elapsed < HANG_S / 2  # generous: the hanging attempt alone would take 5 s


async def test_429_is_retried_after_the_hinted_delay():
    handler = script((429, {"message": "slow down"}, {"retry-after-ms": "150"}), (200, OK))
    async with FaultServer(handler) as server:
        backoffs = Backoffs(server)
        async with aclosing(resilient(server.url, sleep=backoffs)) as reranker:
            result = await reranker.rerank("q", ["a", "b"])
    assert result.scores == [0.75, 0.25]
    # one wait, of the hinted 150 ms (not the jittered back-off, 0 here), between the two requests
    assert backoffs.waits == [pytest.approx(0.15)]
    assert backoffs.requests_before == [1]
    assert len(server.requests) == 2
    assert reranker.stats.errors == {"http_429": 1}


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_seconds_and_dates_set_the_wait(form):
    waits: list[float] = []
    in_3s = datetime.now(UTC) + timedelta(seconds=3)
    header = "2" if form == "seconds" else format_datetime(in_3s, usegmt=True)

    async def record(seconds: float) -> None:
        waits.append(seconds)

    handler = script((503, {"message": "busy"}, {"Retry-After": header}), (200, OK))
    async with FaultServer(handler) as server:
        config = settings(rerank_base_url=server.url, rerank_deadline_ms=10_000, rerank_attempt_timeout_ms=500)
        async with aclosing(ResilientReranker(CohereReranker.from_settings(config), config,
                                              sleep=record)) as reranker:
            await reranker.rerank("q", ["a", "b"])
    assert len(waits) == 1
    assert 1.0 <= waits[0] <= 3.0


async def test_a_hint_past_the_deadline_gives_up_at_once():
    handler = script((429, {"message": "slow down"}, {"Retry-After": "5"}), (200, OK))
    async with FaultServer(handler) as server:
        backoffs = Backoffs(server)
        async with aclosing(resilient(server.url, sleep=backoffs, rerank_deadline_ms=500)) as reranker:
            with pytest.raises(RerankStatusError) as caught:
                await reranker.rerank("q", ["a", "b"])
    assert caught.value.status == 429     # the provider's own answer, not a deadline error
    assert len(server.requests) == 1
    assert backoffs.waits == []           # it never started the 5 s wait
    assert reranker.stats.retries == 0
    assert reranker.stats.errors == {"http_429": 1}


async def test_server_errors_are_retried_then_succeed():
    handler = script((500, {"message": "oops"}), (503, {"message": "overloaded"}), (200, OK))
    async with FaultServer(handler) as server, aclosing(resilient(server.url)) as reranker:
        result = await reranker.rerank("q", ["a", "b"])
    assert result.scores == [0.75, 0.25]
    assert len(server.requests) == 3
    assert reranker.stats.retries == 2
    assert reranker.stats.errors == {"http_500": 1, "http_503": 1}
    assert reranker.breaker.state == "closed"


async def test_retries_stop_at_max_retries():
    handler = script((503, {"message": "overloaded"}))
    async with FaultServer(handler) as server, aclosing(resilient(server.url, rerank_max_retries=2)) as reranker:
        with pytest.raises(RerankStatusError):
            await reranker.rerank("q", ["a", "b"])
    assert len(server.requests) == 3
    assert reranker.stats.failures == 1
    assert reranker.stats.attempts == 3


async def test_backoff_uses_full_jitter_over_a_doubling_cap():
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    handler = script((500, {"message": "oops"}))
    async with FaultServer(handler) as server:
        config = settings(rerank_base_url=server.url, rerank_max_retries=3)
        async with aclosing(ResilientReranker(CohereReranker.from_settings(config), config, sleep=record,
                                              jitter=lambda: 0.5, backoff_base_s=0.01)) as reranker:
            with pytest.raises(RerankStatusError):
                await reranker.rerank("q", ["a"])
    assert waits == pytest.approx([0.005, 0.01, 0.02])


async def test_a_body_cut_short_is_retried():
    whole = b'{"results": [{"index": 0, "relevance_score": 0.5}]}'
    handler = script(response_bytes(200, whole[:15], content_length=len(whole)),
                     (200, {"results": [{"index": 0, "relevance_score": 0.5}]}))
    async with FaultServer(handler) as server, aclosing(resilient(server.url)) as reranker:
        result = await reranker.rerank("q", ["a"])
    assert result.scores == [0.5]
    assert reranker.stats.errors == {"connection": 1}


@pytest.mark.parametrize("step", [
    response_bytes(200, b"{not json"),
    (200, {"results": [{"index": 5, "relevance_score": 0.5}]}),
    (200, {"results": [{"index": 0, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.4}]}),
    (400, {"message": "invalid request: query must not be empty or be only whitespace"}),
])
async def test_bad_replies_and_request_errors_are_not_retried(step):
    handler = script(step, (200, OK))
    async with FaultServer(handler) as server, aclosing(resilient(server.url)) as reranker:
        with pytest.raises(RerankError) as caught:
            await reranker.rerank("q", ["a", "b"])
    assert isinstance(caught.value, (RerankResponseError, RerankStatusError))
    assert len(server.requests) == 1
    assert reranker.stats.retries == 0


# --- deadline ------------------------------------------------------------------------------------------

async def test_a_slow_drip_is_cut_at_the_deadline():
    async def drip(request, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while True:             # one byte every 10 ms: never idle long enough for a read timeout
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with (
        FaultServer(script(drip)) as server,
        aclosing(resilient(server.url, rerank_deadline_ms=300, rerank_attempt_timeout_ms=200)) as reranker,
    ):
        started = time.monotonic()
        with pytest.raises(RerankDeadlineExceeded, match="deadline of 300 ms"):
            await reranker.rerank("q", ["a", "b"])
        elapsed = time.monotonic() - started
    # the first attempt was cut by the attempt timeout and retried; the retry by the deadline
    # (with max_retries=2, a deadline not honoured would end in a third attempt timing out)
    assert len(server.requests) == 2
    assert reranker.stats.timeouts == 2
    assert reranker.stats.attempts == 2
    assert reranker.stats.errors == {"timeout": 1, "deadline": 1}
    assert elapsed < 3.0  # generous: the drip would take 1000 s to finish its 100 kB


class GatedReranker:
    """An in-process provider that holds each call until `gate` opens; records concurrency."""

    name = "gated"
    model = "gated-1"
    pointwise = True

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.entered = asyncio.Event()
        self.two_inside = asyncio.Event()

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.calls += 1
        self.entered.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.in_flight == 2:
            self.two_inside.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return RerankResult(scores=[1.0] * len(documents))

    async def aclose(self) -> None:
        pass


async def test_concurrency_is_limited_to_max_concurrency():
    inner = GatedReranker()
    reranker = ResilientReranker(inner, settings(rerank_max_concurrency=2))
    tasks = [asyncio.create_task(reranker.rerank("q", ["a"])) for _ in range(5)]
    await asyncio.wait_for(inner.two_inside.wait(), 2)
    assert inner.calls == 2
    inner.gate.set()
    await asyncio.gather(*tasks)
    assert inner.calls == 5
    assert inner.max_in_flight == 2
    # three of the five found both slots taken; their wait is counted for /metrics
    assert reranker.stats.slot_waits == 3
    assert reranker.stats.slot_wait_seconds > 0


async def test_waiting_for_a_slot_counts_against_the_deadline():
    inner = GatedReranker()                   # its gate never opens: only deadlines end the calls
    reranker = ResilientReranker(inner, settings(rerank_max_concurrency=1, rerank_deadline_ms=100,
                                                 rerank_attempt_timeout_ms=100, rerank_max_retries=0))
    async with asyncio.timeout(10):           # generous: a deadline not honoured would hang here
        results = await asyncio.gather(reranker.rerank("q", ["a"]), reranker.rerank("q", ["b"]),
                                       return_exceptions=True)
    assert all(isinstance(r, RerankDeadlineExceeded) for r in results)
    # the second waited for the slot and its deadline passed there: had the wait not counted, it
    # would have taken the slot the first released and called the provider too
    assert inner.calls == 1
    assert reranker.stats.slot_waits == 1
    assert reranker.stats.attempts == 1


async def test_a_provider_bug_still_ends_as_a_rerank_error():
    class Broken(GatedReranker):
        async def rerank(self, query, documents):
            raise KeyError("oops")

    reranker = ResilientReranker(Broken(), settings())
    with pytest.raises(RerankError, match="unexpected KeyError"):
        await reranker.rerank("q", ["a"])


# --- circuit breaker ----------------------------------------------------------------------------------

async def test_breaker_opens_fails_fast_and_a_half_open_probe_closes_it():
    clock = FakeClock()
    healthy = False
    probe_arrived = asyncio.Event()
    release_probe = asyncio.Event()

    async def handle(request, writer):
        if not healthy:
            await send_json(writer, 500, {"message": "down"})
            return
        probe_arrived.set()
        await asyncio.wait_for(release_probe.wait(), 2)
        await send_json(writer, 200, OK)

    async with FaultServer(handle) as server, aclosing(resilient(server.url, clock, rerank_max_retries=0)) as reranker:
        for _ in range(3):
            with pytest.raises(RerankStatusError):
                await reranker.rerank("q", ["a", "b"])
        assert reranker.breaker.state == "open"

        with pytest.raises(RerankUnavailable, match=r"next probe in 30\.0s"):
            await reranker.rerank("q", ["a", "b"])
        assert len(server.requests) == 3  # failed fast: the provider was not asked

        clock.advance(29.9)
        assert reranker.breaker.state == "open"
        clock.advance(0.1)
        assert reranker.breaker.state == "half_open"

        healthy = True
        probe = asyncio.create_task(reranker.rerank("q", ["a", "b"]))
        await asyncio.wait_for(probe_arrived.wait(), 2)
        with pytest.raises(RerankUnavailable, match="probe is in flight"):
            await reranker.rerank("q", ["a", "b"])
        release_probe.set()
        assert (await probe).scores == [0.75, 0.25]
        assert reranker.breaker.state == "closed"
        await reranker.rerank("q", ["a", "b"])
    assert reranker.stats.errors["unavailable"] == 2
    assert reranker.stats.failures == 5
    assert reranker.stats.calls == 7


async def test_a_failed_probe_reopens_the_breaker():
    clock = FakeClock()
    async with (
        FaultServer(script((503, {"message": "down"}))) as server,
        aclosing(resilient(server.url, clock, rerank_max_retries=0, rerank_breaker_failures=1)) as reranker,
    ):
        with pytest.raises(RerankStatusError):
            await reranker.rerank("q", ["a"])
        assert reranker.breaker.state == "open"
        clock.advance(30)
        with pytest.raises(RerankStatusError):
            await reranker.rerank("q", ["a"])       # the probe
        assert reranker.breaker.state == "open"
        clock.advance(29)
        with pytest.raises(RerankUnavailable):
            await reranker.rerank("q", ["a"])
        reranker.breaker.reset()
        assert reranker.breaker.state == "closed"
    assert len(server.requests) == 2


async def test_request_errors_do_not_open_the_breaker():
    async with (
        FaultServer(script((400, {"message": "document at index 0 cannot be empty"}))) as server,
        aclosing(resilient(server.url, rerank_breaker_failures=1)) as reranker,
    ):
        for _ in range(3):
            with pytest.raises(RerankStatusError):
                await reranker.rerank("q", ["a"])
        assert reranker.breaker.state == "closed"


async def test_a_cancelled_probe_lets_the_next_call_probe():
    clock = FakeClock()
    inner = GatedReranker()
    reranker = ResilientReranker(inner, settings(rerank_breaker_failures=1), clock)
    reranker.breaker.record_failure(None)
    clock.advance(30)
    probe = asyncio.create_task(reranker.rerank("q", ["a"]))
    await asyncio.wait_for(inner.entered.wait(), 2)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    inner.gate.set()
    assert (await reranker.rerank("q", ["a"])).scores == [1.0]
    assert reranker.breaker.state == "closed"


# --- stats and secrecy ------------------------------------------------------------------------------------

async def test_stats_count_calls_documents_and_billed_units():
    handler = script((500, {"message": "oops"}), (200, OK))
    async with FaultServer(handler) as server, aclosing(resilient(server.url)) as reranker:
        await reranker.rerank("q", ["a", "b"])
        await reranker.rerank("q", ["a", "b"])
    snapshot = reranker.stats.snapshot()
    assert snapshot == {"calls": 2, "failures": 0, "attempts": 3, "retries": 1, "timeouts": 0,
                        "billed_units": 2, "tokens": 0, "documents_sent": 6, "slot_waits": 0,
                        "slot_wait_seconds": 0.0, "capacity": 0, "queries_truncated": 0,
                        "errors": {"http_500": 1}}
    assert (reranker.name, reranker.model, reranker.pointwise) == ("cohere", "rerank-v3.5", True)


async def test_the_api_key_never_reaches_the_logs(caplog):
    caplog.set_level(logging.DEBUG)
    handler = script((503, {"message": f"bad key {KEY}"}, {"retry-after": "0"}),
                     (401, {"message": f"invalid api token {KEY}"}))
    async with FaultServer(handler) as server, aclosing(resilient(server.url)) as reranker:
        with pytest.raises(RerankStatusError) as caught:
            await reranker.rerank("q", ["a"])
    assert caplog.records, "expected the retry to be logged"
    assert KEY not in caplog.text
    assert KEY not in str(caught.value)
