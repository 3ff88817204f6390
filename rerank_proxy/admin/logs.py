"""Structured JSON logs: one line per request, never a secret.

Only fields chosen here are logged (method, path without query string, status, outcome, timings,
cache status, request id); headers, bodies and query strings never are, so credentials and API keys
cannot leak through the access log. `redact()` scrubs known secret values from any other message.

LOG_FORMAT=ecs writes the same lines under Elastic Common Schema names (nested objects, `@timestamp`,
`ecs.version`), so Filebeat or Elastic Agent ingest them without a pipeline; fields ECS has no name
for go under `rerank.*`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

from rerank_proxy.admin import ecs
from rerank_proxy.admin.access_lines import EcsLine, JsonLine
from rerank_proxy.admin.access_sink import AccessSink

_SECRETS: list[str] = []


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class EcsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "log": {"level": record.levelname.lower(), "logger": record.name},
            "message": redact(record.getMessage()),
            "ecs": {"version": ecs.VERSION},
            "service": {"name": "rerank-proxy"},
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            ecs.put_fields(entry, fields)
        if record.exc_info:
            ecs.put(entry, "error.stack_trace", redact(self.formatException(record.exc_info)))
        return orjson.dumps(entry, default=str).decode()


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never appear in a log line (API keys, tokens, credentials)."""
    for value in values:
        if value and len(value) >= 4 and value not in _SECRETS:
            _SECRETS.append(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


class _OrderedStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr for every line but the access lines: the access lines queued before a line are
    written first, so the log reads in the order things happened."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _access_sink
        if sink is not None:
            sink.drain()
        super().emit(record)


_access_sink: AccessSink | None = None
_access_format = ""


def setup(level: str, log_format: str = "json") -> None:
    """The process's logging: JSON or ECS lines on stderr; access lines through the batched sink."""
    global _access_format
    _access_format = log_format
    handler = _OrderedStderr(sys.stderr)
    handler.setFormatter(EcsFormatter() if log_format == "ecs" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "httpx", "httpcore"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


access_log = logging.getLogger("rerank_proxy.access")


def access_sink() -> AccessSink | None:
    """The batched access-line writer of this process, once `setup` ran (else access lines go
    through `logging`, as in tests and tools that embed the proxy). A forked worker makes its own:
    the parent's writer thread does not exist in the child."""
    global _access_sink
    if not _access_format:
        return None
    sink = _access_sink
    if sink is None:
        sink = _access_sink = AccessSink(sys.stderr.fileno(), EcsLine() if _access_format == "ecs" else JsonLine())
    return sink


def close_access_sink() -> None:
    """Write every queued access line (a clean stop loses none)."""
    sink = _access_sink
    if sink is not None:
        sink.close()


def _forget_parents_sink() -> None:
    global _access_sink
    _access_sink = None


# A forked worker makes its own writer on first use (the parent's thread does not exist in it);
# checked once at the fork, not by a getpid() per access line.
os.register_at_fork(after_in_child=_forget_parents_sink)
