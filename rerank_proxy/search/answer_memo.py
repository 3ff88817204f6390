"""Finished answers of repeated searches, handed back while the engine's answer is unchanged.

A search whose scores are all cached still parses the engine's 100 hits, looks up their digests
and scores and merges the page: about 1 ms of CPU, most of a cache hit's cost (bench/search_cpu.py).
But the answer is a pure function of the client's request, the engine's answer and the scores.
So when the same request (method, targets, URL parameters, decoded body, X-Rerank-* headers)
gets an engine answer equal byte for byte to one already reranked, apart from `took`, the memo
hands back that finished body with the new `took` instead of computing it again.

What keeps it exact:
* the engine's answer is compared by SHA-256, so a new document version, another score, another
  total, or another user's view of the index (document-level security) is another answer;
* an entry lives no longer than the scores it used (CACHE_TTL_S); a score-cache flush or a changed
  index mapping retires every entry (`generation`); and an entry whose texts came from index
  mappings is not used once a mapping read is due again (`fresh`), so the search that comes then
  starts the read, as it would without the memo;
* only reranked answers are kept: a lexical fallback (provider down, vectors still cold) is
  computed again next time, so the reranked order arrives as soon as it can.

Bounded by the bytes of the kept bodies (CACHE_ANSWERS_MAX_MB per worker), least recently used first.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# The engines put `took` first; `pretty` or a client's filter_path may move or drop it in the output.
_ENGINE_TOOK = re.compile(rb'\{\s*"took"\s*:\s*(\d+)\s*,')
_OUTPUT_TOOK = re.compile(rb'\{\s*"took"\s*:\s*(\d+)')
_ENTRY_OVERHEAD = 200          # bytes of bookkeeping per entry, counted against the bound
# Hashing the engine's answer costs about 0.8 ms per MB here: past this size the memo would save
# less than it costs, and one entry would take a large share of the bound.
MAX_ENGINE_ANSWER_BYTES = 2 << 20


@dataclass(slots=True)
class _Entry:
    answer: bytes          # SHA-256 of the engine's answer without `took`
    head: bytes            # the finished body up to its `took` value (all of it when it has none)
    tail: bytes | None     # the body after its `took` value; None: the body has no `took`
    outcome: str
    cache: str
    window: int            # hits whose scores the answer used (counted as cache hits when reused)
    expires: float
    generation: tuple[int, ...]
    mapped: tuple[str, ...]   # indices whose mappings gave the hit texts
    credentials: bytes        # ... as read with these credentials (engine.headers.credentials_of)

    @property
    def size(self) -> int:
        return len(self.head) + len(self.tail or b"") + _ENTRY_OVERHEAD


@dataclass(slots=True)
class Remembered:
    body: bytes
    outcome: str
    cache: str
    window: int


def request_key(method: str, targets: str | None, params: Mapping[str, str], headers: Mapping[str, str],
                body: bytes, credentials: bytes = b"") -> bytes:
    """What the pipeline's answer depends on besides the engine's answer and the scores: the
    credentials too, since the fields its texts are made of were read with them."""
    digest = hashlib.sha256(len(credentials).to_bytes(2, "big") + credentials)
    rerank_headers = sorted((k, v) for k, v in headers.items() if k.startswith("x-rerank"))
    for part in (method, targets or "", repr(sorted(params.items())), repr(rerank_headers)):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(body)
    return digest.digest()


class AnswerMemo:
    """Request key -> the finished answer to the engine answer seen with it."""

    def __init__(self, max_bytes: int, ttl_s: float, generation: Callable[[], tuple[int, ...]],
                 clock: Callable[[], float] = time.monotonic,
                 fresh: Callable[[tuple[str, ...], bytes], bool] | None = None) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._generation = generation
        self._fresh = fresh
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def answer_digest(self, engine_body: bytes, *, opensearch: bool) -> bytes | None:
        """The digest of the engine's answer to compare and store, or None when it cannot be
        kept (too large, or `took` not where the engines put it). Worth computing only after
        `expects(request)`, or to store a new entry."""
        if len(engine_body) > MAX_ENGINE_ANSWER_BYTES:
            return None
        took = _ENGINE_TOOK.match(engine_body)
        if took is None:
            return None
        digest = hashlib.sha256(b"O" if opensearch else b"E")
        digest.update(memoryview(engine_body)[took.end():])
        return digest.digest()

    def expects(self, request: bytes) -> bool:
        return request in self._entries

    def get(self, request: bytes, answer: bytes, engine_body: bytes) -> Remembered | None:
        """The finished body for this engine answer, with its `took`; None if not remembered."""
        entry = self._entries.get(request)
        if entry is None or entry.answer != answer:
            return None
        if self._clock() >= entry.expires or entry.generation != self._generation():
            self._drop(request)
            return None
        if entry.mapped and self._fresh is not None and not self._fresh(entry.mapped, entry.credentials):
            return None  # the full search runs, and reads the mapping again
        self._entries.move_to_end(request)
        self.hits += 1
        if entry.tail is None:
            body = entry.head
        else:
            took = _ENGINE_TOOK.match(engine_body)
            assert took is not None  # answer_digest matched it
            body = entry.head + took.group(1) + entry.tail
        return Remembered(body, entry.outcome, entry.cache, entry.window)

    def put(self, request: bytes, answer: bytes, body: bytes, outcome: str, cache: str, window: int,
            mapped: tuple[str, ...] = (), credentials: bytes = b"") -> None:
        took = _OUTPUT_TOOK.match(body)
        head, tail = (body, None) if took is None else (body[:took.start(1)], body[took.end(1):])
        entry = _Entry(answer, head, tail, outcome, cache, window, self._clock() + self.ttl_s,
                       self._generation(), mapped, credentials)
        if entry.size > self.max_bytes:
            return
        self._drop(request)
        self._entries[request] = entry
        self._bytes += entry.size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, request: bytes) -> None:
        entry = self._entries.pop(request, None)
        if entry is not None:
            self._bytes -= entry.size


def generations(*counters: Callable[[], int]) -> Callable[[], tuple[int, ...]]:
    """One generation tuple from several counters (score-cache flushes, mapping changes)."""
    sources: Iterable[Callable[[], int]] = tuple(counters)
    return lambda: tuple(source() for source in sources)
