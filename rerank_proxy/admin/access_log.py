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


# The request headers an access line carries: field name and the most characters kept.
_HEADER_FIELDS = {b"user-agent": ("user_agent", 300), b"x-opaque-id": ("request_id", 200),
                  b"traceparent": ("traceparent", 200)}


def log_access(raw_headers: list[tuple[bytes, bytes]], method: str, path: str, served: Served,
               client: tuple[str, int] | None = None) -> None:
    """Client address and user agent, bytes sent, the engine that served, the request id and trace
    context if sent, and the search's timings. Built in one pass over the headers: every request
    pays for it."""
    if not logs.access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {"method": method, "path": path, "status": served.status,
                              "outcome": served.outcome, "ms": round(served.elapsed * 1000, 2),
                              "bytes": served.sent_bytes}
    if served.upstream:
        fields["upstream"] = served.upstream
    if client is not None:
        fields["client"] = f"{client[0]}:{client[1]}"
    for name, value in raw_headers:
        named = _HEADER_FIELDS.get(name.lower())
        if named is not None:
            fields[named[0]] = value[:named[1]].decode("latin-1")
    if served.extra:
        _add_search_fields(fields, served.extra)
    sink = logs.access_sink()
    if sink is not None:
        sink.emit(fields)
    else:
        logs.access_log.info("request", extra={"fields": fields})


def _add_search_fields(fields: dict[str, Any], extra: dict[str, Any]) -> None:
    """The search's timings (ms, 2 decimals), cache result and fallback reason, those it has."""
    for key in ("engine_ms", "rerank_ms"):
        if extra.get(key):
            fields[key] = round(extra[key], 2)
    for key in ("cache", "reason", "arm"):
        if extra.get(key):
            fields[key] = extra[key]
