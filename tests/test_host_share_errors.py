"""A failing per-host tier is a miss: every failure is counted, and the first of each kind (exception
type) is logged with its traceback, so a bug is never a silent miss and an outage not a log line per
search."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import lmdb
import pytest

from rerank_proxy.scoring.cache.host_share import HostShare
from rerank_proxy.scoring.cache.host_signals import HostSignals
from rerank_proxy.scoring.cache.host_tier import HostTier

LOGGER = "rerank_proxy.scoring.cache.host_share"
KEY = (1).to_bytes(16, "big")


@pytest.fixture
async def share(tmp_path: Path) -> AsyncIterator[HostShare]:  # the wake-up socket needs a running loop
    signals = HostSignals(tmp_path)
    signals.start()
    share = HostShare(HostTier(tmp_path, max_entries=100, ttl_s=3600), signals, lease_s=30.0)
    yield share
    share.close()


def raising(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail


def tier_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


async def test_the_first_failure_is_logged_with_its_traceback_and_repeats_are_only_counted(share, caplog, monkeypatch):
    monkeypatch.setattr(share.tier, "get_many", raising(TypeError("a bug, not an outage")))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert share.get_many([KEY]) == [None]  # still a miss
        assert share.stats.errors == 1
        assert len(tier_logs(caplog)) == 1
        for _ in range(3):
            assert share.get_many([KEY]) == [None]
    assert share.stats.errors == 4
    [record] = tier_logs(caplog)
    assert record.exc_info is not None
    assert record.exc_info[0] is TypeError
    assert "get_many" in record.getMessage()
    assert "TypeError" in record.getMessage()
    assert "Traceback" in caplog.text
    assert "a bug, not an outage" in caplog.text


async def test_each_kind_of_failure_is_logged_once_whatever_the_operation(share, caplog, monkeypatch):
    monkeypatch.setattr(share.tier, "get_many", raising(TypeError("bug")))
    monkeypatch.setattr(share.tier, "set_many", raising(lmdb.MapFullError("full")))
    monkeypatch.setattr(share.tier, "claim", raising(TypeError("another bug of the same kind")))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            assert share.get_many([KEY]) == [None]
            share.store([(KEY, 0.5)])
            assert share._claim([KEY]) is None
    assert share.stats.errors == 6
    records = tier_logs(caplog)
    assert [record.exc_info[0] for record in records if record.exc_info] == [TypeError, lmdb.MapFullError]
    assert ["get_many" in records[0].getMessage(), "store" in records[1].getMessage()] == [True, True]


async def test_an_unexpected_shared_tier_failure_is_a_miss_logged_once_with_its_traceback(caplog):
    """A bug in the Redis tier (a TypeError) must neither fail searches nor pass silently."""
    from rerank_proxy.scoring.cache.scores import ScoreCache
    from tests.support_rerankers import OverlapReranker

    class BrokenShared:
        async def get_many(self, keys):
            raise TypeError("a bug")

        async def set_many(self, items, ttl_s):
            raise TypeError("a bug")

        async def flush(self):
            return 0

        async def ping(self):  # the SharedTier protocol's; only start-up and readiness ask it
            return False

        async def aclose(self):
            return None

    cache = ScoreCache(OverlapReranker(), max_entries=100, ttl_s=60, shared=BrokenShared())
    caplog.set_level(logging.WARNING, logger="rerank_proxy.scoring.cache.scores")
    for query in ("wing flutter", "jet noise", "heat transfer"):   # new keys each time: no local hit
        outcome = await cache.scores(query, ["wing flutter at speed", "boundary layer"])
        assert len(outcome.scores) == 2
    assert cache.stats.shared_errors >= 3
    logged = [r for r in caplog.records if "shared score tier" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
