"""The per-host score tier: TTL, eviction, claims across real processes, wake-ups, failure = miss;
and the worker count that WORKERS=auto gives."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerank_proxy.config import ConfigError, load_settings
from rerank_proxy.cpus import cgroup_quota, usable_cpus
from rerank_proxy.scoring.cache.host_share import FILE_CHECK_S, HostShare
from rerank_proxy.scoring.cache.host_signals import HostSignals
from rerank_proxy.scoring.cache.host_tier import HostTier
from rerank_proxy.scoring.cache.scores import ScoreCache
from rerank_proxy.serve import workers_reason
from tests.support_rerankers import OverlapReranker
from tests.support_wait import async_wait_until

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(n: int) -> bytes:
    return n.to_bytes(16, "big")


def hexes(*numbers: int) -> str:
    return " ".join(key(n).hex() for n in numbers)


class OtherWorker:
    """tests/support_host_worker.py in its own process: another worker of the same host."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support_host_worker", str(directory)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._line() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        # a selector, not select(): that one refuses a descriptor numbered past 1023, and a long
        # session's process may well hold that many
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            assert selector.select(30), "the other worker did not answer"
        return self.proc.stdout.readline().decode().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def other(tmp_path: Path) -> Iterator[OtherWorker]:
    worker = OtherWorker(tmp_path)
    yield worker
    worker.stop()


# --- the tier alone ------------------------------------------------------------------------------

def test_scores_live_for_the_ttl_and_leave_with_their_generation(tmp_path):
    clock = Clock()
    tier = HostTier(tmp_path, max_entries=40, ttl_s=10, timer=clock)
    tier.set_many([(key(i), i / 10) for i in range(20)])
    assert tier.get_many([key(0), key(19), key(20)]) == [0.0, 1.9, None]
    clock.now += 9.9
    assert tier.get_many([key(0)]) == [0.0]
    clock.now += 0.2
    assert tier.get_many([key(0), key(19)]) == [None, None]  # past the TTL: a miss at once
    assert tier.claim([key(0)], 5.0).mine == [key(0)]          # and free to be computed again
    tier.set_many([(key(i), 1.0) for i in range(100, 120)])    # the next generation
    tier.set_many([(key(i), 1.0) for i in range(120, 121)])    # the one after: the first is dropped
    assert len(tier) == 21
    assert tier.get_many([key(100), key(120)]) == [1.0, 1.0]


def test_the_oldest_writes_are_evicted_a_generation_at_a_time(tmp_path):
    tier = HostTier(tmp_path, max_entries=50, ttl_s=3600)  # generations of 25
    for start in range(0, 50, 10):
        tier.set_many([(key(i), float(i)) for i in range(start, start + 10)])
        assert len(tier) <= 50
    # 0-19 filled the first table; 20-39 the second (20-29 would have taken the first past 25);
    # 40-49 the first again, emptied before (0-19 dropped)
    found = tier.get_many([key(i) for i in range(50)])
    assert [i for i, v in enumerate(found) if v is not None] == list(range(20, 50))
    tier.set_many([(key(25), 25.5)])  # a rewrite, in the current table: the newest value is read
    assert tier.get_many([key(25)]) == [25.5]
    tier.set_many([(key(i), float(i)) for i in range(50, 65)])  # the second table goes, 20-39 with it
    found = tier.get_many([key(i) for i in range(65)])
    assert [i for i, v in enumerate(found) if v is not None] == [25, *range(40, 65)]
    assert found[25] == 25.5
    assert len(tier) <= 50


def test_a_claim_is_replaced_by_its_score(tmp_path):
    tier = HostTier(tmp_path, max_entries=50, ttl_s=3600)
    claim = tier.claim([key(1), key(2)], 5.0)
    assert claim.mine == [key(1), key(2)]
    assert tier.get_many([key(1)]) == [None]
    tier.set_many([(key(1), 0.5)])
    assert tier.claimed_by(key(1)) is None
    assert tier.claimed_by(key(2)) == (os.getpid(), [])
    assert tier.get_many([key(1), key(2)]) == [0.5, None]
    assert tier.release([key(2)], claim.token) == {}
    assert tier.claimed_by(key(2)) is None


