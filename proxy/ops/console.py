"""The relevance console (placeholder until the console issue lands)."""

from __future__ import annotations

from typing import Any, Callable

from starlette.routing import BaseRoute


def console_routes(runtime: Any, guard: Callable) -> list[BaseRoute]:
    """Routes under /_rerank/console; `guard(handler)` wraps a handler with the admin-token check."""
    return []
