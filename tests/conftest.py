"""The fixture plugins, and the marks that say what a test needs beyond this Python environment.

    engine    real Elasticsearch/OpenSearch: the session engines (tests/fixtures/engines.py) or
              engines the test starts itself (3-node cluster, second-line versions)
    deploy    deployment tooling: helm, kubectl, docker-compose, hadolint, promtool, prometheus, ...
              (tests/fixtures/tools.py)
    browser   headless Chromium driven by playwright-core on Node.js (tests/test_console_browser.py)
    clients   official clients built outside this venv: Node.js, Java, elasticsearch-py 8 in its own
              venv (tests/test_other_clients.py)
    slow      runs for more than about 20 s on the 2-core CI machine

`engine`, `deploy`, `browser` and `clients` are derived from the fixtures a test uses (NEEDS), so
they follow the code: a test that asks for an engine, a tool or a client build is marked, wherever
it asks (directly or through another fixture). The two modules that start engines of their own
mark themselves `engine`, and a module that can start engines without that mark is refused at
collection. `slow` is set by hand. `integration` (registered in pyproject.toml) is kept as the
older name of `engine`.

Only what needs none of these: `pytest -m "not engine and not deploy and not browser and not clients"`.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from rerank_proxy.local_engines import runner

pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.proxy", "tests.fixtures.redis",
                  "tests.fixtures.redis_cluster", "tests.fixtures.tools"]

MARKERS = {
    "engine": "needs real Elasticsearch/OpenSearch (session engines, or engines the test starts)",
    "deploy": "needs deployment tooling (helm, kubectl, docker-compose, hadolint, promtool, prometheus)",
    "browser": "needs headless Chromium with playwright-core on Node.js",
    "clients": "needs official clients built outside this venv (Node.js, Java, elasticsearch-py 8)",
    "slow": "runs for more than about 20 s",
}

# fixture -> the mark every test using it gets (and ENGINE_FIXTURES of tests/fixtures/engines.py -> engine)
NEEDS: dict[str, str] = {
    "deploy_tools": "deploy",
    "browser_tooling": "browser",
    "client_builds": "clients",
}

# What a test module holds when it starts engines itself rather than through an engine fixture.
_STARTS_ENGINES = (runner.ensure_engine, runner.start_node)


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def _starts_engines(module: ModuleType, seen: dict[str, bool]) -> bool:
    if module.__name__ not in seen:
        seen[module.__name__] = any(value is start for value in vars(module).values() for start in _STARTS_ENGINES)
    return seen[module.__name__]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the marks are in place before `-m` deselects.
    # Imported here, once pytest_plugins has loaded (and assert-rewritten) the plugin.
    from tests.fixtures.engines import ENGINE_FIXTURES

    needs = {**dict.fromkeys(ENGINE_FIXTURES, "engine"), **NEEDS}
    seen: dict[str, bool] = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        for mark in sorted({needs[name] for name in names if name in needs}):
            item.add_marker(mark)
        module = getattr(item, "module", None)
        if module is not None and _starts_engines(module, seen) and item.get_closest_marker("engine") is None:
            raise pytest.UsageError(f"{item.nodeid}: its module can start engines (ensure_engine, start_node) "
                                    f"but is not marked: add `pytestmark = pytest.mark.engine`")
        if item.get_closest_marker("engine") is not None:
            item.add_marker(pytest.mark.integration)