def test_clear_drops_scores_and_claims(tmp_path):
    tier = HostTier(tmp_path, max_entries=50, ttl_s=3600)
    tier.set_many([(key(1), 0.5)])
    tier.claim([key(2)], 5.0)
    assert tier.clear() == 2
    assert tier.get_many([key(1)]) == [None]
    assert tier.claimed_by(key(2)) is None


# --- claims between real processes ---------------------------------------------------------------

def test_a_key_claimed_by_a_live_worker_is_theirs_and_the_waiter_is_recorded(tmp_path, other):
    assert other.ask(f"claim 30 {hexes(1, 2, 3)}") == "mine 3 theirs 0 found 0"
    tier = HostTier(tmp_path, max_entries=100, ttl_s=3600)
    claim = tier.claim([key(1), key(2), key(3), key(4)], 30)
    assert sorted(claim.theirs) == [key(1), key(2), key(3)]
    assert claim.mine == [key(4)]
    assert other.ask(f"waiters {key(1).hex()}") == str(os.getpid())
    assert tier.claimed_by(key(4)) == (os.getpid(), [])
    # the claimer stores: its scores are there, the claims are gone
    assert other.ask(f"store {key(1).hex()}=0.25 {key(2).hex()}=0.5 {key(3).hex()}=0.75") == "stored"
    again = tier.claim([key(1), key(2), key(3)], 30)
    assert again.found == {key(1): 0.25, key(2): 0.5, key(3): 0.75}
    assert not again.mine
    assert not again.theirs


def test_a_released_or_expired_or_orphaned_claim_is_taken_over(tmp_path, other):
    tier = HostTier(tmp_path, max_entries=100, ttl_s=3600)
    other.ask(f"claim 30 {hexes(1)}")
    assert tier.claim([key(1)], 30).theirs == [key(1)]
    assert other.ask("release") == "released"
    assert tier.claim([key(1)], 30).mine == [key(1)]
    other.ask(f"claim 0 {hexes(2)}")  # a lease that is already over
    assert tier.claim([key(2)], 30).mine == [key(2)]
    assert other.ask(f"claim 30 {hexes(3)}") == "mine 1 theirs 0 found 0"
    other.stop()  # the claimer dies mid-call
    taken = tier.claim([key(3)], 30)
    assert taken.mine == [key(3)]
    assert tier.claimed_by(key(3)) == (os.getpid(), [])


async def test_a_waiting_worker_is_woken_by_the_store_and_never_calls_the_provider(tmp_path, other):
    other.ask(f"claim 30 {hexes(1, 2)}")
    share = host_share(tmp_path, recheck_s=60.0)  # only the wake-up can end the wait in time
    computed: list[list[int]] = []

    async def compute(positions: list[int]) -> list[float]:
        computed.append(positions)
        return [0.0] * len(positions)

    try:
        task = asyncio.create_task(share.resolve([key(1), key(2)], compute))
        await async_wait_until(lambda: other.ask(f"waiters {key(2).hex()}") == str(os.getpid()),
                               "this worker to wait on the other's claim")
        other.ask(f"store {key(1).hex()}=0.125 {key(2).hex()}=0.375")
        resolved = await asyncio.wait_for(task, 10)
    finally:
        share.close()
    assert resolved.scores == [0.125, 0.375]
    assert resolved.waited == 2
    assert computed == []


async def test_a_released_claim_wakes_the_waiter_which_then_computes(tmp_path, other):
    other.ask(f"claim 30 {hexes(1, 2)}")
    share = host_share(tmp_path, recheck_s=60.0)

    async def compute(positions: list[int]) -> list[float]:
        return [0.5 for _ in positions]

    try:
        task = asyncio.create_task(share.resolve([key(1), key(2), key(3)], compute))
        await async_wait_until(lambda: other.ask(f"waiters {key(1).hex()}") == str(os.getpid()),
                               "this worker to wait on the other's claim")
        other.ask("release")  # the other worker's provider call failed
        resolved = await asyncio.wait_for(task, 10)
    finally:
        share.close()
    assert resolved.scores == [0.5, 0.5, 0.5]
    assert resolved.waited == 0


