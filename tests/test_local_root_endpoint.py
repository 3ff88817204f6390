"""The local Elasticsearch answers `GET /` like a full distribution (the root endpoint plugin).

The integ-test zip has no root endpoint of its own, and clients call it first (`info()`), so
Haystack, LangChain and LlamaIndex fail at start-up without it. The values must be the node's
own, so they are compared with what other endpoints of the same node say.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import elasticsearch
import httpx
import pytest

from rerank_proxy.local_engines import root_endpoint, runner
from rerank_proxy.local_engines.distributions import (
    DEFAULT_VERSIONS,
    ELASTICSEARCH,
    OPENSEARCH,
    SECOND_LINE_VERSIONS,
    distribution,
    unpack,
)
from rerank_proxy.local_engines.runner import EngineInfo, ensure_engine, stop_engine

pytestmark = pytest.mark.engine  # starts an 8.x engine of its own (ensure_engine), besides the session one

SECOND_LINE_PORT = 19212  # not test_engines.py's 19210: both may run at once
VERSIONS = [DEFAULT_VERSIONS[ELASTICSEARCH], SECOND_LINE_VERSIONS[ELASTICSEARCH]]
# What elasticsearch-py 8 sends; 9.x and 8.x servers both accept it.
COMPAT_8 = {"accept": "application/vnd.elasticsearch+json; compatible-with=8"}


def _assert_describes(info: EngineInfo) -> dict[str, Any]:
    """GET / carries the node's real identity and build, as other endpoints of the node report them."""
    response = httpx.get(f"{info.url}/", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    root = response.json()
    state = httpx.get(f"{info.url}/_cluster/state/metadata", timeout=30).json()
    nodes = httpx.get(f"{info.url}/_nodes/_local", timeout=30).json()
    (node,) = nodes["nodes"].values()
    assert root["name"] == node["name"] == "node-0"
    assert root["cluster_name"] == state["cluster_name"] == info.cluster_name
    assert root["cluster_uuid"] == state["metadata"]["cluster_uuid"] != "_na_"
    version = root["version"]
    assert version["number"] == info.version == node["version"]
    assert version["build_hash"] == node["build_hash"]
    assert version["build_flavor"] == "default"
    assert version["build_type"] == "zip"
    assert version["build_snapshot"] is False
    assert version["build_date"].startswith("20")
    lucene_major = {"9": "10", "8": "9"}[info.version.split(".")[0]]
    assert version["lucene_version"].split(".")[0] == lucene_major
    wire, index = version["minimum_wire_compatibility_version"], version["minimum_index_compatibility_version"]
    assert _parsed(index) < _parsed(wire) < _parsed(info.version)
    assert root["tagline"] == "You Know, for Search"
    return root


def _parsed(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _assert_head(info: EngineInfo) -> None:
    full = httpx.get(f"{info.url}/", timeout=30)
    head = httpx.head(f"{info.url}/", timeout=30)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(full.content))


def test_root_endpoint_describes_the_node(es_engine: EngineInfo) -> None:
    _assert_describes(es_engine)


def test_head_root(es_engine: EngineInfo) -> None:
    _assert_head(es_engine)


def test_official_client_info(es_engine: EngineInfo) -> None:
    """What every framework on Elasticsearch does first: the client's info() call."""
    client = elasticsearch.Elasticsearch(es_engine.url, request_timeout=30)
    try:
        info = client.info()
        assert info["version"]["number"] == es_engine.version
        assert info["cluster_uuid"] == _assert_describes(es_engine)["cluster_uuid"]
        assert client.ping() is True  # HEAD /
    finally:
        client.close()


@pytest.mark.slow  # an 8.x engine of its own starts and stops: ~25 s
def test_second_line_serves_the_root_endpoint() -> None:
    version = SECOND_LINE_VERSIONS[ELASTICSEARCH]
    info = ensure_engine(ELASTICSEARCH, version=version, port=SECOND_LINE_PORT, timeout_s=300)
    try:
        _assert_describes(info)
        _assert_head(info)
        compat = httpx.get(f"{info.url}/", headers=COMPAT_8, timeout=30)
        assert compat.status_code == 200
        assert compat.json()["version"]["number"] == version
        if elasticsearch.__version__[0] == 8:  # elasticsearch-py 9 only speaks to 9.x servers
            client = elasticsearch.Elasticsearch(info.url, request_timeout=30)
            assert client.info()["version"]["number"] == version
            client.close()
    finally:
        stop_engine(port=SECOND_LINE_PORT)


@pytest.mark.parametrize("version", VERSIONS)
def test_plugin_builds_against_the_distribution(version: str, tmp_path: Path) -> None:
    """Each line gets the getRestHandlers override its ActionPlugin declares, and a matching descriptor."""
    dist = distribution(ELASTICSEARCH, version)
    home = unpack(dist, say=lambda _: None)
    said: list[str] = []
    root_endpoint.build(dist, home, tmp_path / "plugin", said.append)
    assert said == [f"building the root endpoint for {dist.name}"]
    entry = "RootEndpointPluginServices" if dist.major >= 9 else "RootEndpointPluginArgs"
    with zipfile.ZipFile(tmp_path / "plugin" / f"{root_endpoint.PLUGIN_NAME}.jar") as jar:
        names = set(jar.namelist())
    assert f"rerankproxy/rootendpoint/{entry}.class" in names
    assert "rerankproxy/rootendpoint/RootEndpointPlugin$RootAction.class" in names
    descriptor = dict(
        line.split("=", 1) for line in (tmp_path / "plugin" / "plugin-descriptor.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert descriptor["elasticsearch.version"] == version
    assert descriptor["java.version"] == str(dist.java_range[0])
    assert descriptor["classname"] == f"rerankproxy.rootendpoint.{entry}"


@pytest.mark.parametrize("version", VERSIONS)
def test_unpack_installs_once(version: str) -> None:
    """A second unpack finds the plugin up to date and builds nothing."""
    dist = distribution(ELASTICSEARCH, version)
    home = unpack(dist, say=lambda _: None)
    assert root_endpoint.is_installed(dist, home)
    said: list[str] = []
    unpack(dist, say=said.append)
    assert said == []


def test_reuse_check_wants_the_root_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A running Elasticsearch that answers GET / with 405 (started before the plugin) is not reused;
    OpenSearch serves its own root endpoint and is not asked."""
    asked: list[str] = []

    def fake_get(url: str, **_: Any) -> httpx.Response:
        asked.append(url)
        return httpx.Response(405)

    monkeypatch.setattr(httpx, "get", fake_get)
    es = _engine_info(ELASTICSEARCH, 19299)
    assert "405" in (runner._lacks_root_endpoint(es) or "")
    assert asked == ["http://127.0.0.1:19299/"]
    assert runner._lacks_root_endpoint(_engine_info(OPENSEARCH, 19298)) is None
    assert len(asked) == 1


def _engine_info(kind: str, port: int) -> EngineInfo:
    return EngineInfo(kind=kind, version=DEFAULT_VERSIONS[kind], port=port, nodes=1, pids=[None], start_times=[0],
                      heap="512m", java_home="", home="", run_dir="")
