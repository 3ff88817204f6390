"""Batch evaluation: many queries, nDCG@10 of both rankings per query, wins and losses first.

One comparison per query (the same code path as the interactive view), a few at a time so a long
run neither floods the engine or the provider nor starves the proxy's own searches. Progress is
yielded as it happens, so the page can show a progress bar for runs of thousands of queries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from rerank_proxy.console.beir import EvalQuery
from rerank_proxy.console.compare import compare
from rerank_proxy.console.ndcg import K, mean, ndcg_at_k
from rerank_proxy.console.params import CompareOptions
from rerank_proxy.console.scorers import Scorers
from rerank_proxy.errors import ProxyError

CONCURRENCY = 3
_TIE = 1e-9
_log = logging.getLogger("rerank_proxy.console")


async def _one(runtime: Any, scorers: Scorers, base: CompareOptions, item: EvalQuery) -> dict[str, Any]:
    qrels = item.qrels or {}
    row: dict[str, Any] = {"id": item.id, "query": item.text, "lexical": None, "reranked": None,
                           "delta": None, "relevant": sum(1 for g in qrels.values() if g > 0),
                           "judged": len(qrels), "error": ""}
    try:
        # base's query template (the app's DSL), if any, is filled in with this query
        result = await compare(runtime, scorers, dataclasses.replace(base, query=item.text, dsl=None))
    except ProxyError as exc:
        row["error"] = exc.reason
        return row
    except Exception as exc:  # noqa: BLE001 - one broken query must not end a run of thousands
        _log.exception("console batch query failed")
        row["error"] = f"{type(exc).__name__}: the query failed; see the proxy log"
        return row
    row["lexical"] = ndcg_at_k(result.lexical_ids(K), qrels)
    row["reranked"] = ndcg_at_k(result.reranked_ids(K), qrels)
    if row["lexical"] is not None and row["reranked"] is not None:
        row["delta"] = row["reranked"] - row["lexical"]
    row["error"] = result.error
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows by size of change (biggest win, biggest loss, ...), then the means over evaluable queries."""
    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        delta = row["delta"]
        return (delta is None, -abs(delta or 0.0), -(delta or 0.0), row["id"])

    evaluated = [r for r in rows if r["delta"] is not None]
    return {
        "k": K,
        "rows": sorted(rows, key=order),
        "queries": len(rows),
        "evaluated": len(evaluated),
        "mean": {"lexical": mean([r["lexical"] for r in evaluated]),
                 "reranked": mean([r["reranked"] for r in evaluated]),
                 "delta": mean([r["delta"] for r in evaluated])},
        "wins": sum(1 for r in evaluated if r["delta"] > _TIE),
        "losses": sum(1 for r in evaluated if r["delta"] < -_TIE),
        "ties": sum(1 for r in evaluated if abs(r["delta"]) <= _TIE),
        "errors": sum(1 for r in rows if r["error"]),
    }


async def run(runtime: Any, scorers: Scorers, base: CompareOptions,
              items: list[EvalQuery]) -> AsyncIterator[dict[str, Any]]:
    """Yield {"type": "progress", ...} events, then one {"type": "result", ...}.

    Items carry their qrels (the caller reads stored judgments before the run starts, so a store
    failure is an error answer, not a stream cut short); None counts as no judgments."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def guarded(item: EvalQuery) -> dict[str, Any]:
        async with gate:
            return await _one(runtime, scorers, base, item)

    tasks = [asyncio.ensure_future(guarded(item)) for item in items]
    rows: list[dict[str, Any]] = []
    try:
        yield {"type": "progress", "done": 0, "total": len(items)}
        for finished in asyncio.as_completed(tasks):
            rows.append(await finished)
            yield {"type": "progress", "done": len(rows), "total": len(items)}
    finally:  # the page went away (or a bug): stop the remaining work
        for task in tasks:
            task.cancel()
    yield {"type": "result", **summarise(rows)}


async def collect(runtime: Any, scorers: Scorers, base: CompareOptions, items: list[EvalQuery]) -> dict[str, Any]:
    """The final summary of `run`, for callers that do not stream."""
    result: dict[str, Any] = {}
    async for event in run(runtime, scorers, base, items):
        result = event
    result.pop("type", None)
    return result
