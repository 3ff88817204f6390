"""The console's judgments store through a real proxy: bounded, one small write per judgment, off the
event loop, shared by workers, and upgraded from the JSON file of earlier versions.

The engine does not take part in storing judgments, so these run in front of Elasticsearch only.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_proxy.config import Settings
from rerank_proxy.console.judgments import JudgmentStore, query_id
from tests.fixtures.proxy import RunningProxy, proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker
from tests.support_wait import wait_until
from tests.test_console import API, AUTH, TOKEN, stored, with_judgments_file

INDEX = "docs"
QUERY = "jet engine noise"


def with_store_limit(settings: Settings, megabytes: int) -> Settings:
    """Bound the store to `megabytes` (CONSOLE_STORE_MAX_MB)."""
    return settings.with_overrides(console_store_max_mb=megabytes)


@contextmanager
def console_proxy(engine_url: str, path: Path, monkeypatch: pytest.MonkeyPatch,
                  max_mb: int | None = None) -> Iterator[tuple[RunningProxy, httpx.Client]]:
    settings = with_judgments_file(proxy_settings(engine_url, ADMIN_TOKEN=TOKEN), path, monkeypatch)
    if max_mb is not None:
        settings = with_store_limit(settings, max_mb)
    with (
        run_proxy(settings, reranker=OverlapReranker()) as running,
        httpx.Client(base_url=running.url, headers=AUTH, timeout=60) as client,
    ):
        yield running, client


def judge(client: httpx.Client, doc: str, grade: int | None = 1, query: str = QUERY) -> httpx.Response:
    return client.put(f"{API}/judgments", json={"index": INDEX, "query": query, "doc_id": doc, "grade": grade})


def big_set(tag: str, count: int, chars: int) -> list[str]:
    return [f"{tag} {i} " + "x" * chars for i in range(count)]


def written_bytes() -> int:
    """Bytes this process (the test and its in-process proxy) has passed to write calls so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_one_judgment_is_a_small_write_with_many_sets_stored(es_engine, tmp_path, monkeypatch):
    path = tmp_path / "console.sqlite3"
    with console_proxy(es_engine.url, path, monkeypatch) as (_, client):
        for n in range(6):
            assert client.put(f"{API}/querysets/set {n}", json={"queries": big_set(f"s{n}", 2000, 500)}
                              ).status_code == 200
        assert judge(client, "d0").status_code == 200
        assert stored(path).size_bytes() > 6 * 2000 * 500, "the sets are stored"
        before = written_bytes()
        assert judge(client, "d1", 2).status_code == 200
        written = written_bytes() - before
        assert written < 256 * 1024, f"one judgment wrote {written} bytes: the store was rewritten"
        assert stored(path).get(query_id(INDEX, QUERY)) == {"d0": 1, "d1": 2}
        listed = client.get(f"{API}/querysets").json()["sets"]
        assert [(s["name"], s["queries"]) for s in listed] == [(f"set {n}", 2000) for n in range(6)]


def test_the_store_is_bounded_and_says_so(es_engine, tmp_path, monkeypatch):
    path = tmp_path / "console.sqlite3"
    with console_proxy(es_engine.url, path, monkeypatch, max_mb=1) as (_, client):
        first = big_set("a", 600, 1000)
        assert client.put(f"{API}/querysets/first", json={"queries": first}).status_code == 200
        refused = client.put(f"{API}/querysets/second", json={"queries": big_set("b", 600, 1000)})
        assert refused.status_code == 507, refused.text
        error = refused.json()
        assert error["status"] == 507
        assert error["error"]["type"] == "console_store_full_exception"
        assert error["error"]["root_cause"][0]["reason"] == error["error"]["reason"]
        for words in ("is full", "1 MiB", "CONSOLE_STORE_MAX_MB", "Delete saved query sets"):
            assert words in error["error"]["reason"]
        assert path.stat().st_size <= stored(path).size_bytes() <= 1024 * 1024
        assert [s["name"] for s in client.get(f"{API}/querysets").json()["sets"]] == ["first"], \
            "a refused set leaves nothing behind"
        assert client.get(f"{API}/querysets/first").json()["queries"] == first, "nothing was evicted"
        assert judge(client, "d1", 3).status_code == 200, "small writes still fit"

        assert client.delete(f"{API}/querysets/first").json() == {"deleted": True}
        assert client.put(f"{API}/querysets/second", json={"queries": big_set("b", 600, 1000)}).status_code == 200
        assert path.stat().st_size <= stored(path).size_bytes() <= 1024 * 1024
    assert stored(path).get(query_id(INDEX, QUERY)) == {"d1": 3}


