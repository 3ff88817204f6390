"""The pooled HTTP client to the engines: load spreading, failover and the retry rules.

Retry rules, the part that keeps writes safe:
- a connection that could not be opened never reached the engine, so any request may go to the
  next upstream, provided its body has not started streaming;
- a failure after the request may have reached the engine is retried only for idempotent requests
  (GET/HEAD and searches, whose bodies are buffered); a write is never sent twice;
- an upstream that refused a connection is skipped for a short while (passive health check).

The client is aiohttp's: measured side by side on this path (BENCHMARKS.md), httpx's pool added
about 0.6 ms per request at concurrency 1 and collapsed to a tenth of the throughput at
concurrency 32, while aiohttp stayed within 0.1 ms of a direct connection. Bodies are never
decompressed or re-encoded here: bytes go through as they came.
"""

from __future__ import annotations

import base64
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from rerank_proxy.config import Settings
from rerank_proxy.errors import ProxyError

# RFC 9110 section 7.6.1 plus the legacy names proxies have always dropped.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DOWN_FOR_S = 2.0
# aiohttp would add these when absent; a proxy forwards exactly what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def forwardable_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones (and those the Connection header names) and Host."""
    raw = list(raw)
    named: set[bytes] = set()
    for key, value in raw:
        if key.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return [(k, v) for k, v in raw
            if (lowered := k.lower()) not in HOP_BY_HOP and lowered not in named and lowered != b"host"]


Fetcher = Callable[[str, str, list[tuple[bytes, bytes]], bytes | None],
                   Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]


class FetchedResponse:
    """An engine response read whole by a fetcher (see `UpstreamPool.use_fetcher`)."""

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers


class UpstreamResponse:
    """An engine response whose body is still on the wire (stream it, or read it whole)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.raw_headers: list[tuple[bytes, bytes]] = list(response.raw_headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aread(self) -> bytes:
        return await self._response.read()

    async def aclose(self) -> None:
        self._response.release()


@dataclass(slots=True)
class _Upstream:
    url: str                                   # without credentials
    authorization: tuple[str, str] | None      # from credentials in UPSTREAM_URLS, if any
    down_until: float = 0.0

    @classmethod
    def parse(cls, configured: str) -> _Upstream:
        """Credentials in the URL become a Basic header used only when the client sends none."""
        url = URL(configured)
        if url.user is None:
            return cls(configured.rstrip("/"), None)
        token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode("ascii")
        return cls(str(url.with_user(None)).rstrip("/"), ("Authorization", f"Basic {token}"))


class UpstreamPool:
    """One pooled client for all engines; picks an upstream per request, round robin."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._upstreams = [_Upstream.parse(url) for url in settings.upstream_urls]
        self._next = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._fetcher: Fetcher | None = None

    def use_fetcher(self, fetcher: Fetcher) -> None:
        """Reads that are read whole (a search's candidates, probes) go through `fetcher`: the
        proxy's own server passes its relay pool here, which costs a fraction of aiohttp's CPU per
        request (BENCHMARKS.md section 8). Same failover and retry rules for reads."""
        self._fetcher = fetcher

    def _client(self) -> aiohttp.ClientSession:
        """Created on first use, inside the running event loop (aiohttp requires it)."""
        if self._session is None:
            settings = self._settings
            connector = aiohttp.TCPConnector(limit=settings.upstream_max_connections, limit_per_host=0,
                                             keepalive_timeout=30, ssl=tls_context(settings),
                                             enable_cleanup_closed=True)
            timeout = aiohttp.ClientTimeout(total=None, connect=settings.upstream_connect_timeout_s,
                                            sock_read=settings.upstream_timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                                  skip_auto_headers=_NO_AUTO_HEADERS, trust_env=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
            # aiohttp resends "idempotent" methods (PUT and DELETE included) once when a pooled
            # connection drops. `PUT /_create/1` is not safely repeatable, so the proxy makes
            # every retry decision itself (send() above); a test pins this down.
            self._session._retry_connection = False
        return self._session

    @property
    def urls(self) -> list[str]:
        return [u.url for u in self._upstreams]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _order(self) -> list[_Upstream]:
        """Upstreams to try for one request: round robin start, healthy ones first."""
        n = len(self._upstreams)
        start = next(self._next) % n
        rotated = self._upstreams[start:] + self._upstreams[:start]
        now = time.monotonic()
        return [u for u in rotated if u.down_until <= now] + [u for u in rotated if u.down_until > now]

    async def send(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                   content: bytes | AsyncIterator[bytes] | None, *, idempotent: bool) -> UpstreamResponse:
        """Send one request and return the streaming response (the caller must close it).

        `target` is the path plus query string exactly as the client sent it. `idempotent`
        requests with buffered bodies may be retried on another upstream after any transport
        failure; others only when the connection could not be opened before the body streamed.
        """
        streaming = content is not None and not isinstance(content, bytes)
        started = _StartFlag()
        if streaming:
            content = started.watch(content)  # type: ignore[arg-type]  # not bytes: an async body stream
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        has_auth = any(k.lower() == "authorization" for k, _ in str_headers)
        session = self._client()
        last_error: BaseException | None = None
        for upstream in self._order():
            url = URL(upstream.url + target, encoded=True)
            try:
                sent_headers = str_headers
                if upstream.authorization is not None and not has_auth:
                    sent_headers = [*str_headers, upstream.authorization]
                response = await session.request(method, url, headers=sent_headers, data=content,
                                                 allow_redirects=False, compress=None, chunked=None)
                return UpstreamResponse(response)
            except aiohttp.ClientConnectorError as exc:  # the connection was never opened
                upstream.down_until = time.monotonic() + _DOWN_FOR_S
                last_error = exc
                if streaming and started.started:
                    break
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                last_error = exc
                if not idempotent or streaming:
                    raise ProxyError(504, "proxy_upstream_timeout_exception",
                                     "the engine did not answer within UPSTREAM_TIMEOUT_S") from None
            except aiohttp.ClientError as exc:
                last_error = exc
                if not idempotent or streaming:
                    break
        reason = type(last_error).__name__ if last_error else "no upstream"
        raise ProxyError(502, "proxy_upstream_unavailable_exception", f"no engine could be reached ({reason})")

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                      content: bytes | None, *, idempotent: bool = True) -> tuple[UpstreamResponse, bytes]:
        """Send and read the whole body: for responses the proxy must parse."""
        if idempotent and self._fetcher is not None:
            status, headers, body = await self._fetcher(method, target, headers, content)
            return FetchedResponse(status, headers), body  # type: ignore[return-value]  # same interface as aiohttp's
        response = await self.send(method, target, headers, content, idempotent=idempotent)
        try:
            body = await response.aread()
        except (TimeoutError, aiohttp.ClientError):
            raise ProxyError(502, "proxy_upstream_unavailable_exception",
                             "the engine closed the connection mid-response") from None
        finally:
            await response.aclose()
        return response, body


class _StartFlag:
    """Remembers whether a request body began streaming (then it cannot be replayed)."""

    started = False

    async def watch(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            self.started = True
            yield chunk


def tls_context(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.upstream_tls_verify:
        return False
    context = ssl.create_default_context(cafile=settings.upstream_ca_file or None)
    if settings.upstream_client_cert_file:
        context.load_cert_chain(settings.upstream_client_cert_file, settings.upstream_client_key_file or None)
    return context
