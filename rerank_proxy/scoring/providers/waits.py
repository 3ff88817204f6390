"""The time a search spent waiting on the provider's HTTP answers, as the proxy saw it.

The proxy's own time on a search is what remains of its total once the engine and the provider are
taken out. The engine's part is timed around the candidate fetch; this module times the provider's:
each HTTP exchange of the search (from handing the request to the connection to holding the whole
answer) is recorded in a context variable that the search's task (and the batch tasks it starts)
share, and the search reads the union of those intervals. Waiting on another search's call for the
same scores, and back-off between attempts, are not exchanges, so they stay in the proxy's time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_intervals: ContextVar[list[tuple[float, float]] | None] = ContextVar("provider_waits", default=None)


class ProviderWaits:
    """The exchanges recorded while it was open (see `provider_waits`)."""

    __slots__ = ("intervals",)

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []

    @property
    def ms(self) -> float:
        """Milliseconds during which at least one exchange was in flight (batches may overlap)."""
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.intervals):
            if end <= reach:
                continue
            total += end - max(start, reach)
            reach = end
        return total * 1000


@contextmanager
def provider_waits() -> Iterator[ProviderWaits]:
    """Record the provider exchanges made inside the block (in this task and the tasks it starts)."""
    waits = ProviderWaits()
    token = _intervals.set(waits.intervals)
    try:
        yield waits
    finally:
        _intervals.reset(token)


@contextmanager
def exchange() -> Iterator[None]:
    """Around one HTTP exchange with the provider."""
    intervals = _intervals.get()
    if intervals is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        intervals.append((started, time.perf_counter()))
