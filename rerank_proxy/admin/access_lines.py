"""An access line's bytes, in the shape `logs.py`'s formatters give every other line (JSON or ECS).

Encoded straight from the fields, in one orjson call, without a `logging` record: the request
path pays for this once per request. The time prefix is formatted once per second.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from rerank_proxy.admin import ecs

LOGGER = "rerank_proxy.access"
MESSAGE = "request"


class _Clock:
    """`2026-12-07T08:31:37.123Z` for a time.time() value; strftime runs once per second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((now - second) * 1000):03d}Z"


class JsonLine:
    def __init__(self) -> None:
        self._clock = _Clock()

    def __call__(self, fields: dict[str, Any], now: float) -> bytes:
        entry: dict[str, Any] = {"ts": self._clock.stamp(now), "level": "info", "logger": LOGGER, "msg": MESSAGE}
        entry.update(fields)
        return orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)


class EcsLine:
    def __init__(self) -> None:
        self._clock = _Clock()

    def __call__(self, fields: dict[str, Any], now: float) -> bytes:
        entry: dict[str, Any] = {
            "@timestamp": self._clock.stamp(now),
            "log": {"level": "info", "logger": LOGGER},
            "message": MESSAGE,
            "ecs": {"version": ecs.VERSION},
            "service": {"name": "rerank-proxy"},
        }
        ecs.put_fields(entry, fields)
        return orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
