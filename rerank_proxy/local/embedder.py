"""Background embedding of documents that have no stored vector yet.

A cold document costs the model 40-65 ms of CPU. Doing that inside a search made every cold search
wait out its deadline; here it is queued instead, and the search answers in lexical order at once
(or after a short wait when its few missing documents will be ready in time). The work outlives the
search, so the next search on the same documents is reranked.

* One bounded, deduplicated queue with three priorities: documents seen by searches first, then
  documents written through the proxy, then start-up warming. A key already queued or being embedded
  is not queued twice (a search promotes it). When the queue is full, a search's document evicts the
  newest document of a lower priority; otherwise the new document is dropped. Drops are counted.
* Within a priority, the request closest to having all its documents goes first
  (`completion_queue.py`): a search is reranked only when its whole window has vectors, so windows
  are completed one after another instead of all advancing together, and a search with a few cold
  documents never waits behind a request that queued thousands (which still gets its turn: an
  owner unserved for 30 s goes first).
* Write warming is a bounded amount of work: at most a tenth of the queue (10,000 documents on the
  defaults, a few minutes of the embedder's time) waits for writes; more write documents are dropped
  and counted, and the documents stay searchable, they are embedded when a search first meets them.
* CPU is bounded: `threads` worker threads (LOCAL_EMBED_THREADS), each at a raised niceness
  (LOCAL_EMBED_NICE, default +5; Linux niceness is per thread), each running the model on itself
  (no hand-off to the model's normal-priority pool). They give way to the event loop and the
  engine. +5 rather than +10: at a load average of 10 on 2 cores, +10 threads got about 1% of a
  core (0.6 documents/s) and the store never warmed; +5 keeps them progressing.
* Work is taken in small chunks so a search's documents never wait behind a long write backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rerank_proxy.local.completion_queue import CompletionQueue
from rerank_proxy.local.vector_store import STORE_ERRORS

log = logging.getLogger(__name__)

SEARCH, WRITE, STARTUP = 0, 1, 2
PRIORITY_NAMES = ("search", "write", "startup")
NICE = 5
# One thread's time per 256-token Cranfield document: the guess until the first chunks are timed (then
# a running average). docs/decisions/onnx-int8.md times the shipped model on 100 such documents: 3.7 s
# on a quiet 2-core host, 13 s at load average 3-10.
DEFAULT_SECONDS_PER_DOC = 0.04


class Dropped(Exception):
    """The document left the queue unembedded (queue full, or the embedder closed)."""


class Store(Protocol):
    """Where vectors are kept (`VectorStore`, `TieredVectorStore`); trouble raises STORE_ERRORS."""

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]: ...
    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> int: ...
    def as_stored(self, vectors: np.ndarray) -> np.ndarray: ...
    def count(self) -> int: ...


@dataclass
class EmbedderStats:
    queued: int = 0      # documents accepted into the queue
    embedded: int = 0    # documents the model embedded
    already_stored: int = 0  # queued documents another worker or replica had stored meanwhile
    dropped: int = 0     # documents refused or evicted because the queue was full
    failed: int = 0      # documents whose embedding or storing raised
    busy_seconds: float = 0.0  # worker time spent embedding, summed over threads


class BackgroundEmbedder:
    """Embeds queued (key, text) pairs on low-priority threads and stores their vectors."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], store: Store, *, threads: int = 2,
                 max_queue: int = 100_000, chunk: int = 8, nice: int = NICE,
                 on_store_error: Callable[[str, Exception], None] | None = None) -> None:
        if threads < 1 or max_queue < 1 or chunk < 1:
            raise ValueError("threads, max_queue and chunk must be >= 1")
        self._embed = embed
        self.store = store
        self.threads = threads
        self.max_queue = max_queue
        self.chunk = chunk
        self.nice = nice
        self._on_store_error = on_store_error
        self.stats = EmbedderStats()
        self._cond = threading.Condition()
        self.write_max = max(1, max_queue // 10)      # write warming's share of the queue
        self._queues: list[CompletionQueue] = [CompletionQueue() for _ in PRIORITY_NAMES]
        self._priority: dict[bytes, int] = {}          # queued key -> its queue
        self._futures: dict[bytes, Future[np.ndarray]] = {}  # queued or in-flight key -> result
        self._workers: list[threading.Thread] = []
        self._pid = 0
        self._closed = False
        self._seconds_per_doc = DEFAULT_SECONDS_PER_DOC
        self._started_at = time.monotonic()

    # --- submitting ------------------------------------------------------------------------------

    def submit(self, items: Iterable[tuple[bytes, str]], priority: int = SEARCH,
               owner: Hashable | None = None) -> dict[bytes, Future[np.ndarray]]:
        """Queue (key, text) pairs; returns a future (resolving to the stored vector) per key taken.

        `owner` is whose turn the items take (None: this call's own). Never blocks on the model or
        the store: safe to call from the event loop.
        """
        taken: dict[bytes, Future[np.ndarray]] = {}
        owner = owner if owner is not None else object()
        with self._cond:
            if self._closed:
                return taken
            for key, text in items:
                future = self._futures.get(key)
                if future is not None:
                    queued_at = self._priority.get(key)
                    if queued_at is not None and queued_at > priority:  # promote to the earlier queue
                        self._queues[priority].put(key, self._queues[queued_at].pop(key), owner)
                        self._priority[key] = priority
                    elif queued_at == priority:   # queued by another request: this one waits for it too
                        self._queues[priority].join(key, owner)
                    taken[key] = future
                    continue
                if priority == WRITE and len(self._queues[WRITE]) >= self.write_max:
                    self.stats.dropped += 1
                    continue
                if self.queue_depth() >= self.max_queue and not self._evict_below(priority):
                    self.stats.dropped += 1
                    continue
                future = Future()
                self._futures[key] = future
                self._queues[priority].put(key, text, owner)
                self._priority[key] = priority
                self.stats.queued += 1
                taken[key] = future
            if taken:
                self._ensure_workers()
                self._cond.notify_all()
        return taken

    def estimate_seconds(self, owner: Hashable) -> float:
        """Time until `owner`'s queued search documents are embedded, the closest-to-complete first."""
        with self._cond:
            ahead = self._queues[SEARCH].ahead_of(owner)
        return ahead * self._seconds_per_doc / self.threads

    def queue_depth(self) -> int:
        return sum(len(q) for q in self._queues)

    def status(self) -> dict[str, Any]:
        """Queue, throughput and store size, for metrics and the readiness report."""
        with self._cond:
            depth = {name: len(q) for name, q in zip(PRIORITY_NAMES, self._queues, strict=True)}
            in_flight = len(self._futures) - sum(depth.values())
            owners = self._queues[SEARCH].owners()
        busy = self.stats.busy_seconds
        try:
            stored: int | None = self.store.count()
        except STORE_ERRORS:  # a broken store is reported, never raised from a status call
            stored = None
        return {"queue_depth": sum(depth.values()), "queue_by_priority": depth, "in_flight": in_flight,
                "queue_max": self.max_queue, "write_queue_max": self.write_max, "threads": self.threads,
                "search_owners": owners,
                "embedded": self.stats.embedded, "already_stored": self.stats.already_stored,
                "dropped": self.stats.dropped, "failed": self.stats.failed, "queued": self.stats.queued,
                "docs_per_second_busy": round(self.stats.embedded / busy, 2) if busy else None,
                "store_entries": stored}

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or being embedded (True), or `timeout` passes (False).

        For tools and tests that want "the store has caught up" as an event, not a guess.
        """
        with self._cond:
            return self._cond.wait_for(lambda: not self._futures, timeout)

    def wait_below(self, depth: int, timeout: float) -> bool:
        """Block until fewer than `depth` documents are queued: back-pressure for bulk producers
        (start-up warming) so they never overflow the queue and drop their own work."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or self.queue_depth() < depth, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work; running chunks finish (their vectors are kept), queued ones are dropped."""
        with self._cond:
            self._closed = True
            for queue in self._queues:
                for key in queue:
                    self._resolve_failed(key, Dropped("embedder closed"))
                queue.clear()
            self._priority.clear()
            self._cond.notify_all()
            workers = [w for w in self._workers if self._pid == os.getpid()]
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # --- workers ---------------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        """Start the threads on first use, and again in a forked child (threads do not fork)."""
        if self._workers and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._workers = [threading.Thread(target=self._run, name=f"local-embedder-{n}", daemon=True)
                         for n in range(self.threads)]
        for worker in self._workers:
            worker.start()

    def _run(self) -> None:
        _lower_priority(self.nice)
        while True:
            with self._cond:
                while not self._closed and not self.queue_depth():
                    self._cond.wait()
                if self._closed:
                    return
                chunk = self._take(self.chunk)
            self._process(chunk)

    def _take(self, n: int) -> list[tuple[bytes, str]]:
        """Up to n queued items, highest priority first (caller holds the lock)."""
        for queue in self._queues:
            # never mix priorities: a search chunk should not wait for write documents
            chunk = queue.take(n)
            if chunk:
                for key, _ in chunk:
                    del self._priority[key]
                return chunk
        return []

    def _process(self, chunk: list[tuple[bytes, str]]) -> None:
        keys = [k for k, _ in chunk]
        try:
            found = self.store.get_many(keys)
        except STORE_ERRORS as exc:
            self._store_error("read", exc)
            found = {}
        todo = [(k, t) for k, t in chunk if k not in found]
        if todo:
            started = time.perf_counter()
            try:
                vectors = self._embed([t for _, t in todo])
            except Exception as exc:  # noqa: BLE001 - whatever the model raises loses this chunk only
                log.warning("background embedder: the model failed on %d documents: %s", len(todo), exc)
                with self._cond:
                    self.stats.failed += len(todo)
                    for key, _ in todo:
                        self._resolve_failed(key, exc)
                    for key in found:
                        self._resolve(key, found[key])
                    self._cond.notify_all()
                return
            elapsed = time.perf_counter() - started
            new = list(zip([k for k, _ in todo], vectors, strict=True))
            try:
                self.store.put_many(new)
            except STORE_ERRORS as exc:  # the vectors still serve the searches waiting for them
                self._store_error("write", exc)
            stored = self.store.as_stored(np.asarray(vectors))
            found.update(zip([k for k, _ in todo], stored, strict=True))
            with self._cond:
                self.stats.embedded += len(todo)
                self.stats.busy_seconds += elapsed
                per_doc = elapsed / len(todo)
                self._seconds_per_doc = 0.8 * self._seconds_per_doc + 0.2 * per_doc
        with self._cond:
            self.stats.already_stored += len(chunk) - len(todo)
            for key in keys:
                self._resolve(key, found[key])
            self._cond.notify_all()  # wakes wait_idle(); idle workers re-check and sleep again

    # --- internals (caller holds the lock) -----------------------------------------------------

    def _evict_below(self, priority: int) -> bool:
        """Make room for a `priority` item by dropping the newest item of a lower priority."""
        for lower in range(len(self._queues) - 1, priority, -1):
            queue = self._queues[lower]
            if queue:
                key, _ = queue.pop_newest()
                del self._priority[key]
                self._resolve_failed(key, Dropped("embedder queue full"))
                self.stats.dropped += 1
                return True
        return False

    def _resolve(self, key: bytes, vector: np.ndarray) -> None:
        future = self._futures.pop(key, None)
        if future is not None:
            with contextlib.suppress(InvalidStateError):  # cancelled by a waiter: nobody wants it any more
                future.set_result(vector)

    def _resolve_failed(self, key: bytes, exc: BaseException) -> None:
        future = self._futures.pop(key, None)
        if future is not None:
            with contextlib.suppress(InvalidStateError):
                future.set_exception(exc)

    def _store_error(self, action: str, exc: Exception) -> None:
        if self._on_store_error is not None:
            self._on_store_error(action, exc)


async def wait_all(futures: Sequence[Future[Any]], timeout: float) -> bool:
    """True when every future finished (with a result or an error) within `timeout` seconds.

    One loop-side future for the whole set instead of one wrapper per document; the futures are
    never cancelled, so the embedding carries on for the next search when this one stops waiting.
    """
    if not futures:
        return True
    if timeout <= 0:
        return all(f.done() for f in futures)
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not all_done.done():
            all_done.set_result(None)

    def from_thread(_: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(one_done)

    for future in futures:
        future.add_done_callback(from_thread)
    try:
        async with asyncio.timeout(timeout):
            await all_done
    except TimeoutError:
        return False
    return True


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness (Linux applies it per thread; elsewhere to the process: skip)."""
    if not nice or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.info("background embedder: cannot lower thread priority (%s)", exc)
