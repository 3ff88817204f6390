"""Request heads as the engine receives them: hop-by-hop headers dropped, framing the proxy's own.

No header the client sends (nor one the `Connection` header names) can remove or change how a
forwarded message is framed: the proxy re-frames every message itself, so the engine reads exactly
the body the proxy parsed, and nothing more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rerank_proxy.engine.targets import Target

# RFC 9110 section 7.6.1 plus the legacy names proxies have always dropped.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
# Dropped from requests besides the hop-by-hop ones: Host is the engine's; Expect is answered by the
# proxy itself (it sends 100 Continue when it starts reading the body); the proxy's own key stays here.
REQUEST_DROP = HOP_BY_HOP | {b"host", b"expect", b"x-proxy-api-key"}
# `Transfer-Encoding: gzip, chunked`: the engines (Netty) decode the first coding as a content coding
# when no Content-Encoding is sent; the proxy re-chunks the body, so it says so in Content-Encoding.
TRANSFER_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate"})
# What the engines authorise a request by, as headers: Basic/Bearer/ApiKey credentials, session
# cookies, run-as (Elasticsearch) and tenants (OpenSearch security). Whatever the proxy keeps for
# one request and reuses for another (text fields read from a mapping) is kept per these values.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie", b"es-security-runas-user", b"securitytenant",
                                b"security_tenant"})
# Named in `Connection`, these are still never dropped: framing is the proxy's, not the sender's.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def connection_named(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in `Connection` (hop-by-hop by declaration), framing excluded."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return named - FRAMING


def forwardable_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An engine answer's headers minus hop-by-hop ones (and those `Connection` names)."""
    raw = list(raw)
    named = connection_named(raw)
    return [(k, v) for k, v in raw
            if (lowered := k.lower()) not in HOP_BY_HOP and lowered not in named and lowered != b"host"]


def forward_request_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """Client headers to send on, the body framing they declare, and whether they ask 100-continue."""
    kept: list[tuple[bytes, bytes]] = []
    chunked = has_length = seen_length = expect = names_hops = has_coding = False
    transfer_coding = b""
    for name, value in headers:
        lowered = name.lower()
        if lowered in REQUEST_DROP:
            if lowered == b"transfer-encoding":
                if not chunked:
                    transfer_coding = value.split(b",", 1)[0].strip().lower()
                chunked = True
            elif lowered == b"expect":
                expect = value.strip().lower() == b"100-continue"
            elif lowered == b"connection":
                names_hops = True
            continue
        if lowered == b"content-length":
            # One Content-Length, re-written by the proxy: the parser accepted only digits (and
            # equal repeats), so the engine reads exactly the body the proxy parsed.
            if not seen_length:
                seen_length = True
                length = value.strip()
                has_length = length.lstrip(b"0") != b""
                kept.append((b"Content-Length", length))
            continue
        if lowered == b"content-encoding":
            has_coding = True
        kept.append((name, value))
    return _reframed(kept, headers, chunked, transfer_coding, has_coding, names_hops, has_length, expect)


def _reframed(kept: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]], chunked: bool,
              transfer_coding: bytes, has_coding: bool, names_hops: bool, has_length: bool,
              expect: bool) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """`forward_request_headers`' answer from what its one pass over the headers found: the kept
    headers, less a length next to chunking and what `Connection` names, and the framing."""
    if chunked:  # re-chunked by the relay; a length next to it is never trusted
        kept = [(k, v) for k, v in kept if k.lower() != b"content-length"]
        if transfer_coding in TRANSFER_CODINGS and not has_coding:
            kept.append((b"Content-Encoding", transfer_coding))
    if names_hops and (named := connection_named(headers)):
        kept = [(k, v) for k, v in kept if k.lower() not in named]
    framing = b"chunked" if chunked else b"length" if has_length else None
    return kept, framing, expect


def with_length(headers: list[tuple[bytes, bytes]], method: bytes, body: bytes,
                drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """`headers` framed for a body the proxy holds whole (a Content-Length of its own)."""
    kept = [(k, v) for k, v in headers if (lowered := k.lower()) not in REQUEST_DROP
            and lowered != b"content-length" and lowered not in drop]
    if body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        kept.append((b"Content-Length", b"%d" % len(body)))
    return kept


def request_head(target: Target, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                 framing: bytes | None) -> list[bytes]:
    """The request line and headers for `target`: its Host, and its credentials if the client
    sent no Authorization of its own."""
    head = [method, b" ", target.base_path, path, b" HTTP/1.1\r\nHost: ", target.host_header, b"\r\n"]
    has_auth = False
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
        if not has_auth and len(name) == 13 and name.lower() == b"authorization":
            has_auth = True
    if target.authorization is not None and not has_auth:
        head += (b"Authorization: ", target.authorization, b"\r\n")
    if framing == b"chunked":
        head.append(b"Transfer-Encoding: chunked\r\n")
    head.append(b"\r\n")
    return head


def credentials_of(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A digest of the request's credential headers: equal for requests the engine authorises alike
    (b"" when there are none, so anonymous requests share one key)."""
    found = sorted((k.lower(), v) for k, v in headers if k.lower() in CREDENTIAL_HEADERS)
    if not found:
        return b""
    digest = hashlib.sha256()
    for name, value in found:
        digest.update(len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value)
    return digest.digest()[:16]
