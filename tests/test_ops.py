"""The reserved /_rerank/ endpoints, admin token rules, logs without secrets, graceful shutdown."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import httpx
import pytest

from rerank_proxy.scoring.providers.resilience import ResilientReranker
from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import wait_until

pytestmark = pytest.mark.integration
TOKEN = "adm-7f3c9e21-token"
API_KEY = "sk-live-cohere-key-0123456789abcdef"


@pytest.fixture
def admin_proxy(engine):
    settings = proxy_settings(engine.url, ADMIN_TOKEN=TOKEN, RERANK_BREAKER_FAILURES="2",
                              RERANK_BREAKER_COOLDOWN_S="3600", RERANK_MAX_RETRIES="0")
    settings = settings.with_overrides(rerank_api_key=API_KEY)
    reranker = ResilientReranker(OverlapReranker(), settings)
    with run_proxy(settings, reranker=reranker) as running:
        yield running, reranker


def test_health_and_ready(admin_proxy, engine):
    running, _ = admin_proxy
    assert httpx.get(f"{running.url}/_rerank/health").json() == {"status": "ok"}
    ready = httpx.get(f"{running.url}/_rerank/ready")
    assert ready.status_code == 200 and ready.json()["engine"] == "reachable"
    assert ready.json()["reranker"]["breaker"] == "closed"
    assert httpx.get(f"{running.url}/_rerank/nothing-here").status_code == 404


def test_ready_is_503_without_an_engine():
    settings = proxy_settings(f"http://127.0.0.1:{free_port()}")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        ready = httpx.get(f"{running.url}/_rerank/ready")
        assert ready.status_code == 503 and ready.json()["engine"] == "unreachable"
        error = httpx.get(f"{running.url}/_cluster/health")
        assert error.status_code == 502 and error.json()["error"]["type"] == "proxy_upstream_unavailable_exception"


def test_metrics_count_outcomes(admin_proxy, engine, index_name):
    running, _ = admin_proxy
    load_corpus(engine.url, index_name)
    body = {"query": {"match": {"body": "engine"}}}
    httpx.post(f"{running.url}/{index_name}/_search", json=body)
    httpx.post(f"{running.url}/{index_name}/_search", json=body)
    httpx.post(f"{running.url}/{index_name}/_search", json={**body, "size": 0})
    httpx.get(f"{running.url}/{index_name}/_doc/1")
    text = httpx.get(f"{running.url}/_rerank/metrics").text
    for outcome in ("reranked", "cached", "bypass", "passthrough"):
        assert f'rerank_proxy_requests_total{{outcome="{outcome}",status="2xx"}}' in text, outcome
    for name in ("rerank_proxy_request_seconds_bucket", "rerank_proxy_engine_seconds_count",
                 "rerank_proxy_cache_hit_ratio", "rerank_proxy_provider_calls_total",
                 "rerank_proxy_breaker_state", "rerank_proxy_in_flight_requests"):
        assert name in text, name


def test_admin_token_rules(admin_proxy):
    running, _ = admin_proxy
    url = f"{running.url}/_rerank/admin/config"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    config = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert config.status_code == 200
    assert config.json()["ADMIN_TOKEN"] == "<redacted>" and config.json()["RERANK_API_KEY"] == "<redacted>"
    assert TOKEN not in config.text and API_KEY not in config.text
    stats = httpx.get(f"{running.url}/_rerank/admin/cache", headers={"Authorization": f"Bearer {TOKEN}"})
    assert stats.status_code == 200 and "hits" in stats.json()


def test_admin_is_disabled_without_a_token(proxy):
    assert httpx.get(f"{proxy.url}/_rerank/admin/config").status_code == 404
    assert httpx.post(f"{proxy.url}/_rerank/admin/cache/flush",
                      headers={"Authorization": "Bearer anything"}).status_code == 404


def test_breaker_state_and_reset(admin_proxy, engine, index_name):
    running, reranker = admin_proxy
    load_corpus(engine.url, index_name)
    reranker.inner.fail = True
    for word in ("jet", "wing", "noise"):
        response = httpx.post(f"{running.url}/{index_name}/_search", json={"query": {"match": {"body": word}}})
        assert response.status_code == 200 and response.headers["x-rerank"] == "fallback"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{running.url}/_rerank/admin/breaker", headers=auth).json() == {"breaker": "open"}
    reranker.inner.fail = False
    reset = httpx.post(f"{running.url}/_rerank/admin/breaker/reset", headers=auth)
    assert reset.json() == {"breaker": "closed"}
    response = httpx.post(f"{running.url}/{index_name}/_search", json={"query": {"match": {"body": "flutter"}}})
    assert response.headers["x-rerank"] == "reranked"


def test_access_log_is_structured_and_has_no_secrets(admin_proxy, engine, caplog):
    running, _ = admin_proxy
    caplog.set_level(logging.INFO, logger="rerank_proxy.access")
    httpx.get(f"{running.url}/_cluster/health?timeout=5s",
              headers={"X-Opaque-Id": "trace-1", "Authorization": f"Bearer {API_KEY}",
                       "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    # the line is written once the answer has gone out, in the proxy's thread: wait for it
    records = wait_until(lambda: [r for r in caplog.records if r.name == "rerank_proxy.access"
                                  and r.fields.get("request_id") == "trace-1"], "the access log line")
    fields = records[-1].fields
    assert fields["request_id"] == "trace-1" and fields["status"] == 200 and fields["outcome"] == "passthrough"
    assert fields["traceparent"].startswith("00-0af7")
    from rerank_proxy.admin.logs import JsonFormatter

    line = JsonFormatter().format(records[-1])
    assert TOKEN not in line and API_KEY not in line and "timeout=5s" not in line


def test_graceful_shutdown_finishes_a_request_in_flight(engine, index_name):
    load_corpus(engine.url, index_name)
    reranker = OverlapReranker(delay_s=1.0)  # the provider is slow; the request is in flight
    result: dict = {}
    with run_proxy(proxy_settings(engine.url, SHUTDOWN_GRACE_S="10"), reranker=reranker) as running:
        def search() -> None:
            result["response"] = httpx.post(f"{running.url}/{index_name}/_search",
                                            json={"query": {"match": {"body": "jet"}}}, timeout=30)

        thread = threading.Thread(target=search)
        thread.start()
        while reranker.calls == 0:  # wait until the request is inside the proxy
            thread.join(0.01)
        running.stop()             # shutdown starts while the search waits on the provider
        thread.join()
    assert result["response"].status_code == 200
    assert result["response"].headers["x-rerank"] == "reranked"


def test_bad_configuration_stops_serve_with_one_line():
    completed = subprocess.run([sys.executable, "-m", "rerank_proxy.cli", "serve"], capture_output=True, text=True,
                               env={"RERANK_WINDOW": "lots", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.strip() == ("rerank-proxy: configuration error: RERANK_WINDOW='lots': not an integer; "
                                        "accepted: an integer from 1 to 10000")
