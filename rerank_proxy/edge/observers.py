"""What is told about relayed requests, and to whom: observers, declared once, in one list.

Counting, metrics, the access log and write warming all need to see a relay, and none of them is
the relay's business. Each is an observer with the hooks it needs (as mitmproxy's addons are); the
server builds the list once, when it starts, and every relay tells the same `Observers`. A hook an
observer does not override is never called, so the relay's hot path pays only for hooks in use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rerank_proxy.edge.relay import RelayExchange


@dataclass(slots=True)
class RelayRecord:
    """How observers name a relay: the client's path and headers, when it began, what it was."""

    path: str                             # decoded, as logged
    headers: list[tuple[bytes, bytes]]    # the client's, as received
    started_at: float                     # time.perf_counter()
    outcome: str = "passthrough"          # or "bypass": a search the proxy chose not to rerank
    reason: str = ""                      # why a search was bypassed


class RelayObserver(Protocol):
    """The hooks; an observer overrides the ones it needs (the defaults do nothing)."""

    def request_body(self, relay: RelayExchange, chunk: bytes) -> None:
        """A piece of the client's body, as received (never a body the edge read whole)."""
        return None

    def response_done(self, relay: RelayExchange) -> None:
        """The relay is over: answered, refused, cut, or the client went away. Called once."""
        return None


class Observers:
    """The declared observers, each hook bound once, in the order of the list."""

    __slots__ = ("observers", "request_body", "response_done")

    def __init__(self, observers: Sequence[RelayObserver] = ()) -> None:
        self.observers = tuple(observers)
        self.request_body: tuple[Callable[[RelayExchange, bytes], None], ...] = tuple(
            o.request_body for o in self.observers if _overrides(o, "request_body"))
        self.response_done: tuple[Callable[[RelayExchange], None], ...] = tuple(
            o.response_done for o in self.observers if _overrides(o, "response_done"))


def _overrides(observer: RelayObserver, hook: str) -> bool:
    return getattr(type(observer), hook, None) is not getattr(RelayObserver, hook)
