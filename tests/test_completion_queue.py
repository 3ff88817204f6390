"""The embedder's queue serves the owner closest to complete: windows finish one after another."""

from __future__ import annotations

from rerank_proxy.local.completion_queue import STARVING_S, CompletionQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _take_all(queue: CompletionQueue, n: int) -> list[bytes]:
    taken: list[bytes] = []
    while chunk := queue.take(n):
        taken.extend(key for key, _ in chunk)
    return taken


def _completed_per_tenth(queued_for: float) -> list[int]:
    """Ten searches of 20 cold documents each, queued `queued_for` seconds ago, taken 4 at a time:
    how many searches have all their documents after each tenth of the work."""
    clock = Clock()
    queue = CompletionQueue(clock)
    for search in range(10):
        for doc in range(20):
            queue.put(f"s{search}d{doc}".encode(), "t", owner=search)
    clock.now = queued_for
    done_keys: set[bytes] = set()
    completed_after = []
    for _ in range(10):
        for _ in range(5):
            done_keys.update(key for key, _ in queue.take(4))
        completed_after.append(sum(all(f"s{s}d{d}".encode() in done_keys for d in range(20)) for s in range(10)))
    return completed_after


def test_the_owner_with_fewest_missing_goes_first_whatever_the_order_of_arrival():
    queue = CompletionQueue(Clock())
    for n in range(6):
        queue.put(f"big{n}".encode(), "t", owner="flood")
    queue.put(b"small0", "t", owner="other")
    queue.put(b"small1", "t", owner="other")
    assert queue.owners() == 2
    assert queue.ahead_of("other") == 2
    assert queue.ahead_of("flood") == 8
    assert queue.ahead_of("nobody") == 0
    assert _take_all(queue, 4) == [b"small0", b"small1", b"big0", b"big1", b"big2", b"big3", b"big4", b"big5"]
    assert not queue.owners()


def test_shared_documents_count_for_every_owner_waiting_for_them():
    """Window B shares most of its documents with A (queued under A); B needs one more: B completes
    after one chunk, A's documents being taken in B's order."""
    queue = CompletionQueue(Clock())
    for key in (b"a1", b"a2", b"a3", b"shared1", b"shared2"):
        queue.put(key, "t", owner="A")
    queue.join(b"shared1", "B")
    queue.join(b"shared2", "B")
    queue.put(b"b1", "t", owner="B")
    first = [key for key, _ in queue.take(3)]
    assert first == [b"shared1", b"shared2", b"b1"]
    assert queue.owners() == 1
    assert [key for key, _ in queue.take(10)] == [b"a1", b"a2", b"a3"]


def test_windows_complete_one_after_another_instead_of_all_advancing_together():
    """Ten searches of 20 cold documents each, taken 4 at a time: after each quarter of the work,
    a quarter of the searches have all their documents (round robin would have finished none)."""
    assert _completed_per_tenth(queued_for=0.0) == list(range(1, 11))


def test_a_large_owner_unserved_for_long_goes_first_so_it_is_never_starved():
    clock = Clock()
    queue = CompletionQueue(clock)
    for n in range(100):
        queue.put(f"big{n}".encode(), "t", owner="msearch")
    queue.put(b"s0", "t", owner="search-0")
    assert [key for key, _ in queue.take(8)] == [b"s0"]
    clock.now = STARVING_S + 1
    queue.put(b"s1", "t", owner="search-1")   # a newcomer with one document...
    first = [key for key, _ in queue.take(8)]
    assert first == [f"big{n}".encode() for n in range(8)]   # ...waits one chunk: the msearch starved long enough
    assert [key for key, _ in queue.take(8)] == [b"s1"]


def test_windows_still_complete_one_after_another_when_every_owner_is_overdue():
    """On a busy host every window waits past STARVING_S. Serving the longest-unserved owner next
    would go round robin and complete none until the end; the overdue turn sticks to the oldest."""
    completed_after = _completed_per_tenth(queued_for=STARVING_S * 3)
    assert all(done >= tenth for tenth, done in enumerate(completed_after)), completed_after
    assert completed_after[-1] == 10


def test_an_overdue_owner_gets_every_other_chunk_while_newcomers_keep_arriving():
    clock = Clock()
    queue = CompletionQueue(clock)
    for n in range(16):
        queue.put(f"big{n}".encode(), "t", owner="msearch")
    clock.now = STARVING_S + 1
    served = []
    for k in range(4):
        queue.put(f"new{k}".encode(), "t", owner=f"search-{k}")
        served.append([key for key, _ in queue.take(8)])
    # the overdue msearch, the nearest (ties: the oldest), the msearch again (it completes), the nearest
    assert served == [[f"big{n}".encode() for n in range(8)], [b"new0"],
                      [f"big{n}".encode() for n in range(8, 16)], [b"new1"]]


def test_pop_moves_an_item_away_from_every_waiter_and_pop_newest_drops_the_last_queued():
    queue = CompletionQueue(Clock())
    queue.put(b"x", "tx", owner="A")
    queue.join(b"x", "B")
    queue.put(b"y", "ty", owner="B")
    assert queue.pop(b"x") == "tx"
    assert queue.ahead_of("A") == 0
    assert queue.ahead_of("B") == 1
    assert queue.pop_newest() == (b"y", "ty")
    assert not len(queue)
    assert not queue.owners()


def test_joining_an_item_not_queued_here_is_ignored():
    queue = CompletionQueue(Clock())
    queue.join(b"elsewhere", "A")
    assert not queue.owners()
    assert not queue.take(4)
