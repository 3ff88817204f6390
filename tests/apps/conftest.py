"""Fixtures of the framework tests: the corpus, a proxy of each test's own, the measurements' summary."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.apps.support import MEASURED, AppsProxy, K, Paper, capture_access, papers
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import RecordingReranker

# Haystack's usage telemetry (posthog) is read once at import, before the test modules import haystack.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")


@pytest.fixture(scope="session")
def corpus() -> list[Paper]:
    return papers()


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
