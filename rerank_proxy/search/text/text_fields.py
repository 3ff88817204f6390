"""The text-typed fields of each index, read from its mapping once and kept: what a hit's text is made of.

A search waits for a mapping read only the first time it meets an index (and at most `wait_s`,
the read then finishing behind it); afterwards the cached fields are used, and an entry older than
`ttl_s` is served once more while one read refreshes it in the background. Concurrent searches on a
cold index share one read. A failed read (a 403 for a user without `view_index_metadata`, an index
metadata block, an engine down) means every string of `_source`, as before this cache existed, and
is retried after `retry_s`, not on every search; a refresh that fails keeps the fields it had.

Why 60 s: a mapping changes when a field is added (dynamic mapping, `PUT _mapping`), which is rare
and never urgent here (the new field's prose is missing from the texts until then, nothing breaks),
while one small read per index per minute per worker is no load on any cluster. Why 5 s to retry:
long enough that a cluster refusing every read is asked once in a while, short enough that an engine
back from a restart is read again almost at once.

Entries are keyed by the name read and by the credentials it was read with (`credentials_of`: the
Authorization, cookie, run-as and tenant headers): what one user's read found, or was refused, never
chooses the fields of another user's texts. Searches use each hit's concrete `_index`, so aliases
and patterns resolve to the indices behind them; writes may name an alias, whose entry is the union
of the indices it points to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from rerank_proxy.config import IndexRule
from rerank_proxy.engine.headers import credentials_of
from rerank_proxy.engine.transport import EngineTransport
from rerank_proxy.errors import ProxyError
from rerank_proxy.search.text.hit_text import MappedFields, RuleFor, hit_texts, mapped_indices
from rerank_proxy.search.text.mapping_fields import RERANK_TEXT_TYPES, TextPaths, answer_paths
from rerank_proxy.search.text.prose import without_metadata

log = logging.getLogger("rerank_proxy.text_fields")

Headers = Sequence[tuple[bytes, bytes]]
# A mapping read carries the search's credentials (as its candidate fetch does), not its framing
# nor its media types: the answer is parsed as plain JSON.
_NOT_FOR_THE_READ = frozenset({b"content-type", b"content-length", b"content-encoding", b"accept",
                               b"accept-encoding", b"transfer-encoding"})
_ACCEPT_JSON = (b"accept", b"application/json")
Key = tuple[bytes, str]  # (credentials_of the read's headers, index name)


@dataclass(slots=True)
class _Entry:
    paths: TextPaths | None  # None: every string (no text field in the mapping, or never read)
    expires: float
    failed: bool = False


class TextFieldCache:
    """Per-index `TextPaths`, bounded (least recently used out first), refreshed after `ttl_s`."""

    def __init__(self, engine: EngineTransport, *, ttl_s: float = 60.0, retry_s: float = 5.0,
                 wait_s: float = 1.0, max_entries: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._retry_s = retry_s
        self._wait_s = wait_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._reads: dict[Key, asyncio.Task[TextPaths | None]] = {}
        self.reads = 0  # mapping reads started, for tests and the curious
        self.generation = 0  # bumped when an index's text paths change (search.answer_memo)

    async def resolve(self, indices: Collection[str], headers: Headers = ()) -> dict[str, TextPaths | None]:
        """The text paths of each index; None where a hit's text is every string of its `_source`."""
        now = self._clock()
        credentials = credentials_of(headers)
        out: dict[str, TextPaths | None] = {}
        cold: list[str] = []
        for index in indices:
            key = (credentials, index)
            entry = self._entries.get(key)
            if entry is None:
                cold.append(index)
                continue
            self._entries.move_to_end(key)
            out[index] = entry.paths
            if now >= entry.expires:
                self._read(key, headers)  # served stale this once; the next search gets the new one
        if cold:
            reads = [self._read((credentials, index), headers) for index in cold]
            done, _ = await asyncio.wait(reads, timeout=self._wait_s)  # a slow read goes on behind
            for index, read in zip(cold, reads):
                out[index] = read.result() if read in done and not read.cancelled() else None
        return out

    def _read(self, key: Key, headers: Headers) -> asyncio.Task[TextPaths | None]:
        """The read in flight for `key`, or a new one: one read per index and credentials at a time."""
        task = self._reads.get(key)
        if task is None:
            self.reads += 1
            task = asyncio.get_running_loop().create_task(self._fetch(key, headers))
            self._reads[key] = task
            task.add_done_callback(lambda done: self._read_over(key, done))
        return task

    def _read_over(self, key: Key, task: asyncio.Task[TextPaths | None]) -> None:
        if self._reads.get(key) is task:
            del self._reads[key]

    async def _fetch(self, key: Key, headers: Headers) -> TextPaths | None:
        index = key[1]
        read_headers = [(k, v) for k, v in headers if k.lower() not in _NOT_FOR_THE_READ]
        read_headers.append(_ACCEPT_JSON)
        try:
            answer = await self._engine.fetch("GET", f"/{quote(index, safe='')}/_mapping", read_headers, None)
            if answer.status != 200:
                raise LookupError(f"the engine answered {answer.status}: {answer.body[:200]!r}")
            found = without_metadata(answer_paths(orjson.loads(answer.body), RERANK_TEXT_TYPES))
        except (ProxyError, LookupError, ValueError) as exc:  # engine unreachable, its refusal, not JSON
            return self._failed(key, exc)  # the search goes on with every string
        except Exception as exc:  # a mapping we misread must not fail the search (logged with its traceback)
            log.exception("reading the mapping of %s failed unexpectedly", index)
            return self._failed(key, exc)
        # An index without a text field (all keywords and numbers) keeps the every-string text:
        # an empty text would rank all its hits last.
        paths = TextPaths(found) if found else None
        self._store(key, _Entry(paths, self._clock() + self._ttl_s))
        return paths

    def _failed(self, key: Key, exc: Exception) -> TextPaths | None:
        previous = self._entries.get(key)
        if previous is None or not previous.failed:
            log.warning("cannot read the mapping of %s (%s); its hits' text is every string of _source "
                        "for the credentials that read it, retried in %.0f s", key[1], exc, self._retry_s)
        paths = previous.paths if previous is not None else None  # a failed refresh keeps what it had
        self._store(key, _Entry(paths, self._clock() + self._retry_s, failed=True))
        return paths

    def _store(self, key: Key, entry: _Entry) -> None:
        previous = self._entries.get(key)
        if previous is None or _path_names(previous.paths) != _path_names(entry.paths):
            self.generation += 1
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, indices: Iterable[str], credentials: bytes = b"") -> bool:
        """Whether every one of these indices has a mapping read still within its time (a search
        that skips `resolve`, search.answer_memo, must not skip the refresh `resolve` would start)."""
        now = self._clock()
        for index in indices:
            entry = self._entries.get((credentials, index))
            if entry is None or now >= entry.expires:
                return False
        return True

    async def aclose(self) -> None:
        """Stop the reads still in flight (shutdown)."""
        tasks = list(self._reads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _path_names(paths: TextPaths | None) -> tuple[str, ...] | None:
    return None if paths is None else paths.paths


async def mapped_fields(hits: Sequence[Any], default: IndexRule, rule_for: RuleFor | None,
                        fields: TextFieldCache | None, headers: Headers = ()) -> MappedFields | None:
    """The text fields of the hits' indices whose rule takes them from the mapping (None: none)."""
    if fields is None:
        return None
    indices = mapped_indices(hits, default, rule_for)
    return await fields.resolve(indices, headers) if indices else None


async def mapped_hit_texts(hits: Sequence[Any], default: IndexRule, rule_for: RuleFor | None,
                           fields: TextFieldCache | None, headers: Headers = ()) -> list[str]:
    """`hit_texts`, the text fields of the indices whose rule takes them looked up first.

    The one way every caller (searches, the console, warming) builds texts, so a document's text,
    and the vector and score keys hashed from it, are the same whichever of them built it.
    """
    return hit_texts(hits, default, rule_for, await mapped_fields(hits, default, rule_for, fields, headers))
