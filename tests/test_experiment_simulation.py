"""The online experiment end to end, on the shipped defaults from a cold start: simulated users
(a cascade click model over the Cranfield judgments) search through the proxy with UBI and post
their clicks through it; the proxy's own report must show the reranked arm ahead in A/B and in
interleaving with a 95% interval excluding no difference, and no difference in the A/A controls.

Defaults: the built-in model, a fresh vector store, a fresh index written through the proxy;
only RERANK_EXPERIMENT (the experiment itself), UBI_QUERIES_INDEX (a fresh one per run) and the
admin token (generated, as `serve` makes one) are set by the runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rerank_proxy.config import Settings, load_settings
from rerank_proxy.demo_eval import CRANFIELD, load_collection
from rerank_proxy.demo_experiment import run_modes, table, verdict
from tests.fixtures.proxy import run_proxy
from tests.support_wait import wait_until


@contextmanager
def _proxy(settings: Settings) -> Iterator[str]:
    with run_proxy(settings) as running:
        yield running.url


@pytest.mark.parametrize("engine", ["elasticsearch"], indirect=True)
def test_simulated_users_find_the_reranked_arm_ahead_and_the_aa_runs_even(engine, index_name: str, tmp_path: Path):
    settings = load_settings({"UPSTREAM_URLS": engine.url, "LOCAL_VECTOR_STORE": str(tmp_path / "vectors.sqlite")})
    assert settings.rerank_provider == "local"  # the shipped default
    collection = load_collection(CRANFIELD)
    results = list(run_modes(engine.url, settings, collection, _proxy, index=index_name,
                             wait=lambda predicate, what, timeout_s: wait_until(predicate, what, timeout_s,
                                                                                interval_s=0.5)))
    print("\n" + table(results))
    by_name = {r.mode.name: r for r in results}
    for result in results:
        assert result.run.report["searches"] == result.run.searches  # every search recorded, once
        assert result.run.clicks > 0

    ab = by_name["A/B"].run
    assert set(ab.arms) == {"lexical", "reranked"}
    assert min(ab.arms.values()) > 0.3 * ab.searches           # the users split between the arms
    assert ab.report["ab"]["interval"]["low"] > 0, ab.report["ab"]
    assert verdict(by_name["A/B"]) == "reranked ahead"

    interleaved = by_name["interleaving"].run.report["interleaving"]
    assert interleaved["interval"]["low"] > 0.5, interleaved
    assert interleaved["wins"] > interleaved["losses"]

    aa = by_name["A/A"].run.report["ab"]
    assert aa["interval"]["low"] <= 0 <= aa["interval"]["high"], aa
    aa_interleaved = by_name["A/A interleaving"].run.report["interleaving"]
    assert aa_interleaved["wins"] == aa_interleaved["losses"] == 0  # identical lists: every query a tie
