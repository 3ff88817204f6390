"""Several workers' embedder status as one report (`/_rerank/ready`)."""

from __future__ import annotations

from rerank_proxy.admin.peers import merge_vectors

WORKER_A = {"model": "all-MiniLM-L6-v2", "store": "/v/vectors.sqlite", "queue_depth": 1684,
            "queue_by_priority": {"search": 1600, "write": 84, "startup": 0}, "in_flight": 32,
            "queue_max": 50_000, "write_queue_max": 10_000, "threads": 1, "search_owners": 3,
            "embedded": 900, "already_stored": 10, "dropped": 0, "failed": 1, "queued": 2600,
            "docs_per_second_busy": 21.5, "store_entries": 4000}
WORKER_B = {**WORKER_A, "queue_depth": 9156, "queue_by_priority": {"search": 9000, "write": 156, "startup": 0},
            "in_flight": 0, "search_owners": 5, "embedded": 100, "failed": 0, "queued": 9256,
            "docs_per_second_busy": None, "store_entries": 4012}


def test_queues_and_counts_add_up_over_the_workers():
    merged = merge_vectors([WORKER_A, WORKER_B])
    assert merged["workers"] == 2
    assert merged["queue_depth"] == 1684 + 9156
    assert merged["queue_by_priority"] == {"search": 10_600, "write": 240, "startup": 0}
    assert merged["in_flight"] == 32
    assert merged["embedded"] == 1000
    assert merged["failed"] == 1
    assert merged["search_owners"] == 8
    assert merged["docs_per_second_busy"] == 21.5   # the idle worker has no figure yet


def test_the_shared_store_and_the_limits_are_counted_once():
    merged = merge_vectors([WORKER_A, WORKER_B])
    assert merged["store_entries"] == 4012          # one file; the later read
    assert merged["queue_max"] == 50_000
    assert merged["write_queue_max"] == 10_000
    assert merged["model"] == "all-MiniLM-L6-v2"
    assert merged["store"] == "/v/vectors.sqlite"


def test_one_worker_is_its_own_report():
    assert merge_vectors([WORKER_A]) == {"workers": 1, **WORKER_A}


def test_a_broken_store_reads_as_unknown_not_as_zero():
    merged = merge_vectors([{**WORKER_A, "store_entries": None}, {**WORKER_B, "store_entries": None}])
    assert merged["store_entries"] is None
