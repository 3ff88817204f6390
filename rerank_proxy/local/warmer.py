"""What the edge, metrics and readiness need of a reranker that warms itself in the background.

Its own module, free of numpy and the model: the edge imports it to hand relayed writes to the
built-in model, and must not load model code to do so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rerank_proxy.local.embedder import BackgroundEmbedder


@runtime_checkable
class Warmer(Protocol):
    """A reranker that embeds documents in the background (the built-in model): what the write
    relay, start-up warming, metrics and readiness need of it."""

    embedder: BackgroundEmbedder

    def submit_texts(self, texts: Iterable[str], *, startup: bool = False) -> int: ...

    def status(self) -> dict[str, Any]: ...
