"""A simulated user population, to show an online experiment end to end through the proxy.

Simulated users search a judged collection through the proxy with the UBI extension, exactly as
an app written for UBI would, look at what they are served, and click: their clicks go to the UBI
events index through the proxy as ordinary `_bulk` writes. The experiment's report is then the
proxy's own (`GET /_rerank/admin/experiment`), computed from what the engine holds. Nothing in
the report knows the clicks were simulated.

The click model is a cascade with position bias (a dependent click model, Guo, Liu and Wang,
WSDM 2009): the user reads the list from the top; a hit of relevance grade g is clicked with
probability `attract[g]`; after a click the user is satisfied and stops with probability
`satisfy[g]`; after each hit the user goes on to the next with probability `persistence`. So a
relevant hit ranked higher is more likely seen and clicked, which is what a better ranking buys.
Grades are the collection's judgments (Cranfield: 1 to 4, 4 the best); an unjudged hit is grade 0.
Every draw comes from one seeded generator: a run is reproducible.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from rerank_proxy.console.beir import EvalQuery
from rerank_proxy.experiments.ubi_report import CLICK

DEPTH = 10
EVENTS_BATCH = 200   # searches whose clicks go in one `_bulk`
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ClickModel:
    """A cascade click model with position bias; `attract` and `satisfy` are indexed by grade (0-4)."""

    attract: tuple[float, ...] = (0.02, 0.3, 0.5, 0.7, 0.9)
    satisfy: tuple[float, ...] = (0.0, 0.3, 0.45, 0.6, 0.75)
    persistence: float = 0.5
    depth: int = DEPTH

    def clicks(self, served: Sequence[str], qrels: Mapping[str, int], rng: random.Random) -> list[int]:
        """The 0-based positions a user clicks in `served`, in the order clicked."""
        clicked: list[int] = []
        top = len(self.attract) - 1
        for position, doc in enumerate(served[: self.depth]):
            grade = min(max(qrels.get(doc, 0), 0), top)
            if rng.random() < self.attract[grade]:
                clicked.append(position)
                if rng.random() < self.satisfy[grade]:
                    break
            if rng.random() >= self.persistence:
                break
        return clicked


@dataclass(frozen=True, slots=True)
class PlannedSearch:
    client_id: str
    query: EvalQuery


def plan_searches(queries: Sequence[EvalQuery], users: int, searches: int, rng: random.Random) -> list[PlannedSearch]:
    """`searches` searches, each by a user drawn from `users` and of a query drawn from `queries`."""
    return [PlannedSearch(f"sim-user-{rng.randrange(users)}", rng.choice(queries)) for _ in range(searches)]


def click_events(query_id: str, client_id: str, served: Sequence[str], clicked: Sequence[int],
                 now: datetime) -> list[dict[str, Any]]:
    """The UBI 1.0 click events of one search, as an app would log them."""
    return [{"action_name": CLICK, "query_id": query_id, "client_id": client_id,
             "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "event_attributes": {"object": {"object_id": served[p], "object_id_field": "_id"},
                                  "position": {"ordinal": p}}}
            for p in clicked]


@dataclass(slots=True)
class SimulatedRun:
    searches: int
    clicks: int
    arms: dict[str, int]          # searches per X-Rerank-Arm
    seconds: float
    report: dict[str, Any]


def search_body(query: EvalQuery, client_id: str, query_id: str, lexical_only: bool) -> dict[str, Any]:
    """The demo evaluation's search (demo_eval.search_body), with the UBI extension an app adds."""
    body: dict[str, Any] = {"query": {"multi_match": {"query": query.text, "fields": ["title", "text"]}},
                            "size": DEPTH, "_source": False,
                            "ext": {"ubi": {"query_id": query_id, "client_id": client_id, "user_query": query.text}}}
    if lexical_only:
        body["rerank"] = {"score_mode": "lexical"}  # both arms serve the engine's order: an A/A run
    return body


def simulate(client: httpx.Client, index: str, planned: Sequence[PlannedSearch], model: ClickModel,
             rng: random.Random, events_index: str, *, lexical_only: bool = False,
             progress: Progress | None = None) -> tuple[int, dict[str, int]]:
    """Run the planned searches through the proxy (`client`'s base URL) and post their clicks;
    (clicks posted, searches per arm)."""
    arms: dict[str, int] = {}
    pending: list[dict[str, Any]] = []
    clicks = 0
    for n, search in enumerate(planned, 1):
        query_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        answer = client.post(f"/{index}/_search", json=search_body(search.query, search.client_id, query_id,
                                                                    lexical_only))
        answer.raise_for_status()
        arm = answer.headers.get("x-rerank-arm", "off")
        arms[arm] = arms.get(arm, 0) + 1
        served = [str(hit["_id"]) for hit in answer.json()["hits"]["hits"]]
        events = click_events(query_id, search.client_id, served, model.clicks(served, search.query.qrels or {}, rng),
                              datetime.now(UTC))
        pending += events
        clicks += len(events)
        if n % EVENTS_BATCH == 0 or n == len(planned):
            _post_events(client, events_index, pending)
            pending = []
            if progress is not None:
                progress(n, len(planned))
    client.post(f"/{events_index}/_refresh").raise_for_status()
    return clicks, arms


def _post_events(client: httpx.Client, events_index: str, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    lines = b"".join(orjson.dumps({"index": {}}) + b"\n" + orjson.dumps(e) + b"\n" for e in events)
    answer = client.post(f"/{events_index}/_bulk", content=lines, headers={"content-type": "application/x-ndjson"})
    answer.raise_for_status()
    if answer.json().get("errors"):
        raise RuntimeError(f"the engine refused click events: {answer.text[:300]}")


def wait_for_records(client: httpx.Client, queries_index: str, expected: int, timeout_s: float = 120.0) -> bool:
    """Wait until the proxy's query log has written `expected` records (it writes in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client.post(f"/{queries_index}/_refresh")
        counted = client.get(f"/{queries_index}/_count")
        if counted.status_code == 200 and counted.json().get("count", 0) >= expected:
            return True
        time.sleep(0.2)
    return False


def read_report(client: httpx.Client, token: str, events_index: str) -> dict[str, Any]:
    answer = client.get("/_rerank/admin/experiment", params={"events": events_index},
                        headers={"authorization": f"Bearer {token}"})
    answer.raise_for_status()
    report: dict[str, Any] = answer.json()
    return report


def run(proxy_url: str, token: str, index: str, queries: Sequence[EvalQuery], *, queries_index: str,
        events_index: str, searches: int, users: int = 200, seed: int = 7, lexical_only: bool = False,
        model: ClickModel | None = None, progress: Progress | None = None) -> SimulatedRun:
    """One experiment run: searches and clicks through the proxy, then the proxy's report of it."""
    rng = random.Random(seed)
    planned = plan_searches([q for q in queries if q.qrels], users, searches, rng)
    started = time.perf_counter()
    with httpx.Client(base_url=proxy_url, timeout=120) as client:
        clicks, arms = simulate(client, index, planned, model or ClickModel(), rng, events_index,
                                lexical_only=lexical_only, progress=progress)
        if not wait_for_records(client, queries_index, len(planned)):
            raise RuntimeError(f"the proxy did not write the {len(planned)} UBI query records to {queries_index}")
        report = read_report(client, token, events_index)
    return SimulatedRun(len(planned), clicks, arms, time.perf_counter() - started, report)
