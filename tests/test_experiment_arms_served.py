"""The experiment arms through the proxy, against both engines: what each arm serves, what it
records in the UBI queries index, what it costs (per-arm metrics), that a shadow never delays an
answer, and that assignment is sticky across replicas (separate `serve` processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from rerank_proxy.config import SETTING_PREFIXES
from rerank_proxy.experiments.arms import DEFAULT_SALT, Experiment, assign
from rerank_proxy.experiments.interleave import team_draft
from rerank_proxy.scoring.providers.base import RerankResult
from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.support_data import expected_order
from tests.support_rerankers import OverlapReranker
from tests.support_wait import metric_samples, wait_until
from tests.test_workers import PROVIDER_KEY, counting_provider

QUERY_TEXT = "jet engine noise"
QUERY = {"match": {"body": QUERY_TEXT}}


@pytest.fixture
def ubi_index(index_name):
    return f"{index_name}-ubi"


def _search(url: str, index: str, client_id: str | None = None, query_id: str | None = None,
            text: str = QUERY_TEXT, page: dict[str, int] | None = None) -> httpx.Response:
    ubi: dict[str, Any] = {"user_query": text}
    if client_id is not None:
        ubi["client_id"] = client_id
    if query_id is not None:
        ubi["query_id"] = query_id
    answer = httpx.post(f"{url}/{index}/_search", json={"query": {"match": {"body": text}}, "ext": {"ubi": ubi},
                                                         **(page or {})}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer


def _ids(answer: httpx.Response) -> list[str]:
    return [hit["_id"] for hit in answer.json()["hits"]["hits"]]


def _engine_ids(engine_url: str, index: str, text: str = QUERY_TEXT, size: int = 100) -> list[str]:
    body = {"query": {"match": {"body": text}}, "size": size}
    return [h["_id"] for h in httpx.post(f"{engine_url}/{index}/_search", json=body, timeout=30).json()["hits"]["hits"]]


def _records(engine_url: str, index: str, expected: int) -> dict[str, dict[str, Any]]:
    """query_id -> record, once `expected` records are in the index."""
    def read() -> dict[str, dict[str, Any]]:
        with httpx.Client(base_url=engine_url, timeout=30) as client:
            if client.post(f"/{index}/_refresh").status_code != 200:
                return {}
            hits = client.post(f"/{index}/_search", json={"size": 1000}).json()["hits"]["hits"]
        found = {h["_source"]["query_id"]: h["_source"] for h in hits}
        return found if len(found) >= expected else {}
    return wait_until(read, f"{expected} records in {index}")


def _arm_count(url: str, arm: str) -> float:
    return metric_samples(url).get(("rerank_proxy_experiment_searches_total", (("arm", arm),)), 0.0)


def test_ab_serves_each_client_its_arm_stickily_and_records_it(engine, corpus_index, ubi_index):
    reranker = OverlapReranker()
    settings = proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index, RERANK_EXPERIMENT="ab:50")
    engine_ids = _engine_ids(engine.url, corpus_index)
    clients = [f"user-{n}" for n in range(24)]
    expected_arms = {c: assign(Experiment("ab", 50.0), f"client:{c}", DEFAULT_SALT) for c in clients}
    assert set(expected_arms.values()) == {"lexical", "reranked"}  # both arms among these users
    with run_proxy(settings, reranker=reranker) as proxy:
        served: dict[str, str] = {}
        for client in clients:
            first = _search(proxy.url, corpus_index, client, query_id=f"{client}-1")
            again = _search(proxy.url, corpus_index, client, query_id=f"{client}-2")
            arm = first.headers["x-rerank-arm"]
            assert again.headers["x-rerank-arm"] == arm == expected_arms[client]
            if arm == "reranked":
                assert _ids(first) == expected_order(QUERY_TEXT, engine_ids)[:10]
                assert first.headers["x-rerank"] in ("reranked", "cached")
            else:
                assert _ids(first) == engine_ids[:10]  # the lexical order of the same window
                assert first.headers["x-rerank"] == "lexical"
            served[client] = arm
        lexical_users = [c for c, a in served.items() if a == "lexical"]
        calls = reranker.calls
        _search(proxy.url, corpus_index, lexical_users[0], text="supersonic panel flutter")
        assert reranker.calls == calls  # the lexical arm costs no provider call
        counts = {arm: _arm_count(proxy.url, arm) for arm in ("lexical", "reranked")}
        assert counts == {"lexical": 2 * len(lexical_users) + 1, "reranked": 2 * (len(clients) - len(lexical_users))}
        records = _records(engine.url, ubi_index, 2 * len(clients) + 1)
    for client, arm in served.items():
        assert records[f"{client}-1"]["arm"] == records[f"{client}-2"]["arm"] == arm
        assert "object_teams" not in records[f"{client}-1"]


def test_interleaving_serves_the_team_draft_and_records_each_hits_team(engine, corpus_index, ubi_index):
    settings = proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index, RERANK_EXPERIMENT="interleave",
                              RERANK_WINDOW="20")
    engine_ids = _engine_ids(engine.url, corpus_index, size=20)
    reranked = expected_order(QUERY_TEXT, engine_ids)
    assert reranked != engine_ids  # the two rankings differ, so the draft has teams
    query_ids = [f"q-{n}" for n in range(6)]
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        answers = {q: _search(proxy.url, corpus_index, "user-1", query_id=q) for q in query_ids}
        repeat = _search(proxy.url, corpus_index, "user-1", query_id=query_ids[0])
        records = _records(engine.url, ubi_index, len(query_ids))
    assert _ids(repeat) == _ids(answers[query_ids[0]])  # a query id interleaves the same way every time
    for query_id, answer in answers.items():
        assert answer.headers["x-rerank-arm"] == "interleaved"
        drafted = team_draft(engine_ids, reranked, query_id, len(engine_ids))
        assert _ids(answer) == list(drafted.ids[:10])
        assert records[query_id]["arm"] == "interleaved"
        assert records[query_id]["object_teams"] == list(drafted.teams[:10])
        assert records[query_id]["query_response_object_ids"] == _ids(answer)
    teams = {t for q in query_ids for t in records[q]["object_teams"]}
    assert {"lexical", "reranked"} <= teams


def test_interleaving_pages_past_the_first(engine, corpus_index, ubi_index):
    settings = proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index, RERANK_EXPERIMENT="interleave",
                              RERANK_WINDOW="20")
    engine_ids = _engine_ids(engine.url, corpus_index, size=20)
    drafted = team_draft(engine_ids, expected_order(QUERY_TEXT, engine_ids), "q-page", len(engine_ids))
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        second = _search(proxy.url, corpus_index, "u", query_id="q-page", page={"from": 5, "size": 5})
        record = _records(engine.url, ubi_index, 1)["q-page"]
    assert _ids(second) == list(drafted.ids[5:10])
    assert record["object_teams"] == list(drafted.teams[5:10])


def test_an_msearch_serves_each_sub_search_in_its_arm(engine, corpus_index, ubi_index):
    settings = proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index, RERANK_EXPERIMENT="interleave",
                              RERANK_WINDOW="20")
    engine_ids = _engine_ids(engine.url, corpus_index, size=20)
    lines = []
    for query_id in ("m-1", "m-2"):
        lines += [{"index": corpus_index},
                  {"query": QUERY, "ext": {"ubi": {"query_id": query_id, "client_id": "u"}}}]
    body = "".join(httpx.Response(200, json=line).text + "\n" for line in lines)
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        answer = httpx.post(f"{proxy.url}/_msearch", content=body,
                            headers={"content-type": "application/x-ndjson"}, timeout=30)
        assert answer.status_code == 200, answer.text
        records = _records(engine.url, ubi_index, 2)
    assert answer.headers["x-rerank-arm"] == "interleaved"
    for query_id, response in zip(("m-1", "m-2"), answer.json()["responses"], strict=True):
        drafted = team_draft(engine_ids, expected_order(QUERY_TEXT, engine_ids), query_id, len(engine_ids))
        assert [h["_id"] for h in response["hits"]["hits"]] == list(drafted.ids[:10])
        assert records[query_id]["object_teams"] == list(drafted.teams[:10])


class HeldReranker(OverlapReranker):
    """The overlap reranker, each call held until the test releases it (a slow provider on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        self.waiting.release()
        await asyncio.to_thread(self.release.wait)
        return await super().rerank(query, documents)


def test_shadow_serves_lexical_at_once_and_records_the_reranked_list_behind_it(engine, corpus_index, ubi_index):
    reranker = HeldReranker()
    # RERANK_MAX_CONCURRENCY=4: one shadow slot, so the second search's shadow is skipped
    settings = proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index, RERANK_EXPERIMENT="shadow",
                              RERANK_MAX_CONCURRENCY="4")
    engine_ids = _engine_ids(engine.url, corpus_index)
    with run_proxy(settings, reranker=reranker) as proxy:
        first = _search(proxy.url, corpus_index, "user-1", query_id="s-1")
        assert reranker.waiting.acquire(timeout=30)  # the shadow is at the provider, held ...
        assert _ids(first) == engine_ids[:10]        # ... and the answer came without it
        assert first.headers["x-rerank"] == "lexical"
        assert first.headers["x-rerank-arm"] == "lexical"
        second = _search(proxy.url, corpus_index, "user-2", query_id="s-2", text="supersonic panel flutter")
        assert second.headers["x-rerank-arm"] == "lexical"
        skipped = _records(engine.url, ubi_index, 1)
        assert "shadow_object_ids" not in skipped["s-2"]  # no slot: recorded at once, without a shadow
        reranker.release.set()
        records = _records(engine.url, ubi_index, 2)
        samples = metric_samples(proxy.url)
    assert records["s-1"]["query_response_object_ids"] == engine_ids[:10]
    assert records["s-1"]["shadow_object_ids"] == expected_order(QUERY_TEXT, engine_ids)[:10]
    assert samples[("rerank_proxy_experiment_shadow_total", (("result", "scored"),))] == 1
    assert samples[("rerank_proxy_experiment_shadow_total", (("result", "skipped"),))] == 1


