"""Our log fields under Elastic Common Schema names, so Filebeat or Elastic Agent ingest them as they are."""

from __future__ import annotations

from typing import Any

VERSION = "8.11.0"
# Our field -> ECS path. Timings are in milliseconds here; ECS's event.duration is nanoseconds.
_ECS_FIELDS = {
    "method": "http.request.method", "path": "url.path", "status": "http.response.status_code",
    "request_id": "http.request.id", "client": "client.address", "user_agent": "user_agent.original",
    "bytes": "http.response.bytes", "upstream": "destination.address", "pid": "process.pid",
    "host": "server.address", "port": "server.port", "version": "service.version",
}


def put_fields(entry: dict[str, Any], fields: dict[str, Any]) -> None:
    """Our fields under their ECS names (unknown ones under `rerank.*`); timings as event.duration."""
    for key, value in fields.items():
        if key == "ms":
            put(entry, "event.duration", int(value * 1_000_000))
        elif key == "traceparent":
            parts = str(value).split("-")
            if len(parts) == 4:
                put(entry, "trace.id", parts[1])
            put(entry, "rerank.traceparent", value)
        else:
            put(entry, _ECS_FIELDS.get(key, f"rerank.{key}"), value)


def put(entry: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        entry = entry.setdefault(name, {})
    entry[leaf] = value
