"""The proxy driven by the official Node.js and Java clients of both engines, and by elasticsearch-py 8.x.

Each client runs one scenario (create index, bulk the corpus, refresh, search, a wider search,
msearch, get, update, get, delete, count) as one process, once through the proxy and once straight
against the engine, and prints its results as JSON (see tests/clients/*/). The two runs must agree
except where the proxy is meant to differ: search hits come back reranked (the same candidates, in
the order the overlap reranker gives), with new scores and an X-Rerank header.

The clients are built once per session, lazily and only for the selected tests: `npm ci` in
tests/clients/node, `mvn -q -B package` in tests/clients/java, a venv with elasticsearch-py 8.x in
tests/clients/py8/.venv. Each is skipped when its output is newer than its inputs. A missing
toolchain fails the tests that need it, with how to install it; it never skips them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support_data import CORPUS, expected_order

CLIENTS_DIR = Path(__file__).parent / "clients"
NODE_DIR = CLIENTS_DIR / "node"
JAVA_DIR = CLIENTS_DIR / "java"
PY8_DIR = CLIENTS_DIR / "py8"
JAVA_JAR = JAVA_DIR / "target" / "client-scenario.jar"
PY8_PYTHON = PY8_DIR / ".venv" / "bin" / "python"

QUERY_TEXT = "jet engine noise"
WRITE_STEPS = ["create", "bulk", "refresh", "get", "update", "get_updated", "delete", "count"]
ALL_STEPS = ["create", "bulk", "refresh", "search", "search_window", "msearch", "get", "update",
             "get_updated", "delete", "count"]
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 180
MIN_NODE_MAJOR = 20  # @elastic/elasticsearch 9.4 needs Node 20


class BuildError(Exception):
    """A client could not be built; the message says why and how to fix it."""


def _run_build(cmd: list[str], cwd: Path, what: str, hint: str = "", env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: `{' '.join(cmd)}` in {cwd} took over {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-6000:]
        raise BuildError(f"{what}: `{' '.join(cmd)}` in {cwd} exited {done.returncode}.{hint}\n{output}")


def _newest_mtime(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _require_tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"`{name}` is not on PATH; these tests need it. Install it: {install}")
    return path


def build_node() -> list[str]:
    """`npm ci` unless node_modules is newer than the lock file; the command prefix to run the scenario."""
    node = _require_tool("node", f"Node.js {MIN_NODE_MAJOR}+ with npm, e.g. `apt-get install nodejs npm` "
                                 "(Debian) or a build from nodejs.org")
    npm = _require_tool("npm", "npm, e.g. `apt-get install npm`")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    found = re.match(r"v(\d+)\.", version)
    if not found or int(found.group(1)) < MIN_NODE_MAJOR:
        raise BuildError(f"Node.js {version or '(unknown version)'} is too old: the clients need "
                         f"Node {MIN_NODE_MAJOR}+ (install a newer nodejs)")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    inputs = [NODE_DIR / "package.json", NODE_DIR / "package-lock.json"]
    if not marker.exists() or marker.stat().st_mtime < _newest_mtime(inputs):
        _run_build([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], NODE_DIR, "npm ci",
                   " Is the npm registry reachable?")
    return [node, str(NODE_DIR / "scenario.mjs")]


def _jar_is_fresh() -> bool:
    if not JAVA_JAR.exists():
        return False
    sources = [JAVA_DIR / "pom.xml", *JAVA_DIR.joinpath("src").rglob("*")]
    if JAVA_JAR.stat().st_mtime < _newest_mtime(sources):
        return False
    with zipfile.ZipFile(JAVA_JAR) as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode().replace("\r\n", "\n")
    class_path = re.search(r"^Class-Path: (.*(?:\n .*)*)", manifest, re.MULTILINE)
    entries = class_path.group(1).replace("\n ", "").split() if class_path else []
    return bool(entries) and all((JAVA_JAR.parent / entry).exists() for entry in entries)


def build_java() -> list[str]:
    """`mvn -q -B package` unless the jar is newer than pom.xml and the sources."""
    java = _require_tool("java", "a JDK 17+, e.g. `apt-get install openjdk-17-jdk-headless`")
    mvn = _require_tool("mvn", "Maven 3.8+, e.g. `apt-get install maven`")
    if not _jar_is_fresh():
        _run_build([mvn, "-q", "-B", "-f", str(JAVA_DIR / "pom.xml"), "package"], JAVA_DIR, "mvn package",
                   " Is Maven Central reachable? (artifacts are cached in ~/.m2)")
        if not JAVA_JAR.exists():
            raise BuildError(f"mvn package did not produce {JAVA_JAR}")
    # C1 only and the serial GC: a short run on 2 busy cores spends less CPU warming up.
    return [java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-jar", str(JAVA_JAR)]


def build_py8() -> list[str]:
    """A venv with elasticsearch-py 8.x (the project's venv has 9.x), made again when requirements change."""
    requirements = (PY8_DIR / "requirements.txt").read_text()
    marker = PY8_DIR / ".venv" / "installed-requirements.txt"
    if not (PY8_PYTHON.exists() and marker.exists() and marker.read_text() == requirements):
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run_build([base, "-m", "venv", "--clear", str(PY8_DIR / ".venv")], PY8_DIR, "python -m venv",
                   " On Debian the venv module is in `apt-get install python3-venv`.")
        _run_build([str(PY8_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "-r", str(PY8_DIR / "requirements.txt")], PY8_DIR, "pip install elasticsearch 8.x",
                   " Is PyPI reachable?")
        marker.write_text(requirements)
    return [str(PY8_PYTHON), str(PY8_DIR / "scenario.py")]


BUILDERS: dict[str, Callable[[], list[str]]] = {"node": build_node, "java": build_java, "py8": build_py8}


class ClientBuilds:
    """The builds the selected tests need, started together on first use, each waited for alone."""

    def __init__(self, needed: set[str]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="client-build")
        self._futures: dict[str, Future[list[str]]] = {}
        for name in sorted(needed):
            self._futures[name] = self._pool.submit(BUILDERS[name])

    def command(self, name: str) -> list[str]:
        if name not in self._futures:
            self._futures[name] = self._pool.submit(BUILDERS[name])
        error = self._futures[name].exception()
        if isinstance(error, BuildError):  # failed outside the `except`, so no chained traceback
            pytest.fail(f"could not build the {name} client scenario: {error}", pytrace=False)
        return self._futures[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _client_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "client" in callspec.params:
        return callspec.params["client"]
    return "py8" if item.name.startswith("test_elasticsearch_py8") else None


@pytest.fixture(scope="session")
def client_builds(request: pytest.FixtureRequest):
    needed = {c for item in request.session.items if item.path == Path(__file__) and (c := _client_of(item))}
    builds = ClientBuilds(needed)
    yield builds
    builds.close()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clients") / "corpus.json"
    path.write_text(json.dumps([{"_id": str(i), "_source": doc} for i, doc in enumerate(CORPUS)]))
    return path


# --- running the scenario --------------------------------------------------------------------------

def _start(command: list[str], kind: str, url: str, index: str, corpus: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    return subprocess.Popen([*command, "--kind", kind, "--url", url, "--index", index, "--corpus", str(corpus)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env)


def _finish(process: subprocess.Popen[str], where: str) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the scenario {where} took over {RUN_TIMEOUT_S} s\nstderr:\n{err[-4000:]}", pytrace=False)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        pytest.fail(f"the scenario {where} exited {process.returncode}\nstdout:\n{out[-4000:]}\n"
                    f"stderr:\n{err[-4000:]}", pytrace=False)
    return json.loads(lines[-1])


def run_both(command: list[str], kind: str, proxy_url: str, engine_url: str, index_name: str,
             corpus: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario through the proxy (index `<name>-p`) and direct (`<name>-d`), side by side."""
    via = _start(command, kind, proxy_url, f"{index_name}-p", corpus)
    direct = _start(command, kind, engine_url, f"{index_name}-d", corpus)
    try:
        return _finish(via, "through the proxy"), _finish(direct, "against the engine")
    finally:
        for process in (via, direct):
            if process.poll() is None:
                process.kill()
                process.wait()


def _drop_indices(engine_url: str, index_name: str) -> None:
    with httpx.Client(base_url=engine_url, timeout=30) as client:
        for suffix in ("-p", "-d"):
            client.delete(f"/{index_name}{suffix}", params={"ignore_unavailable": "true"})


# --- what must hold --------------------------------------------------------------------------------

def check_runs(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    label = mine.get("client", "?")
    for name, run in (("through the proxy", mine), ("against the engine", theirs)):
        steps = run["steps"]
        assert list(steps) == ALL_STEPS, f"{label} {name}: steps {list(steps)}"
        failed = {step: out for step, out in steps.items() if not out["ok"]}
        assert not failed, f"{label} {name}: failed steps {json.dumps(failed)}"
    mine_steps, their_steps = mine["steps"], theirs["steps"]

    # Everything but searches passes through unchanged, with no X-Rerank header.
    for step in WRITE_STEPS:
        assert mine_steps[step] == their_steps[step], f"{label}: step {step} differs"
    assert their_steps["count"]["count"] == len(CORPUS) - 1
    assert their_steps["get_updated"]["source"]["title"] == "Jet mixing, revised"

    # Direct: the engine's order; its wide search gives every candidate, in that order.
    candidates = their_steps["search_window"]["ids"]
    assert 5 < len(candidates) < len(CORPUS)
    assert their_steps["search"]["ids"] == candidates[:5]
    assert their_steps["search"]["scores"] == sorted(their_steps["search"]["scores"], reverse=True)
    reranked = expected_order(QUERY_TEXT, candidates)
    assert reranked != candidates, "the corpus no longer tells the reranked order from the engine's"

    # Through the proxy: the same candidates, reranked, with the engine's sources and totals.
    assert mine_steps["search"]["ids"] == reranked[:5], label
    assert mine_steps["search_window"]["ids"] == reranked, label
    for step in ("search", "search_window"):
        got, engine = mine_steps[step], their_steps["search_window"]
        assert got["sources"] == {i: engine["sources"][i] for i in got["ids"]}, f"{label}: {step} sources"
        assert got["total"] == engine["total"]
        assert got["scores"] == sorted(got["scores"], reverse=True)
        assert got["max_score"] == max(got["scores"])

    mine_ms, their_ms = mine_steps["msearch"]["responses"], their_steps["msearch"]["responses"]
    assert len(mine_ms) == len(their_ms) == 2
    assert their_ms[0]["ids"] == candidates[:5]
    assert mine_ms[0]["ids"] == reranked[:5], f"{label}: msearch sub-search 1"
    assert mine_ms[0]["sources"] == {i: their_steps["search_window"]["sources"][i] for i in mine_ms[0]["ids"]}
    assert mine_ms[0]["status"] == their_ms[0]["status"] == 200
    assert mine_ms[1] == their_ms[1], f"{label}: msearch sub-search 2 (match_all) differs"

    # The X-Rerank header, where the client lets us see headers. The proxy's cache starts empty: the
    # first search has every candidate scored (the window holds them all), so the wider search
    # and the msearch's first sub-search find them cached.
    assert mine["headers_exposed"] == theirs["headers_exposed"]
    if mine["headers_exposed"]:
        assert mine_steps["search"]["rerank"] == "reranked", f"{label}: search X-Rerank"
        assert mine_steps["search_window"]["rerank"] == "cached", f"{label}: search_window X-Rerank"
        # The sorted outcomes of the sub-searches: the match_all one is not reranked.
        assert mine_steps["msearch"]["rerank"] == "bypass,cached", f"{label}: msearch X-Rerank"
        assert all(out["rerank"] is None for out in their_steps.values()), f"{label}: X-Rerank from the engine?"


def _scenario(client: str, client_builds: ClientBuilds, engine: Any, proxy: Any, index_name: str,
              corpus_file: Path) -> None:
    """`proxy` is the test's own (`fresh_proxy`): the X-Rerank outcomes checked depend on its cache."""
    command = client_builds.command(client)
    try:
        mine, theirs = run_both(command, engine.kind, proxy.url, engine.url, index_name, corpus_file)
        check_runs(mine, theirs)
    finally:
        _drop_indices(engine.url, index_name)


@pytest.mark.parametrize("client", ["node", "java"])
def test_official_client(client_builds, client, engine, fresh_proxy, index_name, corpus_file):
    _scenario(client, client_builds, engine, fresh_proxy, index_name, corpus_file)


@pytest.mark.parametrize("engine", ["elasticsearch"], indirect=True, ids=["es"])
def test_elasticsearch_py8(client_builds, engine, fresh_proxy, index_name, corpus_file):
    """elasticsearch-py 8.x sends `compatible-with=8` media types; Elasticsearch 9 and the proxy must accept them."""
    _scenario("py8", client_builds, engine, fresh_proxy, index_name, corpus_file)