def test_with_no_experiment_there_is_no_arm_header(engine, corpus_index, ubi_index):
    with run_proxy(proxy_settings(engine.url, UBI_QUERIES_INDEX=ubi_index), reranker=OverlapReranker()) as proxy:
        answer = _search(proxy.url, corpus_index, "user-1")
        assert "x-rerank-arm" not in answer.headers
        assert not any(name.startswith("rerank_proxy_experiment_searches") for name, _ in metric_samples(proxy.url))


def test_without_a_client_id_the_api_key_then_the_address_decides(engine, corpus_index):
    settings = proxy_settings(engine.url, RERANK_EXPERIMENT="ab:50")
    keys = [f"ApiKey k{n}" for n in range(16)]
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        for key in keys:
            body = {"query": QUERY}
            arms = {httpx.post(f"{proxy.url}/{corpus_index}/_search", json=body, timeout=30,
                               headers={"authorization": key}).headers["x-rerank-arm"] for _ in range(2)}
            assert arms == {assign(Experiment("ab", 50.0), f"key:{key}", DEFAULT_SALT)}
        plain = httpx.post(f"{proxy.url}/{corpus_index}/_search", json={"query": QUERY}, timeout=30)
    assert plain.headers["x-rerank-arm"] == assign(Experiment("ab", 50.0), "addr:127.0.0.1", DEFAULT_SALT)


