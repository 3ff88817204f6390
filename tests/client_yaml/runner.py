"""Run the tests of a suite file: setup, the test's steps, teardown, for each test, with a fresh stash.

Each test gets one outcome: `pass`, `fail` (the first failing step, setup's and teardown's included)
or `skip` (a `skip`/`requires` step asks for a runner feature this runner lacks). Teardown runs even
after a failure. An error anywhere in the test (teardown included) whose cause is the connection
(elastic_transport's ConnectionError or ConnectionTimeout, a reset, a broken pipe, a closed connection)
flags the test `connection_error`: through a proxy that is never acceptable.

Each outcome counts the TCP connections the client opened during the test (with
`transport.DelayedBodyNode`; 0 with another node class): one is opened for a run's first request, and
after that only when the server closed the previous one.

Each outcome keeps a trace: the `do` steps with their parameters and the HTTP requests the client sent
(method, URL, status, from elastic_transport's own log), so a divergence can be replayed.

Before and after each file, `Cleaner` deletes, on the engine itself, the indices, templates, pipelines,
repositories and synonym sets that are named somewhere in the file: a test that failed half-way then
cannot change what the next run (direct or through a proxy) finds. Only names that occur in the file
are touched, so other tests sharing the engine are left alone.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import elastic_transport
import httpx
from elasticsearch import Elasticsearch

from tests.client_yaml.executor import StepFailure, run_do
from tests.client_yaml.loader import Step, YamlFile, YamlTest
from tests.client_yaml.matchers import ASSERTIONS
from tests.client_yaml.stash import Stash, StashError
from tests.client_yaml.transport import connects

# What the runner implements, as the format's `skip: features` / `requires: test_runner_features` name it.
SUPPORTED_FEATURES = frozenset({
    "headers", "contains", "warnings", "allowed_warnings", "warnings_regex", "allowed_warnings_regex",
    "stash_in_path", "stash_in_key", "stash_path_replace", "default_shards", "node_selector",
})

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout, ConnectionError,
    BrokenPipeError, http.client.RemoteDisconnected, http.client.IncompleteRead,
)
CONNECTION_WORDS = ("connection aborted", "connection reset", "broken pipe", "remotedisconnected",
                    "remote end closed", "connection refused", "incompleteread", "protocolerror")


class Skipped(Exception):
    pass


@dataclass
class Outcome:
    test_id: str
    status: str                       # "pass" | "fail" | "skip"
    message: str = ""
    connection_error: bool = False
    connects: int = 0                 # TCP connections the client opened during the test (DelayedBodyNode)
    seconds: float = 0.0
    trace: list[str] = field(default_factory=list)

    def line(self) -> str:
        flag = " [CONNECTION ERROR]" if self.connection_error else ""
        flag += f" [{self.connects} new connections]" if self.connects else ""
        return f"{self.status.upper():4} {self.test_id}{flag}" + (f": {self.message}" if self.message else "")


def is_connection_error(error: BaseException) -> bool:
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, CONNECTION_ERRORS):
            return True
        if isinstance(current, elastic_transport.TransportError) and not isinstance(current,
                                                                                    elastic_transport.ApiError):
            if any(word in str(current).lower() for word in CONNECTION_WORDS):
                return True
            pending.extend(e for e in getattr(current, "errors", ()) if isinstance(e, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return False


class _TraceHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append("  http " + record.getMessage())


@contextmanager
def http_trace(sink: list[str]) -> Iterator[None]:
    """The client's request log lines ("PUT http://.../index [status:200 ...]") into `sink`."""
    logger = logging.getLogger("elastic_transport.transport")
    handler = _TraceHandler(sink)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _features(value: Any) -> set[str]:
    if value is None:
        return set()
    return {str(value)} if isinstance(value, str) else {str(v) for v in value}


def check_skip(arg: Any) -> None:
    """A `skip` (or in-test `requires`) step: skip unless every feature it needs is supported."""
    arg = arg or {}
    if not isinstance(arg, dict):
        raise StepFailure(f"skip: expected a mapping, got {arg!r:.200}")
    missing = _features(arg.get("features")) | _features(arg.get("test_runner_features"))
    missing -= SUPPORTED_FEATURES
    if missing:
        raise Skipped(f"needs runner features {sorted(missing)}")
    for key in ("version", "awaits_fix", "cluster_features", "known_issues", "os"):
        if key in arg:
            raise Skipped(f"skip/requires {key}: {arg[key]!r:.100}")


