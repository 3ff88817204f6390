"""The per-index text-field cache, on an engine transport that answers mapping reads from a dict.

Time is a settable clock and slow reads wait on an event the test releases: nothing here sleeps.
The same cache against the real engines is in test_text_from_mapping.py.
"""

from __future__ import annotations

import asyncio

import orjson

from rerank_proxy.engine.transport import EngineAnswer
from rerank_proxy.errors import ProxyError
from rerank_proxy.search.text.text_fields import TextFieldCache
from tests.support_wait import async_wait_until


def mapping(**types: str) -> dict:
    return {"mappings": {"properties": {name: {"type": kind} for name, kind in types.items()}}}


class MappingEngine:
    """`GET /<index>/_mapping` from `self.mappings`; a missing index is a 404, `fail` a 502."""

    def __init__(self, **mappings: dict) -> None:
        self.mappings = dict(mappings)
        self.targets: list[str] = []
        self.headers: list[list[tuple[bytes, bytes]]] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def fetch(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                    body: bytes | None) -> EngineAnswer:
        self.targets.append(target)
        self.headers.append(headers)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ProxyError(502, "proxy_upstream_exception", "engine unreachable")
        index = target.split("/")[1]
        if index not in self.mappings:
            return EngineAnswer(404, [], b'{"error":"index_not_found_exception"}')
        return EngineAnswer(200, [], orjson.dumps({index: self.mappings[index]}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def paths_of(resolved: dict, index: str) -> tuple[str, ...] | None:
    found = resolved[index]
    return None if found is None else found.paths


async def test_concurrent_searches_on_a_cold_index_share_one_read():
    engine = MappingEngine(products=mapping(title="text", sku="keyword"))
    engine.gate = asyncio.Event()
    cache = TextFieldCache(engine)
    searches = [asyncio.create_task(cache.resolve({"products"})) for _ in range(20)]
    await async_wait_until(lambda: engine.targets, "the mapping read to start")
    engine.gate.set()
    answers = await asyncio.gather(*searches)
    assert engine.targets == ["/products/_mapping"]
    assert cache.reads == 1
    assert all(paths_of(a, "products") == ("title",) for a in answers)


async def test_read_once_then_cached_until_the_ttl_then_refreshed_behind_the_search():
    clock = Clock()
    engine = MappingEngine(products=mapping(title="text"))
    cache = TextFieldCache(engine, ttl_s=60, clock=clock)
    assert paths_of(await cache.resolve({"products"}), "products") == ("title",)
    engine.mappings["products"] = mapping(title="text", body="text")  # a field added
    clock.now += 59
    assert paths_of(await cache.resolve({"products"}), "products") == ("title",)
    assert cache.reads == 1
    clock.now += 2  # past the TTL: this search is served the old fields, and starts one refresh
    assert paths_of(await cache.resolve({"products"}), "products") == ("title",)
    await async_wait_until(lambda: _fields_now(cache, "products", ("body", "title")), "the refreshed fields")
    assert cache.reads == 2


async def _fields_now(cache: TextFieldCache, index: str, expected: tuple[str, ...]) -> bool:
    """Whether a search now gets `expected` (it never waits on a cached entry, stale or not)."""
    return paths_of(await cache.resolve({index}), index) == expected


async def test_a_failed_read_means_every_string_and_is_retried_after_the_back_off():
    clock = Clock()
    engine = MappingEngine(products=mapping(title="text"))
    engine.fail = True
    cache = TextFieldCache(engine, retry_s=5, clock=clock)
    assert (await cache.resolve({"products"}))["products"] is None
    clock.now += 4
    assert (await cache.resolve({"products"}))["products"] is None
    assert cache.reads == 1  # not on every search
    engine.fail = False
    clock.now += 2
    assert (await cache.resolve({"products"}))["products"] is None  # the retry runs behind this one
    await async_wait_until(lambda: _fields_now(cache, "products", ("title",)), "the retried read")
    assert cache.reads == 2


async def test_a_failed_refresh_keeps_the_fields_it_had(caplog):
    clock = Clock()
    engine = MappingEngine(products=mapping(title="text"))
    cache = TextFieldCache(engine, ttl_s=60, retry_s=5, clock=clock)
    await cache.resolve({"products"})
    engine.fail = True
    clock.now += 61
    await cache.resolve({"products"})  # starts the refresh, which fails (and says so, once)
    await async_wait_until(lambda: "cannot read the mapping of products" in caplog.text, "the failed refresh")
    clock.now += 1
    assert paths_of(await cache.resolve({"products"}), "products") == ("title",)
    assert cache.reads == 2  # the next try waits for the back-off
    clock.now += 5
    await cache.resolve({"products"})
    assert cache.reads == 3


async def test_a_refused_read_and_an_unknown_index_fall_back_too():
    engine = MappingEngine()
    cache = TextFieldCache(engine)
    assert await cache.resolve({"gone"}) == {"gone": None}


async def test_an_index_without_text_fields_keeps_every_string():
    cache = TextFieldCache(MappingEngine(codes=mapping(sku="keyword", n="long")))
    assert await cache.resolve({"codes"}) == {"codes": None}


async def test_a_slow_read_does_not_hold_the_search_past_wait_s():
    engine = MappingEngine(products=mapping(title="text"))
    engine.gate = asyncio.Event()
    cache = TextFieldCache(engine, wait_s=0.01)
    assert await cache.resolve({"products"}) == {"products": None}  # every string, this once
    engine.gate.set()
    await async_wait_until(lambda: len(cache) == 1, "the slow read to land in the cache")
    assert paths_of(await cache.resolve({"products"}), "products") == ("title",)
    assert cache.reads == 1


async def test_bounded_least_recently_used_out_first():
    engine = MappingEngine(a=mapping(t="text"), b=mapping(t="text"), c=mapping(t="text"))
    cache = TextFieldCache(engine, max_entries=2)
    await cache.resolve({"a"})
    await cache.resolve({"b"})
    await cache.resolve({"a"})  # a used again: b is now the oldest
    await cache.resolve({"c"})
    assert len(cache) == 2
    await cache.resolve({"a"})
    assert cache.reads == 3
    await cache.resolve({"b"})
    assert cache.reads == 4


async def test_the_read_carries_the_searchs_credentials_not_its_framing():
    engine = MappingEngine(products=mapping(title="text"))
    cache = TextFieldCache(engine)
    await cache.resolve({"products"}, [(b"Authorization", b"ApiKey abc"), (b"content-type", b"application/json"),
                                       (b"accept", b"application/vnd.elasticsearch+json; compatible-with=8"),
                                       (b"x-opaque-id", b"req-1")])
    assert engine.headers == [[(b"Authorization", b"ApiKey abc"), (b"x-opaque-id", b"req-1"),
                               (b"accept", b"application/json")]]


async def test_index_names_are_escaped_in_the_target():
    engine = MappingEngine()
    await TextFieldCache(engine).resolve({"<logs-{now/d}>"})
    assert engine.targets == ["/%3Clogs-%7Bnow%2Fd%7D%3E/_mapping"]


async def test_aclose_stops_reads_in_flight():
    engine = MappingEngine(products=mapping(title="text"))
    engine.gate = asyncio.Event()
    cache = TextFieldCache(engine, wait_s=0.01)
    await cache.resolve({"products"})
    await cache.aclose()
    assert len(cache) == 0


async def test_entries_are_kept_per_credentials():
    engine = MappingEngine(books=mapping(title="text"))
    cache = TextFieldCache(engine)
    alice = [(b"Authorization", b"Basic YWxpY2U6YQ==")]
    bob = [(b"authorization", b"Basic Ym9iOmI="), (b"x-opaque-id", b"1")]
    await cache.resolve(["books"], alice)
    await cache.resolve(["books"], [(b"AUTHORIZATION", b"Basic YWxpY2U6YQ=="), (b"traceparent", b"00-1")])
    assert engine.targets == ["/books/_mapping"]          # the same credentials share one read
    await cache.resolve(["books"], bob)
    await cache.resolve(["books"])                          # anonymous: a key of its own
    assert len(engine.targets) == 3
    assert len(cache) == 3
