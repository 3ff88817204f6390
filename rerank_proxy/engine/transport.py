"""What the search pipeline, the console and the probes need from the engines: one read, whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class EngineAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    served_by: str = ""  # host:port of the engine that answered (the access line's `upstream`)


class EngineTransport(Protocol):
    async def fetch(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                    body: bytes | None) -> EngineAnswer:
        """Send a read to an engine and return its whole answer.

        `target` is the path and query string as the engine should see them. Raises `ProxyError`
        (502 unreachable, 429 no connection free) or `AnswerTooLarge` past MAX_CANDIDATE_BYTES."""
        ...