class YamlRunner:
    def __init__(self, client: Elasticsearch, cleaner: Cleaner | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.cleaner = cleaner
        self.progress = progress or (lambda line: None)

    def run_step(self, step: Step, stash: Stash, trace: list[str]) -> None:
        ((kind, arg),) = step.items()
        if kind == "do":
            trace.append(f"do {arg!r:.400}")
            run_do(self.client, arg, stash, trace)
        elif kind == "set":
            for path, name in dict(arg).items():
                stash.values[str(name)] = stash.at_path(str(path))
        elif kind in ("skip", "requires"):
            check_skip(arg)
        elif kind in ASSERTIONS:
            ASSERTIONS[kind](arg, stash)
        else:
            raise StepFailure(f"unknown step {kind!r}")

    def run_test(self, file: YamlFile, test: YamlTest) -> Outcome:
        outcome = Outcome(file.test_id(test), "pass")
        stash = Stash()
        started = time.monotonic()
        connected = connects(self.client)
        failure: BaseException | None = None
        errors: list[BaseException] = []        # every error, teardown's included
        with http_trace(outcome.trace):
            try:
                for section, steps in (("setup", file.setup), ("test", test.steps)):
                    for step in steps:
                        try:
                            self.run_step(step, stash, outcome.trace)
                        except (StepFailure, StashError) as error:
                            raise StepFailure(f"{section}: {error}") from error
            except Skipped as skipped:
                outcome.status, outcome.message = "skip", str(skipped)
            except Exception as error:  # noqa: BLE001 (a runner: an assertion or anything the client raised is the test's outcome)
                failure = error
                errors.append(error)
                outcome.trace.append(f"  error {type(error).__name__}: {error}"[:600])
            for step in file.teardown:
                try:
                    self.run_step(step, stash, outcome.trace)
                except Exception as error:  # noqa: BLE001 (a failed teardown is recorded, and the other steps still run)
                    errors.append(error)
                    outcome.trace.append(f"  teardown error {type(error).__name__}: {error}"[:600])
                    if failure is None and outcome.status == "pass":
                        failure = StepFailure(f"teardown: {error}")
                        failure.__cause__ = error
        if failure is not None:
            outcome.status = "fail"
            outcome.message = f"{type(failure).__name__}: {failure}"[:600]
        outcome.connection_error = any(is_connection_error(error) for error in errors)
        outcome.connects = connects(self.client) - connected
        outcome.seconds = time.monotonic() - started
        return outcome

    def run_file(self, file: YamlFile) -> list[Outcome]:
        if self.cleaner is not None:
            self.cleaner.clean(file)
        outcomes = []
        for test in file.tests:
            outcome = self.run_test(file, test)
            self.progress(f"  {outcome.line()[:200]} ({outcome.seconds:.1f} s)")
            outcomes.append(outcome)
        if self.cleaner is not None:
            self.cleaner.clean(file)
        return outcomes

    def run_files(self, files: list[YamlFile]) -> dict[str, Outcome]:
        results: dict[str, Outcome] = {}
        for file in files:
            for outcome in self.run_file(file):
                results[outcome.test_id] = outcome
        return results


# Each resource kind the suite creates: how to list its names on the engine, and how to delete one.
_LISTINGS: tuple[tuple[str, str, Callable[[Any], list[str]]], ...] = (
    ("/_data_stream/*?expand_wildcards=all", "/_data_stream/{}",
     lambda body: [d["name"] for d in body.get("data_streams", [])]),
    ("/_cat/indices?h=index&format=json&expand_wildcards=all", "/{}", lambda body: [r["index"] for r in body]),
    ("/_index_template", "/_index_template/{}", lambda body: [t["name"] for t in body.get("index_templates", [])]),
    ("/_component_template", "/_component_template/{}",
     lambda body: [t["name"] for t in body.get("component_templates", [])]),
    ("/_template", "/_template/{}", lambda body: list(body)),
    ("/_ingest/pipeline", "/_ingest/pipeline/{}", lambda body: list(body)),
    ("/_snapshot", "/_snapshot/{}", lambda body: list(body)),
    ("/_synonyms", "/_synonyms/{}", lambda body: [s["synonyms_set"] for s in body.get("results", [])]),
)


class Cleaner:
    """Deletes, directly on the engine, what is named in a suite file and still exists."""

    def __init__(self, engine_url: str) -> None:
        self.http = httpx.Client(base_url=engine_url, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def clean(self, file: YamlFile) -> list[str]:
        names = {name for name in file.strings() if name and "*" not in name and "/" not in name}
        deleted: list[str] = []
        for listing, delete, names_of in _LISTINGS:
            try:
                listed = self.http.get(listing)
                found = names_of(listed.json()) if listed.status_code == 200 else []
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
                continue
            for name in sorted(set(found) & names):
                try:
                    self.http.delete(delete.format(name))
                    deleted.append(delete.format(name))
                except httpx.HTTPError:
                    pass
        return deleted