async def test_waiting_is_bounded_by_the_lease(tmp_path, other):
    other.ask(f"claim 30 {hexes(1)}")  # alive, holds its claim, never stores
    share = host_share(tmp_path, lease_s=0.3, recheck_s=60.0)

    async def compute(positions: list[int]) -> list[float]:
        return [0.75 for _ in positions]

    try:
        resolved = await asyncio.wait_for(share.resolve([key(1)], compute), 10)
    finally:
        share.close()
    assert resolved.scores == [0.75]
    assert share.stats.gave_up == 1


def host_share(directory: Path, lease_s: float = 30.0, recheck_s: float = 0.25) -> HostShare:
    tier = HostTier(directory, max_entries=1000, ttl_s=3600)
    signals = HostSignals(directory)
    signals.start()
    return HostShare(tier, signals, lease_s=lease_s, recheck_s=recheck_s)


# --- files deleted under the workers -------------------------------------------------------------


async def test_files_deleted_under_the_workers_are_detected_and_the_tier_rejoined(tmp_path, caplog):
    """A /tmp cleaner deletes the tier's files; a replacement worker creates new ones. This worker,
    which kept the unlinked file open, notices on its next use after FILE_CHECK_S, says so, and from
    then on shares the replacement's tier both ways (and its wake-up socket is bound again)."""
    clock = Clock()
    tier = HostTier(tmp_path, max_entries=1000, ttl_s=3600)
    signals = HostSignals(tmp_path)
    signals.start()
    share = HostShare(tier, signals, lease_s=30.0, timer=clock)
    replacement = None
    try:
        share.store([(key(9), 0.9)])
        for leftover in tmp_path.iterdir():      # the cleaner
            leftover.unlink()
        replacement = OtherWorker(tmp_path)      # a worker restarted meanwhile opens new files
        assert replacement.ask(f"store {key(1).hex()}=0.5") == "stored"
        assert share.get_many([key(1)]) == [None]          # split, until the next check
        clock.now += FILE_CHECK_S
        with caplog.at_level("WARNING"):
            assert share.get_many([key(1)]) == [0.5]
        assert share.stats.rejoined == 1
        assert "deleted or replaced" in caplog.text
        share.store([(key(2), 0.25)])
        assert replacement.ask(f"claim 30 {key(2).hex()}") == "mine 0 theirs 0 found 1"
        assert os.path.exists(signals.path)
        clock.now += FILE_CHECK_S
        assert not share.rejoin_if_replaced()              # nothing changed since: no second reopen
    finally:
        if replacement is not None:
            replacement.stop()
        share.close()


# --- a broken tier is a miss ---------------------------------------------------------------------

async def test_a_failing_host_tier_is_a_miss_never_an_error(tmp_path):
    share = host_share(tmp_path)
    share.tier.close()  # every LMDB call now raises
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=100, ttl_s=3600, host=share)
    try:
        first = await cache.scores("jet noise", ["jet engine noise", "wing flutter"])
        assert first.sent == 2
        assert reranker.documents == 2
        second = await cache.scores("jet noise", ["jet engine noise", "wing flutter"])
        assert second.scores == first.scores
        assert second.status == "hit"
    finally:
        share.signals.close()
    assert share.stats.errors >= 2  # the claim (which is also the lookup, without Redis) and the store
    assert share.get_many([key(1)]) == [None]
    assert share.entries() is None


async def test_scores_from_another_worker_are_reused_by_the_cache(tmp_path, other):
    share = host_share(tmp_path)
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=100, ttl_s=3600, host=share)
    try:
        texts = ["jet engine noise", "wing flutter"]
        keys = cache.doc_keys("jet noise", texts)
        other.ask("store " + " ".join(f"{k.hex()}=0.{i + 1}" for i, k in enumerate(keys)))
        outcome = await cache.scores("jet noise", texts)
    finally:
        share.close()
    assert outcome.scores == [0.1, 0.2]
    assert outcome.status == "hit"
    assert reranker.calls == 0
    assert cache.stats.host_hits == 2


