"""The console's Experiment view in a real browser (headless Chromium, playwright-core on Node.js).

Seeded UBI indices on the real Elasticsearch of the test session hold an A/B, an interleaved and a
shadow part at once; `tests/browser/console_experiment.test.mjs` checks the view shows the numbers
worked out by hand below, draws the plot to scale, and shows the empty state from a second proxy
whose UBI queries index does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from rerank_proxy.experiments.query_log import MAPPING
from tests import test_console_browser
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker
from tests.test_console_browser import BROWSER_DIR, NODE_TIMEOUT_S
from tests.test_experiment_report_ndcg import judge
from tests.test_ubi_report import bulk

browser_tooling = test_console_browser.browser_tooling  # the same session fixture: Node.js and Chromium, or why not

TOKEN = "experiment-view-token"
SHADOW_QUERY = "jet engine noise"

QUERIES = [  # (query_id, arm, returned, teams, shadow list, user query)
    ("r1", "reranked", ["a", "b", "c"], None, None, None),
    ("r2", "reranked", ["a", "b", "c"], None, None, None),
    ("r3", "reranked", ["a", "b", "c"], None, None, None),
    ("r4", "reranked", ["a", "b", "c"], None, None, None),
    ("l1", "lexical", ["a", "b", "c"], None, None, None),
    ("l2", "lexical", ["a", "b", "c"], None, None, None),
    ("l3", "lexical", ["a", "b", "c"], None, ["c", "a", "b"], SHADOW_QUERY),
    ("l4", "lexical", ["a", "b", "c"], None, ["a", "b", "d"], "wing flutter"),
    ("i1", "interleaved", ["a", "b"], ["reranked", "lexical"], None, None),
    ("i2", "interleaved", ["a", "b"], ["lexical", "reranked"], None, None),
    ("i3", "interleaved", ["a", "b"], ["reranked", "lexical"], None, None),
    ("i4", "interleaved", ["a", "b"], ["lexical", "reranked"], None, None),
]
CLICKS = [("r1", "a"), ("r2", "b"), ("r4", "a"), ("l1", "c"), ("i1", "a"), ("i2", "b"), ("i3", "b")]

# Worked by hand (docs/experiments-stats.md):
# reranked: first clicks at ranks 1, 2, -, 1   -> CTR@10 3/4, MRR (1 + 1/2 + 0 + 1) / 4 = 0.625, abandonment 1/4
# lexical: rank 3, -, -, -                     -> CTR@10 1/4, MRR (1/3) / 4 = 0.083, abandonment 3/4
# interleaved: ranks 1, 2, 2, -                -> CTR@10 3/4, MRR (1 + 1/2 + 1/2) / 4 = 0.5, abandonment 1/4
# interleaving: i1, i2 won (the click on a reranked pick), i3 lost, i4 tied; preference 2/3, Wilson
#   z = 1.959964, n = 3: centre 0.57306, half 0.36543 -> [0.2077, 0.9385]
# A/B: 0.75 - 0.25 = 0.5 +- 1.959964 * sqrt(2 * 0.75 * 0.25 / 4) = 0.60011 -> [-0.1001, 1.1001]
# shadow: overlap 1 (l3) and 2/3 (l4): 0.833; l3's query judged {c: 1}: served a, b, c has nDCG@10
#   1/log2(4) = 0.5, the shadow list c, a, b has 1
EXPECTED = {
    "setting": "ab:50", "searches": len(QUERIES),
    "arms": [["interleaved", "4", "0.750", "0.500", "0.250"], ["lexical", "4", "0.250", "0.083", "0.750"],
             ["reranked", "4", "0.750", "0.625", "0.250"]],
    "ctr": {"interleaved": 0.75, "lexical": 0.25, "reranked": 0.75},
    "interleaving": {"wins": "2", "losses": "1", "ties": "1", "preference": "0.667",
                     "interval": "95% [0.208, 0.939]"},
    "ab": {"reranked": "0.750", "lexical": "0.250", "difference": "+0.500", "interval": "95% [-0.100, 1.100]"},
    "shadow": {"searches": "2", "overlap": "0.833", "judged": "1", "served": "0.500", "shadow": "1.000"},
    "intervals": {"ab": {"low": -0.10011395954441371, "high": 1.1001139595444136, "mark": 0},
                  "interleaving": {"low": 0.20765960080204765, "high": 0.9385080552796037, "mark": 0.5}},
}


def seed(url: str, index: str, queries: str, events: str) -> None:
    """The UBI log, and the judged index itself (the view offers the engine's indices to choose from)."""
    httpx.put(f"{url}/{queries}", json={"mappings": MAPPING}, timeout=30).raise_for_status()
    bulk(url, queries, [{"query_id": q, "arm": arm, "query_response_object_ids": ids,
                         **({"object_teams": teams} if teams else {}),
                         **({"shadow_object_ids": shadow, "user_query": text} if shadow else {})}
                        for q, arm, ids, teams, shadow, text in QUERIES])
    bulk(url, events, [{"query_id": q, "action_name": "click", "event_attributes": {"object": {"object_id": o}}}
                       for q, o in CLICKS])
    bulk(url, index, [{"title": doc} for doc in "abcd"])


def test_experiment_view_in_headless_chromium(browser_tooling, es_engine, index_name, tmp_path):
    queries, events = f"{index_name}-queries", f"{index_name}-events"
    seed(es_engine.url, index_name, queries, events)
    judgments = tmp_path / "judgments.sqlite3"
    judge(judgments, [(index_name, SHADOW_QUERY, "c", 1)])
    screenshot = Path(os.environ.get("EXPERIMENT_SCREENSHOT") or tmp_path / "experiment.png").resolve()
    common = {"ADMIN_TOKEN": TOKEN, "RERANK_EXPERIMENT": "ab:50", "CONSOLE_JUDGMENTS_FILE": str(judgments)}
    case = {"events": events, "judged_index": index_name, "other_index": queries,
            "missing_queries": f"{index_name}-none", "expected": EXPECTED}
    with run_proxy(proxy_settings(es_engine.url, UBI_QUERIES_INDEX=queries, **common),
                   reranker=OverlapReranker()) as proxy, \
            run_proxy(proxy_settings(es_engine.url, UBI_QUERIES_INDEX=case["missing_queries"], **common),
                      reranker=OverlapReranker()) as empty:
        env = {**os.environ, "CONSOLE_BASE": proxy.url, "CONSOLE_EMPTY_BASE": empty.url, "CONSOLE_TOKEN": TOKEN,
               "CONSOLE_CASE": json.dumps(case), "CHROMIUM": browser_tooling.chromium, "SCREENSHOT": str(screenshot)}
        run = subprocess.run([browser_tooling.node, "--test", "--test-reporter=spec", "console_experiment.test.mjs"],
                             cwd=BROWSER_DIR, env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "fail 0" in report, report
    assert screenshot.stat().st_size > 10_000
