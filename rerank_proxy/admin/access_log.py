"""One access line per request (at INFO), in the fields log shippers map (see `logs.py` for ECS).

Served processes write them through the batched sink (`access_sink.py`), not `logging`: a line per
request must cost next to nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from rerank_proxy.admin import logs


@dataclass(slots=True)
class Served:
    """What the access line says about how a request was answered."""

    status: int
    outcome: str
    elapsed: float
    sent_bytes: int = 0
    upstream: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def access_logged() -> bool:
    """Whether access lines are written: the relay path skips building one when they are not."""
    return logs.access_log.isEnabledFor(logging.INFO)


def log_access(raw_headers: list[tuple[bytes, bytes]], method: str, path: str, served: Served,
               client: tuple[str, int] | None = None) -> None:
    """Client address and user agent, bytes sent, the engine that served, the request id and trace
    context if sent, and the search's timings."""
    if not logs.access_log.isEnabledFor(logging.INFO):
        return
    headers = {k.lower(): v for k, v in raw_headers
               if k.lower() in (b"x-opaque-id", b"traceparent", b"user-agent")}
    fields: dict[str, Any] = {"method": method, "path": path, "status": served.status,
                              "outcome": served.outcome, "ms": round(served.elapsed * 1000, 2),
                              "bytes": served.sent_bytes}
    if served.upstream:
        fields["upstream"] = served.upstream
    if client is not None:
        fields["client"] = f"{client[0]}:{client[1]}"
    if b"user-agent" in headers:
        fields["user_agent"] = headers[b"user-agent"].decode("latin-1")[:300]
    fields.update(_search_fields(served.extra))
    fields.update(_trace_fields(headers))
    sink = logs.access_sink()
    if sink is not None:
        sink.emit(fields)
    else:
        logs.access_log.info("request", extra={"fields": fields})


def _search_fields(extra: dict[str, Any]) -> dict[str, Any]:
    """The search's timings (ms, 2 decimals), cache result and fallback reason, those it has."""
    fields: dict[str, Any] = {}
    for key in ("engine_ms", "rerank_ms"):
        if extra.get(key):
            fields[key] = round(extra[key], 2)
    for key in ("cache", "reason"):
        if extra.get(key):
            fields[key] = extra[key]
    return fields


def _trace_fields(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The client's request id (X-Opaque-Id) and trace context (traceparent), if sent."""
    fields: dict[str, str] = {}
    if b"x-opaque-id" in headers:
        fields["request_id"] = headers[b"x-opaque-id"].decode("latin-1")[:200]
    if b"traceparent" in headers:
        fields["traceparent"] = headers[b"traceparent"].decode("latin-1")[:200]
    return fields