@contextmanager
def _replica(engine_url: str, provider_url: str, **env: str) -> Iterator[str]:
    """One `rerank-proxy serve` process (two workers, its own hash seed) until every worker answers."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES) and k != "WORKERS"}
    environment.update({"UPSTREAM_URLS": engine_url, "RERANK_PROVIDER": "cohere", "RERANK_BASE_URL": provider_url,
                        "RERANK_API_KEY": PROVIDER_KEY, "PORT": str(port), "WORKERS": "2", "LOG_LEVEL": "warning",
                        "PYTHONHASHSEED": "random", **env})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        try:
            return metric_samples(url).get(("rerank_proxy_workers", ())) == 2
        except (httpx.TransportError, AssertionError):
            return False
    try:
        wait_until(up, f"serve on {url}", timeout_s=120, interval_s=0.1)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()  # type: ignore[union-attr]


@pytest.mark.parametrize("engine", ["elasticsearch"], indirect=True)
async def test_the_same_client_lands_in_the_same_arm_on_every_replica(engine, corpus_index):
    clients = [f"c-{uuid.uuid4().hex[:6]}" for _ in range(30)]
    async with counting_provider(0.0) as (provider_url, _):
        with _replica(engine.url, provider_url, RERANK_EXPERIMENT="ab:30") as one, \
                _replica(engine.url, provider_url, RERANK_EXPERIMENT="ab:30") as two:
            async with httpx.AsyncClient(timeout=30) as client:
                async def arm(url: str, client_id: str) -> str:
                    body = {"query": QUERY, "ext": {"ubi": {"client_id": client_id}}}
                    answer = await client.post(f"{url}/{corpus_index}/_search", json=body)
                    return answer.headers["x-rerank-arm"]
                # several searches per client on each replica: they reach both workers of each
                arms = [[await arm(url, c) for url in (one, two) for _ in range(3)] for c in clients]
    expected = [assign(Experiment("ab", 30.0), f"client:{c}", DEFAULT_SALT) for c in clients]
    assert [set(a) for a in arms] == [{e} for e in expected]
    assert "reranked" in expected
    assert "lexical" in expected

