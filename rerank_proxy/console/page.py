"""The console's single HTML page, with its CSS and JS inlined, and the token login form.

Inlining means one request loads everything: nothing is fetched from anywhere else (no CDN), and
the script/style need no separate authenticated requests (a browser cannot attach a bearer token
to `<script src>`). A per-response nonce and a strict Content-Security-Policy make the browser
refuse any other script, style or network destination than the proxy itself.

Assets are read with importlib.resources, so this works from an installed wheel as from a checkout.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from importlib import resources

from starlette.responses import HTMLResponse, Response

CONSOLE_PATH = "/_rerank/console"
PAGE_COOKIE = "rerank_console_page"
_COOKIE_CONTEXT = b"rerank-proxy console page v1"


@functools.cache
def _asset(name: str) -> str:
    return (resources.files("rerank_proxy.console") / "static" / name).read_text(encoding="utf-8")


def _headers(nonce: str) -> dict[str, str]:
    policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
              "connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'self'; "
              "frame-ancestors 'none'")
    return {"content-security-policy": policy, "cache-control": "no-store", "referrer-policy": "no-referrer",
            "x-content-type-options": "nosniff", "x-frame-options": "DENY"}


def page() -> HTMLResponse:
    """The console, CSS and JS inlined under a fresh nonce."""
    nonce = secrets.token_urlsafe(18)
    script = _asset("console.js")
    if "</script" in script.lower():  # would end the inline block early
        raise RuntimeError("console.js must not contain a closing script tag")
    html = (_asset("console.html")
            .replace("{{NONCE}}", nonce)
            .replace("/*{{CONSOLE_CSS}}*/", _asset("console.css"))
            .replace("/*{{CONSOLE_JS}}*/", script))
    return HTMLResponse(html, headers=_headers(nonce))


def login(rejected: bool = False) -> HTMLResponse:
    """A token form for a browser that arrived without one; it shows nothing of the console."""
    nonce = secrets.token_urlsafe(18)
    note = "<p role=\"alert\"><strong>That token was not accepted.</strong></p>" if rejected else ""
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rerank-proxy console: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">body{{font:15px system-ui,sans-serif;margin:4rem auto;max-width:26rem;color:#1d2430}}
input,button{{font:inherit;padding:.45rem .6rem}}input{{width:100%;box-sizing:border-box;margin:.6rem 0}}</style>
</head><body><h1>Relevance console</h1>
<p>Enter the proxy's admin token (ADMIN_TOKEN).</p>{note}
<form method="get" action="{CONSOLE_PATH}" autocomplete="off">
<input type="password" name="token" aria-label="admin token" autofocus required>
<button type="submit">Open the console</button></form></body></html>"""
    return HTMLResponse(html, 401, headers=_headers(nonce))


def _cookie_value(token: str) -> str:
    """Derived from the admin token (never the token itself), so the cookie cannot call the API."""
    return hmac.new(token.encode("utf-8"), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def cookie_matches(value: str, token: str) -> bool:
    return bool(value) and hmac.compare_digest(value.encode(), _cookie_value(token).encode())


def set_cookie(response: Response, token: str, *, secure: bool) -> None:
    """A session cookie for this path only: lets a reload show the page again (the API still
    needs the bearer token, which the page keeps in sessionStorage)."""
    response.set_cookie(PAGE_COOKIE, _cookie_value(token), path=CONSOLE_PATH, httponly=True,
                        samesite="strict", secure=secure)
