"""The relevance console in a real browser: headless Chromium, driven by playwright-core (Node).

The proxy runs here (in front of the real Elasticsearch of the test session, with the overlap
reranker), the browser test in `tests/browser/console.test.mjs` gets the expected columns computed
independently from the engine, and the run leaves a screenshot of the console.

Needs: Debian `chromium`, Node.js 20+, and `npm ci` in tests/browser. A missing piece fails the test
with the command that installs it; the browser check is part of the suite, not optional.
Set CONSOLE_SCREENSHOT=docs/console.png to refresh the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker
from tests.test_console import QUERY, TOKEN, WINDOW, expected_columns, load_console_corpus, with_judgments_file

BROWSER_DIR = Path(__file__).parent / "browser"
INSTALL_HINT = ("install the browser test tooling: apt-get install -y chromium fonts-dejavu-core "
                "(and Node.js 20+ with npm), then: cd tests/browser && npm ci")
NODE_TIMEOUT_S = 300


def _tooling() -> tuple[str, str]:
    """(node, chromium) paths, or a failure naming what is missing and how to install it."""
    node = shutil.which("node")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if node is None:
        missing.append("node")
    if not Path(chromium).is_file():
        missing.append(f"chromium ({chromium})")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core (tests/browser/node_modules)")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; {INSTALL_HINT}", pytrace=False)
    assert node is not None and chromium is not None
    return node, chromium


def test_console_in_headless_chromium(es_engine, index_name, tmp_path, monkeypatch):
    node, chromium = _tooling()
    load_console_corpus(es_engine.url, index_name)
    lexical, reranked = expected_columns(es_engine.url, index_name, QUERY, WINDOW)
    assert len(lexical) > 10 and any(lexical.index(d) >= 10 for d in reranked[:10]), \
        "the corpus must move a hit from beyond the lexical top 10 into the reranked top 10"

    judgments = tmp_path / "judgments.json"
    settings = with_judgments_file(proxy_settings(es_engine.url, ADMIN_TOKEN=TOKEN), judgments, monkeypatch)
    screenshot = Path(os.environ.get("CONSOLE_SCREENSHOT") or tmp_path / "console.png").resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    case = {"index": index_name, "query": QUERY, "window": WINDOW, "lexical": lexical, "reranked": reranked,
            "batch": [QUERY, "wing flutter", "helicopter rotor noise"]}
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        env = {**os.environ, "CONSOLE_BASE": proxy.url, "CONSOLE_TOKEN": TOKEN, "CONSOLE_CASE": json.dumps(case),
               "CHROMIUM": chromium, "SCREENSHOT": str(screenshot)}
        if os.environ.get("CONSOLE_SCREENSHOT_BATCH"):
            env["SCREENSHOT_BATCH"] = str(Path(os.environ["CONSOLE_SCREENSHOT_BATCH"]).resolve())
        run = subprocess.run([node, "--test", "--test-reporter=spec", "console.test.mjs"], cwd=BROWSER_DIR,
                             env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "# fail 0" in report or "fail 0" in report, report

    stored = json.loads(judgments.read_text())
    [entry] = stored["queries"].values()
    assert entry["index"] == index_name and entry["text"] == QUERY
    assert sorted(entry["docs"].values()) == [0, 1], "one relevant and one non-relevant judgment were kept"
    assert stored["sets"]["browser-smoke"] == case["batch"]
    assert screenshot.stat().st_size > 10_000
