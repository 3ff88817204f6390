"""The pooled HTTP client to the engines: load spreading, failover and the retry rules.

Retry rules, the part that keeps writes safe:
- a connection that could not be opened never reached the engine, so any request may go to the
  next upstream, provided its body has not started streaming;
- a failure after the request may have reached the engine is retried only for idempotent requests
  (GET/HEAD and searches, whose bodies are buffered); a write is never sent twice;
- an upstream that refused a connection is skipped for a short while (passive health check).
"""

from __future__ import annotations

import itertools
import ssl
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterable

import httpx

from .config import Settings
from .errors import ProxyError

# RFC 9110 section 7.6.1 plus the legacy names proxies have always dropped.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DOWN_FOR_S = 2.0


def forwardable_headers(raw: Iterable[tuple[bytes, bytes]], *, drop_length: bool = False) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones (and those the Connection header names) and Host."""
    raw = list(raw)
    named: set[bytes] = set()
    for key, value in raw:
        if key.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    out = []
    for key, value in raw:
        lowered = key.lower()
        if lowered.decode("latin-1") in HOP_BY_HOP or lowered in named or lowered == b"host":
            continue
        if drop_length and lowered == b"content-length":
            continue
        out.append((key, value))
    return out


@dataclass(slots=True)
class _Upstream:
    url: str
    down_until: float = 0.0


class UpstreamPool:
    """One pooled httpx client for all engines; picks an upstream per request, round robin."""

    def __init__(self, settings: Settings) -> None:
        self._upstreams = [_Upstream(url) for url in settings.upstream_urls]
        self._next = itertools.count()
        limits = httpx.Limits(max_connections=settings.upstream_max_connections,
                              max_keepalive_connections=settings.upstream_max_connections,
                              keepalive_expiry=30.0)
        timeout = httpx.Timeout(settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s,
                                pool=settings.upstream_timeout_s)
        self._client = httpx.AsyncClient(limits=limits, timeout=timeout, verify=_tls_context(settings),
                                         follow_redirects=False, trust_env=False)
        # httpx adds Accept, Accept-Encoding, User-Agent and Connection by default; a proxy must
        # forward exactly what the client sent, so none of those are added.
        for name in list(self._client.headers):
            del self._client.headers[name]

    @property
    def urls(self) -> list[str]:
        return [u.url for u in self._upstreams]

    async def aclose(self) -> None:
        await self._client.aclose()

    def _order(self) -> list[_Upstream]:
        """Upstreams to try for one request: round robin start, healthy ones first."""
        n = len(self._upstreams)
        start = next(self._next) % n
        rotated = self._upstreams[start:] + self._upstreams[:start]
        now = time.monotonic()
        return [u for u in rotated if u.down_until <= now] + [u for u in rotated if u.down_until > now]

    async def send(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                   content: bytes | AsyncIterator[bytes] | None, *, idempotent: bool) -> httpx.Response:
        """Send one request and return the streaming response (the caller must close it).

        `target` is the path plus query string exactly as the client sent it. `idempotent`
        requests with buffered bodies may be retried on another upstream after any transport
        failure; others only when the connection could not be opened before the body streamed.
        """
        streaming = content is not None and not isinstance(content, bytes)
        started = _StartFlag()
        if streaming:
            content = started.watch(content)  # type: ignore[arg-type]
        last_error: Exception | None = None
        for upstream in self._order():
            request = self._client.build_request(method, upstream.url + target, headers=headers,
                                                 content=content)
            try:
                return await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                upstream.down_until = time.monotonic() + _DOWN_FOR_S
                last_error = exc
                if streaming and started.started:
                    break
            except httpx.TimeoutException as exc:
                last_error = exc
                if not idempotent or streaming:
                    raise ProxyError(504, "proxy_upstream_timeout_exception",
                                     f"the engine did not answer within the timeout ({type(exc).__name__})") from None
            except (httpx.TransportError, httpx.PoolTimeout) as exc:
                last_error = exc
                if not idempotent or streaming:
                    break
        reason = type(last_error).__name__ if last_error else "no upstream"
        raise ProxyError(502, "proxy_upstream_unavailable_exception",
                         f"no engine could be reached ({reason})")

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                      content: bytes | None, *, idempotent: bool = True) -> tuple[httpx.Response, bytes]:
        """Send and read the whole (raw, still encoded) body: for responses the proxy must parse."""
        response = await self.send(method, target, headers, content, idempotent=idempotent)
        try:
            body = await response.aread()
        except httpx.TransportError:
            await response.aclose()
            raise ProxyError(502, "proxy_upstream_unavailable_exception",
                             "the engine closed the connection mid-response") from None
        return response, body


class _StartFlag:
    """Remembers whether a request body began streaming (then it cannot be replayed)."""

    started = False

    async def watch(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            self.started = True
            yield chunk


def _tls_context(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.upstream_tls_verify:
        return False
    context = ssl.create_default_context(cafile=settings.upstream_ca_file or None)
    if settings.upstream_client_cert_file:
        context.load_cert_chain(settings.upstream_client_cert_file, settings.upstream_client_key_file or None)
    return context
