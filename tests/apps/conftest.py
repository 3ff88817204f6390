"""Fixtures of the framework tests: the apps venv, the corpus, a proxy of each test's own, the
scenario's run, the measurements' summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import apps_venv
from tests.apps.support import MEASURED, AppsProxy, K, Paper, capture_access, papers, run_scenario, write_corpus
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import RecordingReranker

RunCase = Callable[[str, AppsProxy, str], tuple[dict[str, Any], list[str]]]


@pytest.fixture(scope="session")
def apps_python() -> Path:
    """`.venv-apps`'s python, built (once a session, and only when missing or stale) for the selected
    framework tests; a failed build fails them with pip's output and how to fix it."""
    try:
        return apps_venv.ensure()
    except apps_venv.AppsVenvError as error:
        pytest.fail(f"could not build .venv-apps (the frameworks' venv): {error}", pytrace=False)


@pytest.fixture(scope="session")
def corpus() -> list[Paper]:
    return papers()


@pytest.fixture(scope="session")
def corpus_file(corpus: list[Paper], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(corpus, tmp_path_factory.mktemp("apps") / "corpus.jsonl")


@pytest.fixture
def run_case(apps_python: Path, es_engine, corpus_file: Path, corpus: list[Paper]) -> RunCase:
    """Run a framework case (tests/apps/scenario.py) against `proxy` and the session Elasticsearch,
    and check what every case shares: the whole corpus written, and (a) its one search through the
    proxy reranked, the reranker sent the window's K hits. Returns the scenario's JSON and those texts."""
    def run(case: str, proxy: AppsProxy, index: str) -> tuple[dict[str, Any], list[str]]:
        mark = proxy.mark()
        out = run_scenario(apps_python, case, proxy.url, es_engine.url, index, corpus_file)
        assert out["written"] == len(corpus)
        assert len(proxy.assert_reranked(index)) == 1
        texts = proxy.texts_since(mark)
        assert len(texts) == K
        return out, texts
    return run


@pytest.fixture
def apps_proxy(es_engine, caplog: pytest.LogCaptureFixture) -> Iterator[AppsProxy]:
    """A proxy in front of the session Elasticsearch whose window is the frameworks' top_k, with a
    recording reranker and an empty score cache (every search reaches the reranker)."""
    reranker = RecordingReranker()
    with run_proxy(proxy_settings(es_engine.url, RERANK_WINDOW=str(K)), reranker=reranker) as running:
        capture_access(caplog)
        yield AppsProxy(running.url, reranker, caplog)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the proxy's default hit text sent the reranker, per framework schema."""
    if MEASURED:
        terminalreporter.section("hit text sent to the reranker, per framework")
        for measured in MEASURED:
            terminalreporter.write_line(measured.summary())
