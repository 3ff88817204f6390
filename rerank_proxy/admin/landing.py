"""The page at /_rerank/: what the proxy's own endpoints are, read from the route table itself.

Someone who finds the proxy's port should not need the README to learn that there is a console,
where the probes are and which endpoints need the admin token. The list is built from the routes
the app serves (`DescribedRoute` carries each one's meaning and whether it needs the token), so it
cannot name an endpoint that does not exist. It needs no token: it shows paths, never a secret.
Browsers (Accept: text/html) get HTML; everything else gets the same list as JSON.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute

from rerank_proxy import __version__
from rerank_proxy.console.page import CONSOLE_PATH
from rerank_proxy.described_route import DescribedRoute

LANDING_PATH = "/_rerank/"


def listing(routes: Sequence[BaseRoute]) -> list[dict[str, Any]]:
    """Every described route: path, methods (HEAD left out: it follows GET), meaning, token needed."""
    return [{"path": r.path, "methods": sorted((r.methods or set()) - {"HEAD"}), "meaning": r.meaning,
             "token": r.token} for r in routes if isinstance(r, DescribedRoute)]


class Landing:
    """The handlers of /_rerank/ and /_rerank over `routes` (the list the app serves)."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = routes

    async def view(self, request: Request) -> Response:
        endpoints = listing(self.routes)
        if "text/html" in request.headers.get("accept", ""):
            return _page(endpoints)
        return JSONResponse({"name": "rerank-proxy", "version": __version__, "endpoints": endpoints})

    async def redirect(self, request: Request) -> Response:
        # relative, so it stays right behind a TLS-terminating or path-rewriting front proxy
        return RedirectResponse(LANDING_PATH, 308)


def _linkable(endpoint: dict[str, Any]) -> bool:
    """A browser can follow it: a GET without a path parameter that is a page or needs no header."""
    path = endpoint["path"]
    return "GET" in endpoint["methods"] and "{" not in path and (not endpoint["token"] or path.endswith("/console"))


def _row(endpoint: dict[str, Any]) -> str:
    path = html.escape(endpoint["path"])
    shown = f'<a href="{path}">{path}</a>' if _linkable(endpoint) else path
    token = "admin token" if endpoint["token"] else ""
    return (f"<tr><td><code>{shown}</code></td><td>{html.escape(' '.join(endpoint['methods']))}</td>"
            f"<td>{token}</td><td>{html.escape(endpoint['meaning'])}</td></tr>")


def _page(endpoints: list[dict[str, Any]]) -> HTMLResponse:
    nonce = secrets.token_urlsafe(18)
    rows = "\n".join(_row(e) for e in endpoints)
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rerank-proxy</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">body{{font:15px system-ui,sans-serif;margin:2rem auto;max-width:62rem;color:#1d2430;
padding:0 1rem}}table{{border-collapse:collapse;width:100%}}
td,th{{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #dde}}</style>
</head><body><h1>rerank-proxy {html.escape(__version__)}</h1>
<p>Searches sent to this address go to the engine and come back reranked; these are the proxy's own
endpoints. Open the <a href="{CONSOLE_PATH}">relevance console</a> (it asks for the admin token,
or use the console URL from the start-up log, which carries it).</p>
<table><thead><tr><th>path</th><th>methods</th><th>needs</th><th>what</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>"""
    headers = {"content-security-policy": f"default-src 'none'; style-src 'nonce-{nonce}'; base-uri 'none'; "
                                          "form-action 'none'; frame-ancestors 'none'",
               "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
    return HTMLResponse(body, headers=headers)
