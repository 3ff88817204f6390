"""The provider wait of a search: the union of its HTTP exchanges, recorded per task context."""

from __future__ import annotations

import asyncio

from rerank_proxy.scoring.providers.waits import ProviderWaits, exchange, provider_waits


def test_overlapping_exchanges_count_once():
    waits = ProviderWaits()
    waits.intervals += [(1.0, 1.5), (1.2, 1.4), (1.4, 2.0), (3.0, 3.25)]
    assert waits.ms == 1250.0


def test_no_exchange_is_no_wait():
    assert ProviderWaits().ms == 0.0


async def test_exchanges_of_batch_tasks_belong_to_the_search_that_started_them():
    async def call(seconds: float) -> None:
        with exchange():
            await asyncio.sleep(seconds)

    with provider_waits() as mine:
        await asyncio.gather(call(0.02), call(0.02))
    with exchange():  # outside any search: recorded nowhere
        pass
    assert len(mine.intervals) == 2
    assert 20 <= mine.ms < sum(1000 * (end - start) for start, end in mine.intervals) + 1e-9
