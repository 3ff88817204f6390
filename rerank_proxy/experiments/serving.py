"""What each experiment arm serves from one window of candidates, and the shadow scoring behind it.

The arms differ only in the order of the window's hits: `lexical` keeps the engine's, `reranked`
sorts by the final scores, `interleaved` team-drafts the two (interleave.py) with its coin seeded by
the query id, so the same query id always gives the same list and teams. Everything else (the
page cut, `_source`, filter_path) is the same code for every arm, so the arms compare rankings,
not answer shapes.

`ShadowScorer` runs the reranking of a search served lexically, after its answer has gone: at most
a quarter of RERANK_MAX_CONCURRENCY at once, the rest skipped and counted, so a shadow experiment
never holds provider slots the live searches need and never delays an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily

from rerank_proxy.experiments.interleave import Team, team_draft

_log = logging.getLogger("rerank_proxy")
SHADOW_RESULTS = ("scored", "skipped", "failed")


def interleaved_order(reranked: Sequence[int], query_id: str) -> tuple[list[int], tuple[Team | None, ...]]:
    """The window positions in team-draft order of the engine's order and `reranked` (both over the
    same positions, so the list keeps every hit), and each served position's team."""
    drafted = team_draft([str(i) for i in range(len(reranked))], [str(i) for i in reranked], query_id,
                         len(reranked))
    return [int(i) for i in drafted.ids], drafted.teams


def page_teams(teams: Sequence[Team | None], page_from: int, returned: int) -> list[Team | None]:
    """The teams of the `returned` hits of a page starting at `page_from`: hits past the window
    (never drafted) belong to no team."""
    return [teams[n] if n < len(teams) else None for n in range(page_from, page_from + returned)]


class ShadowScorer:
    """Reranks lexically served searches behind their answers, within a fixed share of provider slots."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.counts = dict.fromkeys(SHADOW_RESULTS, 0)
        self.rerank_seconds = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, job: Coroutine[Any, Any, float | None]) -> bool:
        """Run `job` (it returns its scoring time in seconds, None when scoring failed) unless every
        shadow slot is taken; False (and the job closed, never run) when skipped."""
        if len(self._tasks) >= self.slots:
            job.close()
            self.counts["skipped"] += 1
            return False
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, job: Coroutine[Any, Any, float | None]) -> None:
        try:
            seconds = await job
        except Exception as exc:  # noqa: BLE001 - a shadow failure must never reach a client
            self.counts["failed"] += 1
            _log.warning("shadow rerank failed", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
            return
        if seconds is None:
            self.counts["failed"] += 1
        else:
            self.counts["scored"] += 1
            self.rerank_seconds += seconds

    async def idle(self) -> None:
        """Return once the shadow work running now has ended (tests, and a drain before shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Shutdown: the shadow work still running is dropped (its searches were answered long ago)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def families(self) -> Iterable[Any]:
        """The shadow's metric families, read at scrape time."""
        results = CounterMetricFamily("rerank_proxy_experiment_shadow",
                                      "Shadow reranks of lexically served searches, by result.", labels=["result"])
        for result, count in self.counts.items():
            results.add_metric([result], count)
        yield results
        yield CounterMetricFamily("rerank_proxy_experiment_shadow_rerank_seconds",
                                  "Time the shadow reranks spent scoring (cache and provider).",
                                  value=self.rerank_seconds)