def test_a_judgment_waiting_for_the_store_does_not_hold_up_the_event_loop(es_engine, tmp_path, monkeypatch):
    path = tmp_path / "console.sqlite3"
    with console_proxy(es_engine.url, path, monkeypatch) as (running, client):
        assert judge(client, "d1").status_code == 200
        other_worker = sqlite3.connect(path, isolation_level=None)
        other_worker.execute("BEGIN IMMEDIATE")  # another worker's write transaction holds the lock
        try:
            with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=running.url, headers=AUTH, timeout=60) as second:
                pending = pool.submit(judge, second, "d2")
                wait_until(lambda: running.in_flight >= 1, "the judgment to reach the proxy")
                health = httpx.get(f"{running.url}/_rerank/health", timeout=30)
                assert health.status_code == 200
                assert client.get(f"{API}/options").status_code == 200
                assert not pending.done(), "the proxy answered only once the judgment gave up: the loop was held"
                other_worker.execute("ROLLBACK")
                assert pending.result(timeout=60).status_code == 200
        finally:
            if other_worker.in_transaction:
                other_worker.execute("ROLLBACK")
            other_worker.close()
    assert stored(path).get(query_id(INDEX, QUERY)) == {"d1": 1, "d2": 1}


def test_workers_sharing_the_store_lose_no_judgment(tmp_path):
    path = tmp_path / "shared.sqlite3"

    async def two_workers() -> dict[str, int]:
        one, two = JudgmentStore(path), JudgmentStore(path)   # each: its own connection and thread
        try:
            await asyncio.gather(*(store.set(INDEX, QUERY, f"{name}{i}", i % 4)
                                   for i in range(40) for name, store in (("a", one), ("b", two))))
            assert await one.get(INDEX, QUERY) == await two.get(INDEX, QUERY)
            return await two.get(INDEX, QUERY)
        finally:
            await one.aclose()
            await two.aclose()

    docs = asyncio.run(two_workers())
    assert docs == {f"{name}{i}": i % 4 for i in range(40) for name in "ab"}


def _legacy_file(path: Path) -> dict[str, Any]:
    qid = query_id(INDEX, QUERY)
    data = {"version": 1, "queries": {qid: {"index": INDEX, "text": QUERY, "docs": {"d1": 1, "d2": 0, "d3": 2}}},
            "sets": {"old set": [QUERY, "wing flutter"]}}
    path.write_text(json.dumps(data, indent=1))
    return data


def test_the_json_file_of_earlier_versions_is_imported_once(es_engine, tmp_path, monkeypatch):
    legacy = tmp_path / "console-judgments.json"
    _legacy_file(legacy)
    original = legacy.read_bytes()
    with console_proxy(es_engine.url, legacy, monkeypatch) as (_, client):
        assert client.get(f"{API}/options").json()["judgments_file"] == str(tmp_path / "console-judgments.sqlite3")
        got = client.get(f"{API}/judgments", params={"index": INDEX, "query": QUERY}).json()["judgments"]
        assert got == {"d1": 1, "d2": 0, "d3": 2}
        assert client.get(f"{API}/querysets/old set").json()["queries"] == [QUERY, "wing flutter"]
        assert client.delete(f"{API}/querysets/old set").json() == {"deleted": True}
        assert judge(client, "d1", None).status_code == 200
    with console_proxy(es_engine.url, legacy, monkeypatch) as (_, client):
        assert client.get(f"{API}/querysets").json()["sets"] == [], "a deleted set is not imported again"
        got = client.get(f"{API}/judgments", params={"index": INDEX, "query": QUERY}).json()["judgments"]
        assert got == {"d2": 0, "d3": 2}, "a cleared judgment is not imported again"
    assert legacy.read_bytes() == original, "the JSON file is left as it was"
