"""TLS to the upstream: CA verification and client certificates, against a real local TLS endpoint.

The endpoint is uvicorn serving HTTPS with certificates from a throwaway CA (trustme); it answers
like an engine's health endpoint and reports whether the proxy presented a client certificate.
"""

from __future__ import annotations

import ssl
import threading

import httpx
import pytest
import trustme
import uvicorn

from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker
from tests.support_wait import wait_until


async def engine_like(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"cluster_name":"tls-test","status":"green"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("rerank-proxy-client")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    server_cert.private_key_and_cert_chain_pem.write_to_path(paths["server"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    port = free_port()
    config = uvicorn.Config(engine_like, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            ssl_certfile=str(paths["server"]), ssl_ca_certs=str(paths["ca"]),
                            ssl_cert_reqs=ssl.CERT_REQUIRED)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the TLS engine stand-in to start")
    yield f"https://127.0.0.1:{port}", paths
    server.should_exit = True
    thread.join(10)


def test_verified_tls_with_client_certificate(tls_endpoint):
    url, paths = tls_endpoint
    settings = proxy_settings(url, UPSTREAM_CA_FILE=str(paths["ca"]), UPSTREAM_CLIENT_CERT_FILE=str(paths["client"]))
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        response = httpx.get(f"{running.url}/_cluster/health")
        assert response.status_code == 200
        assert response.json()["cluster_name"] == "tls-test"


def test_unknown_ca_is_refused(tls_endpoint):
    url, paths = tls_endpoint
    settings = proxy_settings(url, UPSTREAM_CLIENT_CERT_FILE=str(paths["client"]))
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        response = httpx.get(f"{running.url}/_cluster/health")
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "proxy_upstream_unavailable_exception"


def test_missing_client_certificate_is_refused(tls_endpoint):
    url, paths = tls_endpoint
    settings = proxy_settings(url, UPSTREAM_CA_FILE=str(paths["ca"]))
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        assert httpx.get(f"{running.url}/_cluster/health").status_code == 502
