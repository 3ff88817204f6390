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
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

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


ECS_VERSION = "8.11.0"
# Our field -> ECS path. Timings are in milliseconds here; ECS's event.duration is nanoseconds.
_ECS_FIELDS = {
    "method": "http.request.method", "path": "url.path", "status": "http.response.status_code",
    "request_id": "http.request.id", "client": "client.address", "user_agent": "user_agent.original",
    "bytes": "http.response.bytes", "upstream": "destination.address", "pid": "process.pid",
    "host": "server.address", "port": "server.port", "version": "service.version",
}


class EcsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "log": {"level": record.levelname.lower(), "logger": record.name},
            "message": redact(record.getMessage()),
            "ecs": {"version": ECS_VERSION},
            "service": {"name": "rerank-proxy"},
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key == "ms":
                    _put(entry, "event.duration", int(value * 1_000_000))
                elif key == "traceparent":
                    parts = str(value).split("-")
                    if len(parts) == 4:
                        _put(entry, "trace.id", parts[1])
                    _put(entry, "rerank.traceparent", value)
                else:
                    _put(entry, _ECS_FIELDS.get(key, f"rerank.{key}"), value)
        if record.exc_info:
            _put(entry, "error.stack_trace", redact(self.formatException(record.exc_info)))
        return orjson.dumps(entry, default=str).decode()


def _put(entry: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        entry = entry.setdefault(name, {})
    entry[leaf] = value


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


def setup(level: str, log_format: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
