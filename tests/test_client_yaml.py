"""Elastic's client YAML tests give the same pass/fail list direct and through the proxy (issue 25).

The suite is Elastic's `elasticsearch-clients-tests` (Apache-2.0), kept read-only in
`../shared/conformance/elasticsearch-clients-tests/`; the runner is this repo's own (tests/client_yaml/),
driving elasticsearch-py's client methods. The subset the local integ-test engine runs is chosen in
tests/client_yaml/subset.py (x-pack plugin folders the build lacks are left out, with the reason).

The subset runs once directly against the engine, then through a real proxy in front of it:
(a) on the shipped defaults (the built-in local model, a fresh LOCAL_VECTOR_STORE, UPSTREAM_URLS),
(b) with RERANK_PROVIDER=cohere pointed at a loopback Cohere Rerank v2 server.
Each proxy run must give every test the same outcome (pass, fail or skip) as the direct run, and no test
through the proxy may meet a connection error (the client never retries: max_retries=0, so a dropped
connection is seen, not papered over) or open more connections than it does directly: the client sends
each request body a moment after its head (tests/client_yaml/transport.py), as over a network, so
answers the engine gives from the head alone ("no handler found", a wrong method) come back before
the body, and a proxy that closes the client's connection then is seen even where urllib3 quietly
connects again. The engine is shared with other tests, so a divergence counts
only if it repeats when its file is run again, direct and through the same proxy.

A known divergence (a proxy bug being fixed elsewhere) goes in KNOWN_PROXY_DIVERGENCES with its reason;
the test then tolerates it, and says so when it no longer diverges.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from elasticsearch import Elasticsearch

from rerank_proxy.config import load_settings
from rerank_proxy.local_engines.runner import EngineInfo
from tests.client_yaml.cohere_server import CohereServer
from tests.client_yaml.loader import YamlFile
from tests.client_yaml.runner import Cleaner, Outcome, YamlRunner
from tests.client_yaml.subset import SUITE_ROOT, select
from tests.client_yaml.transport import DelayedBodyNode
from tests.fixtures.proxy import run_proxy

# test id ("folder/file.yml::test name") -> why it diverges through the proxy today. Remove an entry
# once the proxy is fixed.
KNOWN_PROXY_DIVERGENCES: dict[str, str] = {}

# An index of the runner's own, present during every run: tests such as cat/shards.yml and
# indices/stats.yml "Index - blank" read the whole cluster and pass only if some shard exists, which
# on a shared engine would otherwise depend on what other tests happen to have created.
ANCHOR_INDEX = "client-yaml-anchor"
REQUEST_TIMEOUT_S = 30.0
MIN_DIRECT_PASSES = 60    # the subset passes about 90 tests directly; far fewer means a broken set-up

pytestmark = pytest.mark.skipif(not SUITE_ROOT.is_dir(), reason=f"the client YAML suite is not at {SUITE_ROOT}")


def say(line: str) -> None:
    print(line, flush=True)


def client_for(url: str) -> Elasticsearch:
    return Elasticsearch(url, request_timeout=REQUEST_TIMEOUT_S, max_retries=0, retry_on_timeout=False,
                         node_class=DelayedBodyNode)


def run_subset(url: str, engine_url: str, files: list[YamlFile], label: str) -> dict[str, Outcome]:
    client = client_for(url)
    cleaner = Cleaner(engine_url)
    started = time.monotonic()
    results: dict[str, Outcome] = {}
    try:
        runner = YamlRunner(client, cleaner)
        for number, file in enumerate(files, 1):
            outcomes = runner.run_file(file)
            results.update((o.test_id, o) for o in outcomes)
            marks = "".join(("." if o.status == "pass" else "s" if o.status == "skip" else
                             "C" if o.connection_error else "F") + "+" * o.connects for o in outcomes)
            say(f"[{label} {number}/{len(files)}] {file.relpath} {marks}")
    finally:
        cleaner.close()
        client.close()
    passed = sum(o.status == "pass" for o in results.values())
    failed = sum(o.status == "fail" for o in results.values())
    say(f"[{label}] {len(results)} tests in {len(files)} files: {passed} pass, {failed} fail, "
        f"{len(results) - passed - failed} skip, {time.monotonic() - started:.1f} s")
    return results


def diverges(direct: Outcome | None, proxied: Outcome | None) -> bool:
    """A different outcome, a connection error through the proxy, or a connection the proxy closed."""
    if direct is None or proxied is None:
        return True
    return (direct.status != proxied.status or proxied.connection_error
            or proxied.connects > max(direct.connects, 0))


def differences(direct: dict[str, Outcome], proxied: dict[str, Outcome]) -> list[str]:
    return sorted(t for t in direct.keys() | proxied.keys() if diverges(direct.get(t), proxied.get(t)))


def describe(test_id: str, direct: Outcome | None, proxied: Outcome | None) -> str:
    lines = [f"{test_id}",
             f"  direct: {direct.line() if direct else 'not run'}",
             f"  proxy:  {proxied.line() if proxied else 'not run'}"]
    if direct is not None and proxied is not None and proxied.connects > direct.connects:
        lines.append(f"  the client opened {proxied.connects} connections through the proxy, {direct.connects} "
                     "directly: the proxy closed a connection the engine keeps")
    if proxied is not None:
        lines += ["  proxy trace:"] + [f"    {line[:400]}" for line in proxied.trace]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def subset() -> list[YamlFile]:
    files = select()
    assert files, f"no suite files selected under {SUITE_ROOT}"
    return files


@pytest.fixture(scope="module")
def anchored_engine(es_engine: EngineInfo) -> Iterator[EngineInfo]:
    with httpx.Client(base_url=es_engine.url, timeout=30.0) as http:
        http.delete(f"/{ANCHOR_INDEX}")
        created = http.put(f"/{ANCHOR_INDEX}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
        assert created.status_code == 200, created.text
        http.get("/_cluster/health", params={"index": ANCHOR_INDEX, "wait_for_status": "green", "timeout": "30s"})
        try:
            yield es_engine
        finally:
            http.delete(f"/{ANCHOR_INDEX}")


@pytest.fixture(scope="module")
def direct_results(anchored_engine: EngineInfo, subset: list[YamlFile]) -> dict[str, Outcome]:
    results = run_subset(anchored_engine.url, anchored_engine.url, subset, "direct")
    passed = sum(o.status == "pass" for o in results.values())
    assert passed >= MIN_DIRECT_PASSES, f"only {passed} tests pass directly: is the engine healthy?"
    assert not any(o.connection_error for o in results.values()), [
        o.line() for o in results.values() if o.connection_error]
    return results


def compare(label: str, proxy_url: str, engine_url: str, subset: list[YamlFile],
            direct: dict[str, Outcome]) -> None:
    proxied = run_subset(proxy_url, engine_url, subset, label)
    diverging = differences(direct, proxied)
    if diverging:
        # The engine is shared: run each diverging file again, direct and through the proxy.
        say(f"[{label}] {len(diverging)} diverging; running their files again to confirm")
        again = [f for f in subset if any(t.startswith(f"{f.relpath}::") for t in diverging)]
        direct_again = run_subset(engine_url, engine_url, again, f"{label} recheck direct")
        proxied_again = run_subset(proxy_url, engine_url, again, f"{label} recheck proxy")
        confirmed = set(differences(direct_again, proxied_again))
        flaky = [t for t in diverging if t not in confirmed]
        if flaky:
            say(f"[{label}] did not repeat (the shared engine's state, not the proxy): {flaky}")
        diverging = [t for t in diverging if t in confirmed]
        direct = {**direct, **direct_again}
        proxied = {**proxied, **proxied_again}
    known = {t for t in diverging if t in KNOWN_PROXY_DIVERGENCES}
    for test_id in sorted(KNOWN_PROXY_DIVERGENCES.keys() - known):
        say(f"[{label}] {test_id} is listed in KNOWN_PROXY_DIVERGENCES but no longer diverges: remove it")
    for test_id in sorted(known):
        say(f"[{label}] known divergence {test_id}: {KNOWN_PROXY_DIVERGENCES[test_id]}")
    unexpected = [t for t in diverging if t not in known]
    reports = "\n\n".join(describe(t, direct.get(t), proxied.get(t)) for t in unexpected)
    assert not unexpected, (f"{len(unexpected)} tests differ through the proxy ({label}), met a connection "
                            f"error or had a connection closed:\n\n{reports}")
    connection = [o.line() for t, o in proxied.items() if o.connection_error and t not in known]
    assert not connection, connection


@pytest.mark.slow  # the subset runs direct and through the proxy: ~30 s
def test_client_yaml_suite_through_the_proxy_on_defaults(anchored_engine: EngineInfo, subset: list[YamlFile],
                                                         direct_results: dict[str, Outcome], tmp_path: Path):
    settings = load_settings({"UPSTREAM_URLS": anchored_engine.url,
                              "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    assert settings.rerank_provider == "local"            # the shipped default: the built-in model
    with run_proxy(settings) as proxy:
        compare("defaults", proxy.url, anchored_engine.url, subset, direct_results)


@pytest.mark.slow  # the subset runs through the proxy again: ~20 s
def test_client_yaml_suite_through_the_proxy_with_a_cohere_provider(
        anchored_engine: EngineInfo, subset: list[YamlFile], direct_results: dict[str, Outcome], tmp_path: Path):
    with CohereServer() as cohere:
        settings = load_settings({"UPSTREAM_URLS": anchored_engine.url, "RERANK_PROVIDER": "cohere",
                                  "RERANK_BASE_URL": cohere.url, "RERANK_API_KEY": "loopback-key",
                                  "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
        with run_proxy(settings) as proxy:
            compare("cohere", proxy.url, anchored_engine.url, subset, direct_results)
        say(f"[cohere] the loopback provider reranked {cohere.documents} documents in {cohere.calls} calls")
        assert cohere.calls > 0, "no search through the proxy reached the Cohere provider"


def test_runner_reads_the_whole_subset(subset: list[YamlFile]):
    """Every step of the subset is one the runner knows (a typo in the runner would otherwise only show
    up as the same failure direct and through the proxy)."""
    from tests.client_yaml.executor import api_method, split_do
    from tests.client_yaml.matchers import ASSERTIONS

    client = client_for("http://127.0.0.1:9")
    known = set(ASSERTIONS) | {"do", "set", "skip", "requires"}
    unknown: list[str] = []
    for file in subset:
        for steps in [file.setup, file.teardown, *(t.steps for t in file.tests)]:
            for step in steps:
                ((kind, arg),) = step.items()
                if kind not in known:
                    unknown.append(f"{file.relpath}: step {kind}")
                elif kind == "do":
                    api, _, _ = split_do(arg)
                    api_method(client, api)
    assert not unknown, json.dumps(unknown, indent=1)
    assert sum(len(f.tests) for f in subset) >= 100