async def test_the_host_tier_is_read_before_redis_and_keeps_what_redis_found(tmp_path, redis_server):
    from rerank_proxy.scoring.cache.redis_tier import RedisTier

    texts = ["jet engine noise", "wing flutter"]
    elsewhere = RedisTier(redis_server.url, 0.5)  # a replica on another host paid for these
    other_host = ScoreCache(OverlapReranker(), max_entries=100, ttl_s=3600, shared=elsewhere, shared_timeout_s=0.5)
    expected = (await other_host.scores("jet noise", texts)).scores
    share = host_share(tmp_path)
    shared = RedisTier(redis_server.url, 0.5)
    reranker = OverlapReranker()
    cache = ScoreCache(reranker, max_entries=100, ttl_s=3600, shared=shared, shared_timeout_s=0.5, host=share)
    try:
        first = await cache.scores("jet noise", texts)
        assert first.scores == expected
        assert cache.stats.shared_hits == 2
        assert reranker.calls == 0
        assert share.get_many(cache.doc_keys("jet noise", texts)) == expected  # for this host's other workers
        await shared.flush()
        cache.flush()  # this worker's in-process tier only
        second = await cache.scores("jet noise", texts)
        assert second.scores == expected
        assert cache.stats.host_hits == 2
        assert cache.stats.shared_hits == 2
    finally:
        share.close()
        await shared.aclose()
        await elsewhere.aclose()


async def test_a_flush_broadcast_empties_the_other_workers_in_process_tier(tmp_path):
    flushed: list[bool] = []
    listener = HostSignals(tmp_path, on_flush=lambda: flushed.append(True))
    listener.start()
    sender = HostSignals(tmp_path, pid=os.getpid() + 1)  # the worker that received the admin flush
    try:
        sender.broadcast_flush()
        await async_wait_until(lambda: flushed, "the flush to arrive")
    finally:
        sender.close()
        listener.close()


# --- WORKERS=auto --------------------------------------------------------------------------------

def test_auto_workers_follow_the_cgroup_quota(tmp_path):
    root = tmp_path / "cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    proc_cgroup = tmp_path / "self-cgroup"
    proc_cgroup.write_text("0::/kubepods/pod1\n")
    cpus = len(os.sched_getaffinity(0))
    assert cgroup_quota(root, proc_cgroup) is None
    assert usable_cpus(root, proc_cgroup)[0] == cpus
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_quota(root, proc_cgroup) == 0.5
    count, why = usable_cpus(root, proc_cgroup)
    assert count == 1
    assert "cgroup CPU quota 0.5" in why
    (root / "kubepods" / "cpu.max").write_text("25000 100000\n")  # a parent's quota is tighter
    assert cgroup_quota(root, proc_cgroup) == 0.25


def test_workers_setting_accepts_auto_or_an_integer():
    assert load_settings({}).workers == min(usable_cpus()[0], 256)
    assert load_settings({"WORKERS": "AUTO"}).workers == load_settings({}).workers
    assert load_settings({"WORKERS": "3"}).workers == 3
    for raw, problem in (("many", "not an integer or auto"), ("0", "out of range"), ("257", "out of range")):
        with pytest.raises(ConfigError) as err:
            load_settings({"WORKERS": raw})
        assert str(err.value) == (f"WORKERS={raw!r}: {problem}; accepted: auto, or an integer from 1 to 256")


def test_the_start_up_log_says_why_this_many_workers():
    assert workers_reason({}) == f"WORKERS=auto: {usable_cpus()[1]}"
    assert workers_reason({"WORKERS": "3"}) == "WORKERS=3"


async def test_a_host_tier_that_cannot_open_leaves_the_worker_on_its_own_tier(tmp_path, caplog):
    from rerank_proxy.runtime import build_host_share

    settings = load_settings({"RERANK_PROVIDER": "tei", "RERANK_BASE_URL": "http://127.0.0.1:1"})
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert build_host_share(settings, str(not_a_directory)) is None
    assert "per-host score tier unavailable" in caplog.text
    share = build_host_share(settings, str(tmp_path))
    assert share is not None
    assert share.lease_s == settings.rerank_deadline_ms / 1000 + 1.0
    share.close()
