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
from dataclasses import dataclass
from pathlib import Path

import pytest

from rerank_proxy.console.judgments import query_id
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker
from tests.test_console import (
    QUERY,
    TOKEN,
    WINDOW,
    expected_columns,
    linear_ndcg,
    load_console_corpus,
    stored,
    with_judgments_file,
)
from tests.test_console_template import CLAUSE, expected

BROWSER_DIR = Path(__file__).parent / "browser"
INSTALL_HINT = ("install the browser test tooling: apt-get install -y chromium fonts-dejavu-core "
                "(and Node.js 20+ with npm), then: cd tests/browser && npm ci")
NODE_TIMEOUT_S = 300


@dataclass(frozen=True)
class BrowserTooling:
    node: str
    chromium: str


@pytest.fixture(scope="session")
def browser_tooling() -> BrowserTooling:
    """Node.js and Chromium (with playwright-core installed), or a failure naming what is missing and
    how to install it. Asking for it marks the test `browser` (tests/conftest.py)."""
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
    assert node is not None
    return BrowserTooling(node, chromium)


def _beir_folder(url: str, index: str, folder: Path) -> dict[str, object]:
    """A BEIR folder with graded qrels for two queries, and the mean nDCG@10 the page must show for it."""
    queries = {"b1": QUERY, "b2": "helicopter rotor noise"}
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    lines = ["query-id\tcorpus-id\tscore"]
    scores: dict[str, list[float]] = {"lexical": [], "reranked": []}
    for qid, text in queries.items():
        lexical, reranked = expected_columns(url, index, text, WINDOW)
        grades = dict(zip(list(dict.fromkeys(reranked[:3] + lexical[:3]))[:4], [1, 3, 0, 2], strict=False))
        lines += [f"{qid}\t{doc}\t{grade}" for doc, grade in grades.items()]
        scores["lexical"].append(linear_ndcg(lexical, grades))
        scores["reranked"].append(linear_ndcg(reranked, grades))
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    mean = {side: f"{sum(values) / len(values):.3f}" for side, values in scores.items()}
    return {"path": str(folder), "queries": len(queries), **mean}


def test_console_in_headless_chromium(browser_tooling, es_engine, index_name, tmp_path, monkeypatch):
    load_console_corpus(es_engine.url, index_name)
    lexical, reranked = expected_columns(es_engine.url, index_name, QUERY, WINDOW)
    moved = "the corpus must move a hit from beyond the lexical top 10 into the reranked top 10"
    assert len(lexical) > 10, moved
    assert any(lexical.index(d) >= 10 for d in reranked[:10]), moved

    judgments = tmp_path / "judgments.sqlite3"
    settings = with_judgments_file(proxy_settings(es_engine.url, ADMIN_TOKEN=TOKEN), judgments, monkeypatch)
    screenshot = Path(os.environ.get("CONSOLE_SCREENSHOT") or tmp_path / "console.png").resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    template_lexical, template_reranked = expected(es_engine.url, index_name, CLAUSE, QUERY)
    case = {"index": index_name, "query": QUERY, "window": WINDOW, "lexical": lexical, "reranked": reranked,
            "batch": [QUERY, "wing flutter", "helicopter rotor noise"],
            "beir": _beir_folder(es_engine.url, index_name, tmp_path / "beir"),
            "template": {"dsl": json.dumps(CLAUSE, indent=1), "lexical": template_lexical,
                         "reranked": template_reranked}}
    with run_proxy(settings, reranker=OverlapReranker()) as proxy:
        env = {**os.environ, "CONSOLE_BASE": proxy.url, "CONSOLE_TOKEN": TOKEN, "CONSOLE_CASE": json.dumps(case),
               "CHROMIUM": browser_tooling.chromium, "SCREENSHOT": str(screenshot)}
        if os.environ.get("CONSOLE_SCREENSHOT_BATCH"):
            env["SCREENSHOT_BATCH"] = str(Path(os.environ["CONSOLE_SCREENSHOT_BATCH"]).resolve())
        run = subprocess.run([browser_tooling.node, "--test", "--test-reporter=spec", "console.test.mjs"],
                             cwd=BROWSER_DIR, env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "# fail 0" in report or "fail 0" in report, report

    db = stored(judgments)
    [entry] = db.queries()
    assert entry.id == query_id(index_name, QUERY)
    assert entry.index == index_name
    assert entry.text == QUERY
    assert sorted(entry.docs.values()) == [0, 2, 3], "the grades given on the page were kept"
    assert db.query_set("browser-smoke") == case["batch"]
    assert screenshot.stat().st_size > 10_000
