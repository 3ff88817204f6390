"""Whose request a piece of rerank work is for, so shared queues can take requests in turn.

A context variable rather than an argument: it crosses the `Reranker.rerank(query, documents)`
interface without every provider having to carry it. The search pipeline sets one owner for the
whole of an `_msearch` (its sub-searches share one turn); anything not set inside `owned_by` is
its own owner (each plain search takes its own turn).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_OWNER: ContextVar[Hashable | None] = ContextVar("rerank_work_owner", default=None)


@contextmanager
def owned_by(owner: Hashable) -> Iterator[None]:
    """Work started in this block (and in tasks created in it) belongs to `owner`."""
    token = _OWNER.set(owner)
    try:
        yield
    finally:
        _OWNER.reset(token)


def current_owner() -> Hashable:
    """The owner set by `owned_by`, else a fresh one (this work takes a turn of its own)."""
    owner = _OWNER.get()
    return owner if owner is not None else object()
