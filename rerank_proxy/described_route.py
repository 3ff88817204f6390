"""A route that says what it is for: the proxy's own endpoints (admin, console) are listed on the
landing page from these, so the list cannot name an endpoint that does not exist.

Its own module, below both admin and console, since both declare routes and admin serves the page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.routing import Route


class DescribedRoute(Route):
    """A route with a one-line meaning and whether it needs the admin token, for the landing page."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, methods: list[str], meaning: str,
                 token: bool = False) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.meaning = meaning
        self.token = token
