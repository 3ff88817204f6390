"""The demo's online experiment (`rerank-proxy demo --experiment`): simulated users, four runs.

The judged collection is written through the proxy (write warming embeds it), then simulated users
(experiment_sim.py) search and click through a proxy started in each experiment mode in turn:

* A/B (`ab:50`): half the users get the reranked order, half the lexical order;
* interleaving (`interleave`): every user gets the team draft of both;
* A/A and A/A interleaving: the same two, every search asking `rerank.score_mode: lexical`, so both
  arms serve the engine's order: the report must then find no difference.

Each run has its own UBI queries and events indices (fresh), so each report reads only its run.
The proxies share one vector store: the collection is embedded once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx

from rerank_proxy.config import Settings
from rerank_proxy.demo_eval import CaughtUp, Collection, Wait, poll, vectors_status, write_corpus
from rerank_proxy.experiment_sim import Progress, SimulatedRun, run
from rerank_proxy.experiments.arms import ExperimentSetting

INDEX = "rerank-demo-experiment"
WARM_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    experiment: str
    lexical_only: bool
    searches: int   # enough for the run's interval to exclude no difference when it should (see BENCHMARKS)


# A/B needs the most: its interval is on CTR@10, which a better order moves by about 0.06 under the
# default click model (0.33 -> 0.39 on Cranfield), against about 0.01 of standard error per
# 2,500 searches per arm; interleaving compares both lists within each search, so 1,500 do.
MODES = (Mode("A/B", "ab:50", False, 5000), Mode("interleaving", "interleave", False, 1500),
         Mode("A/A", "ab:50", True, 2000), Mode("A/A interleaving", "interleave", True, 500))

StartProxy = Callable[[Settings], AbstractContextManager[str]]  # settings -> the running proxy's URL


@dataclass(slots=True)
class ModeResult:
    mode: Mode
    run: SimulatedRun


def _slug(mode: Mode) -> str:
    return mode.name.lower().replace("/", "").replace(" ", "-")


def _fresh(engine_url: str, *indices: str) -> None:
    with httpx.Client(base_url=engine_url, timeout=60) as client:
        for index in indices:
            client.delete(f"/{index}")  # a 404 for a first run is fine


def run_modes(engine_url: str, base: Settings, collection: Collection, start_proxy: StartProxy, *,
              modes: Sequence[Mode] = MODES, searches: int | None = None, seed: int = 7, index: str = INDEX,
              wait: Wait = poll, say: Callable[[str], None] = print,
              progress: Callable[[str], Progress | None] = lambda _: None) -> Iterator[ModeResult]:
    """Each mode's run, in turn, after the collection is written and embedded through the first proxy
    (`searches` in place of each mode's own count when given)."""
    token = secrets.token_urlsafe(24)  # the admin token, as `serve` makes one when none is set
    for n, mode in enumerate(modes):
        queries_index, events_index = f"{index}-ubi-queries-{_slug(mode)}", f"{index}-ubi-events-{_slug(mode)}"
        _fresh(engine_url, queries_index, events_index)
        settings = base.with_overrides(rerank_experiment=ExperimentSetting()(mode.experiment), admin_token=token,
                                       ubi_queries_index=queries_index)
        with start_proxy(settings) as url:
            if n == 0:
                _write_and_warm(url, settings, collection, index, wait, say)
            say(f"{mode.name} (RERANK_EXPERIMENT={mode.experiment}"
                f"{', every search rerank.score_mode: lexical' if mode.lexical_only else ''}): "
                f"{searches or mode.searches} searches by simulated users")
            yield ModeResult(mode, run(url, token, index, collection.queries, queries_index=queries_index,
                                       events_index=events_index, searches=searches or mode.searches, seed=seed,
                                       lexical_only=mode.lexical_only, progress=progress(mode.name)))


def _write_and_warm(url: str, settings: Settings, collection: Collection, index: str, wait: Wait,
                    say: Callable[[str], None]) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        baseline = vectors_status(client) or {}
        say(f"writing {len(collection.docs)} documents of {collection.name} into '{index}' through the proxy")
        expected = write_corpus(client, settings, index, collection.docs)
        done = wait(CaughtUp(client, baseline, expected), "the background embedder to catch up", WARM_TIMEOUT_S)
        say("embedded" if done else "the embedder has not caught up: some searches answer lexically")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interval(part: dict[str, Any] | None, key: str) -> str:
    if not part or not part.get("interval"):
        return "-"
    low, high = part["interval"]["low"], part["interval"]["high"]
    return f"{part[key]:+.3f} [{low:+.3f}, {high:+.3f}]" if key == "difference" else \
        f"{part[key]:.3f} [{low:.3f}, {high:.3f}]"


def verdict(result: ModeResult) -> str:
    """What the run's interval says: the reranked arm ahead, behind, or no difference found."""
    report = result.run.report
    part, low_key, null = (report.get("ab"), "difference", 0.0) if result.mode.experiment.startswith("ab") else \
        (report.get("interleaving"), "preference", 0.5)
    if not part or not part.get("interval"):
        return "no difference (no decided query)" if low_key == "preference" else "-"
    low, high = part["interval"]["low"], part["interval"]["high"]
    if low > null:
        return "reranked ahead"
    if high < null:
        return "lexical ahead"
    return "no difference"


def table(results: Sequence[ModeResult]) -> str:
    """Per run: searches, CTR@10 and MRR per arm, the comparison with its 95% interval, the verdict."""
    head = ("run", "searches", "CTR@10 lexical / reranked", "MRR lexical / reranked",
            "reranked - lexical CTR@10 or preference [95%]", "wins/losses/ties", "verdict")
    rows = [head]
    for result in results:
        report = result.run.report
        arms = report.get("arms", {})
        if result.mode.experiment.startswith("ab"):
            lexical, reranked = arms.get("lexical", {}), arms.get("reranked", {})
            ctr = f"{_pct(lexical.get('ctr_at_10'))} / {_pct(reranked.get('ctr_at_10'))}"
            mrr = f"{lexical.get('mrr', 0):.3f} / {reranked.get('mrr', 0):.3f}"
            comparison, record = _interval(report.get("ab"), "difference"), "-"
        else:
            interleaved = arms.get("interleaved", {})
            ctr = f"{_pct(interleaved.get('ctr_at_10'))} (one list)"
            mrr = f"{interleaved.get('mrr', 0):.3f} (one list)"
            part = report.get("interleaving") or {}
            comparison = _interval(part, "preference")
            record = f"{part.get('wins', 0)}/{part.get('losses', 0)}/{part.get('ties', 0)}"
        rows.append((result.mode.name, str(result.run.searches), ctr, mrr, comparison, record, verdict(result)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def interval_plot(results: Sequence[ModeResult], width: int = 41) -> str:
    """Each run's 95% interval against its no-difference mark (|), as text: A/B on the CTR
    difference from -0.2 to +0.2, interleaving on the preference from 0.3 to 0.7."""
    lines = []
    for result in results:
        ab = result.mode.experiment.startswith("ab")
        part = result.run.report.get("ab" if ab else "interleaving") or {}
        lo_axis, hi_axis, null = (-0.2, 0.2, 0.0) if ab else (0.3, 0.7, 0.5)
        cells = [" "] * width

        def at(value: float, lo: float = lo_axis, hi: float = hi_axis) -> int:
            return max(0, min(width - 1, round((value - lo) / (hi - lo) * (width - 1))))
        if part.get("interval"):
            for i in range(at(part["interval"]["low"]), at(part["interval"]["high"]) + 1):
                cells[i] = "="
            cells[at(part["difference" if ab else "preference"])] = "*"
        cells[at(null)] = "|"
        axis = f"{lo_axis:+.1f} .. {hi_axis:+.1f}" if ab else f"{lo_axis:.1f} .. {hi_axis:.1f}"
        lines.append(f"{result.mode.name:<17} {''.join(cells)}  ({axis})")
    return "\n".join(lines)
