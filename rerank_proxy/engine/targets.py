"""One configured engine: where to connect, what to put in Host, credentials, TLS, health."""

from __future__ import annotations

import base64
import ssl
import time
from urllib.parse import urlsplit

from rerank_proxy.config import Settings

# An engine that refused a connection is tried last for this long (passive health check).
DOWN_FOR_S = 2.0


class Target:
    def __init__(self, configured: str, settings: Settings) -> None:
        parts = urlsplit(configured)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        if parts.port and parts.port != default_port:
            netloc += f":{parts.port}"
        self.host_header = netloc.encode("ascii")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self.name = f"{host}:{self.port}"   # for logs (ECS destination.address): never the credentials
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        self.authorization: bytes | None = None
        if parts.username is not None:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode("ascii")
            self.authorization = f"Basic {token}".encode("ascii")
        self.ssl: ssl.SSLContext | None = tls_context(settings) if self.tls else None
        self.down_until = 0.0

    @property
    def healthy(self) -> bool:
        return self.down_until <= time.monotonic()

    def mark_down(self) -> None:
        self.down_until = time.monotonic() + DOWN_FOR_S


def tls_context(settings: Settings) -> ssl.SSLContext:
    """UPSTREAM_CA_FILE / UPSTREAM_CLIENT_CERT_FILE / UPSTREAM_TLS_VERIFY as one SSL context."""
    context = ssl.create_default_context(cafile=settings.upstream_ca_file or None)
    if not settings.upstream_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.upstream_client_cert_file:
        context.load_cert_chain(settings.upstream_client_cert_file, settings.upstream_client_key_file or None)
    return context
