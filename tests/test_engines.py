"""The local engine runner: the engines are the ones we asked for, reuse works, clusters form.

These start real JVMs (tens of seconds each); the session engines are shared with every other
integration test, the cluster and second-line engines are stopped at the end of their test.
"""

from __future__ import annotations

import httpx
import pytest

from rerank_proxy.local_engines.distributions import SECOND_LINE_VERSIONS
from rerank_proxy.local_engines.runner import (
    ELASTICSEARCH,
    OPENSEARCH,
    EngineInfo,
    ensure_engine,
    running_engines,
    start_node,
    stop_engine,
    stop_node,
)
from tests.support_wait import wait_until

pytestmark = pytest.mark.engine  # starts engines of its own (ensure_engine), not only through fixtures

CLUSTER_PORT = 19300  # 3-node opensearch: HTTP 19300-19302
SECOND_LINE_PORTS = {ELASTICSEARCH: 19210, OPENSEARCH: 19211}


def local_node(info: EngineInfo) -> tuple[httpx.Response, dict]:
    response = httpx.get(f"{info.url}/_nodes/_local", timeout=10)
    response.raise_for_status()
    return response, next(iter(response.json()["nodes"].values()))


def assert_is(info: EngineInfo, kind: str, version: str) -> None:
    """The engine on `info.url` is really `kind` at `version`.

    OpenSearch says so at `GET /`. The Elasticsearch integ-test build has no `GET /` (the root
    endpoint lives in a module it lacks), but marks every response with `X-Elastic-Product`.
    """
    response, node = local_node(info)
    assert node["version"] == version
    if kind == OPENSEARCH:
        root = httpx.get(f"{info.url}/", timeout=10).json()
        assert root["version"]["distribution"] == "opensearch"
        assert root["version"]["number"] == version
        assert "x-elastic-product" not in response.headers
    else:
        assert response.headers["x-elastic-product"] == "Elasticsearch"


def test_engine_is_the_expected_distribution(engine: EngineInfo) -> None:
    assert engine.url == f"http://127.0.0.1:{engine.port}"
    assert_is(engine, engine.kind, engine.version)


def test_engine_indexes_and_searches(engine: EngineInfo, index_name: str) -> None:
    with httpx.Client(base_url=engine.url, timeout=30) as client:
        created = client.put(f"/{index_name}", json={"mappings": {"properties": {"title": {"type": "text"}}}})
        assert created.status_code == 200, created.text
        client.post(f"/{index_name}/_doc?refresh=true", json={"title": "jet engine noise"}).raise_for_status()
        found = client.post(f"/{index_name}/_search", json={"query": {"match": {"title": "noise"}}}).json()
    assert found["hits"]["total"]["value"] == 1


def test_up_twice_reuses_the_running_engine(engine: EngineInfo) -> None:
    again = ensure_engine(engine.kind, port=engine.port)
    assert again.reused
    assert again.pids == engine.pids
    assert again.version == engine.version
    assert engine.port in [info.port for info in running_engines()]


@pytest.mark.slow  # three JVMs start, one restarts: ~30 s
def test_three_node_opensearch_cluster_and_node_restart() -> None:
    info = ensure_engine(OPENSEARCH, port=CLUSTER_PORT, nodes=3, timeout_s=300)
    try:
        assert info.urls == [f"http://127.0.0.1:{CLUSTER_PORT + i}" for i in range(3)]
        assert node_count(info.urls[1], expected=3) == 3

        stop_node(info, 2)
        assert info.pids[2] is None
        assert node_count(info.urls[0], expected=2) == 2

        start_node(info, 2, timeout_s=300)
        assert info.node_alive(2)
        assert node_count(info.urls[2], expected=3) == 3
    finally:
        stop_engine(port=CLUSTER_PORT)
    assert CLUSTER_PORT not in [i.port for i in running_engines()]


def node_count(url: str, expected: int, within_s: float = 60.0) -> int:
    """Lines of `_cat/nodes` (-1 for an error answer), polled until it shows `expected` (a stopped
    node takes a moment to leave, and if it was the cluster manager, a new one is elected first)."""
    last = [-1]

    def shows_expected() -> bool:
        response = httpx.get(f"{url}/_cat/nodes?h=name", timeout=30)
        last[0] = len([line for line in response.text.splitlines() if line.strip()]) \
            if response.status_code == 200 else -1
        return last[0] == expected

    wait_until(shows_expected, lambda: f"{url}/_cat/nodes to list {expected} nodes (it listed {last[0]})",
               timeout_s=within_s, interval_s=1)
    return last[0]


@pytest.mark.slow  # an engine of its own starts and stops: ~20 s each
@pytest.mark.parametrize("kind", [ELASTICSEARCH, OPENSEARCH], ids=["es8", "os3"])
def test_second_line_version(kind: str) -> None:
    """Elasticsearch 8.x (on Java 17) and OpenSearch 3.x (on Java 21+) start too."""
    version = SECOND_LINE_VERSIONS[kind]
    port = SECOND_LINE_PORTS[kind]
    info = ensure_engine(kind, version=version, port=port, timeout_s=300)
    try:
        assert_is(info, kind, version)
        _reranks_through_the_proxy(info)
    finally:
        stop_engine(port=port)


def _reranks_through_the_proxy(info: EngineInfo) -> None:
    """The second line is first-class too: the official client through the proxy gets the
    engine's candidates in the reranker's order, and writes pass through."""
    from tests.fixtures.proxy import proxy_settings, run_proxy
    from tests.support_data import expected_order, load_corpus, official_client
    from tests.support_rerankers import OverlapReranker

    load_corpus(info.url, "second-line")
    body = {"query": {"match": {"body": "jet engine noise"}}, "size": 100}
    with run_proxy(proxy_settings(info.url), reranker=OverlapReranker()) as running:
        if info.kind == ELASTICSEARCH and info.version.startswith("8."):
            # elasticsearch-py 9 only speaks to 9.x servers; an app on the 8.x line sends what
            # elasticsearch-py 8 sends (the versioned media type), which must pass through as is.
            media = "application/vnd.elasticsearch+json; compatible-with=8"
            headers = {"accept": media, "content-type": media}
            put = httpx.put(f"{running.url}/second-line/_doc/new?refresh=true", json={"title": "t", "body": "x"},
                            headers=headers, timeout=30)
            assert put.status_code == 201, put.text
            reply = httpx.post(f"{running.url}/second-line/_search", json=body, headers=headers, timeout=30)
            assert reply.headers["content-type"].startswith("application/vnd.elasticsearch+json")
            mine = reply.json()
        else:
            client = official_client(info.kind, running.url)
            client.index(index="second-line", id="new", body={"title": "t", "body": "x"}, refresh=True)
            mine = client.search(index="second-line", body=dict(body))
            mine = getattr(mine, "body", mine)
            client.close()
    direct = httpx.post(f"{info.url}/second-line/_search", json=body, timeout=30).json()
    engine_ids = [h["_id"] for h in direct["hits"]["hits"]]
    assert [h["_id"] for h in mine["hits"]["hits"]] == expected_order("jet engine noise", engine_ids)
    assert httpx.get(f"{info.url}/second-line/_doc/new", timeout=30).json()["found"] is True
