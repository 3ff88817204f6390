"""The reserved /_rerank/ endpoints, admin token rules, logs without secrets, graceful shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from rerank_proxy import __version__
from rerank_proxy.config import SETTING_PREFIXES, unknown_setting_warnings
from rerank_proxy.scoring.providers.resilience import ResilientReranker
from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import wait_until

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
    assert ready.status_code == 200
    assert ready.json()["engine"] == "reachable"
    assert ready.json()["reranker"]["breaker"] == "closed"
    assert httpx.get(f"{running.url}/_rerank/nothing-here").status_code == 404


def test_ready_without_an_engine_stays_ready_and_reports_it():
    """Readiness does not cascade: with the engine gone every pod still answers, engine-style."""
    settings = proxy_settings(f"http://127.0.0.1:{free_port()}")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        ready = httpx.get(f"{running.url}/_rerank/ready")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True
        assert ready.json()["engine"] == "unreachable"
        strict = httpx.get(f"{running.url}/_rerank/ready?engine=required")
        assert strict.status_code == 503
        assert strict.json()["ready"] is False
        error = httpx.get(f"{running.url}/_cluster/health")
        assert error.status_code == 502
        assert error.json()["error"]["type"] == "proxy_upstream_unavailable_exception"
        metrics = httpx.get(f"{running.url}/_rerank/metrics").text
        assert "\nrerank_proxy_engine_up 0.0\n" in metrics


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
    for name in ("rerank_proxy_request_duration_seconds_bucket", "rerank_proxy_engine_duration_seconds_count",
                 'rerank_proxy_cache_lookups_total{result="hit"}', "rerank_proxy_provider_calls_total",
                 "rerank_proxy_breaker_state", "rerank_proxy_in_flight_requests", "rerank_proxy_engine_up 1.0"):
        assert name in text, name


def test_admin_token_rules(admin_proxy):
    running, _ = admin_proxy
    url = f"{running.url}/_rerank/admin/config"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    config = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert config.status_code == 200
    assert config.json()["ADMIN_TOKEN"] == "<redacted>"
    assert config.json()["RERANK_API_KEY"] == "<redacted>"
    assert TOKEN not in config.text
    assert API_KEY not in config.text
    stats = httpx.get(f"{running.url}/_rerank/admin/cache", headers={"Authorization": f"Bearer {TOKEN}"})
    assert stats.status_code == 200
    assert "hits" in stats.json()


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
        assert response.status_code == 200
        assert response.headers["x-rerank"] == "fallback"
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
              headers={"X-Opaque-Id": "trace-1", "Authorization": f"Bearer {API_KEY}", "User-Agent": "app/1.2",
                       "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    # the line is written once the answer has gone out, in the proxy's thread: wait for it
    records = wait_until(lambda: [r for r in caplog.records if r.name == "rerank_proxy.access"
                                  and r.fields.get("request_id") == "trace-1"], "the access log line")
    fields = records[-1].fields
    assert fields["request_id"] == "trace-1"
    assert fields["status"] == 200
    assert fields["outcome"] == "passthrough"
    assert fields["traceparent"].startswith("00-0af7")
    assert fields["user_agent"] == "app/1.2"
    assert fields["client"].startswith("127.0.0.1:")
    # bytes as sent to the client (head and body), and the engine that served it
    assert fields["bytes"] > 100
    assert fields["upstream"] == engine.url.removeprefix("http://")
    from rerank_proxy.admin.logs import JsonFormatter

    line = JsonFormatter().format(records[-1])
    assert TOKEN not in line
    assert API_KEY not in line
    assert "timeout=5s" not in line

    from rerank_proxy.admin.logs import EcsFormatter

    ecs_line = EcsFormatter().format(records[-1])
    assert TOKEN not in ecs_line
    assert API_KEY not in ecs_line
    assert "timeout=5s" not in ecs_line
    ecs = json.loads(ecs_line)
    assert ecs["ecs"]["version"]
    assert ecs["@timestamp"].endswith("Z")
    assert ecs["message"] == "request"
    assert ecs["log"] == {"level": "info", "logger": "rerank_proxy.access"}
    assert ecs["http"] == {"request": {"method": "GET", "id": "trace-1"},
                           "response": {"status_code": 200, "bytes": fields["bytes"]}}
    assert ecs["destination"] == {"address": fields["upstream"]}
    assert ecs["url"] == {"path": "/_cluster/health"}
    assert isinstance(ecs["event"]["duration"], int)
    assert ecs["event"]["duration"] > 0
    assert ecs["trace"] == {"id": "0af7651916cd43dd8448eb211c80319c"}
    assert ecs["rerank"]["outcome"] == "passthrough"
    assert ecs["user_agent"] == {"original": "app/1.2"}
    assert ecs["client"]["address"].startswith("127.0.0.1:")


def test_a_reranked_search_names_the_engine_that_answered_its_candidates(admin_proxy, engine, index_name, caplog):
    running, _ = admin_proxy
    load_corpus(engine.url, index_name)
    caplog.set_level(logging.INFO, logger="rerank_proxy.access")
    response = httpx.post(f"{running.url}/{index_name}/_search", json={"query": {"match": {"body": "wing"}}},
                          headers={"X-Opaque-Id": "reranked-1"})
    assert response.headers["x-rerank"] == "reranked"
    records = wait_until(lambda: [r for r in caplog.records if r.name == "rerank_proxy.access"
                                  and r.fields.get("request_id") == "reranked-1"], "the search's access line")
    fields = records[-1].fields
    assert fields["outcome"] == "reranked"
    assert fields["upstream"] == engine.url.removeprefix("http://")


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


def serve_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update({"PORT": str(free_port()), "LOG_LEVEL": "info", **settings})
    return env


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[dict]]:
    """`rerank-proxy serve` until its "listening" line; returns the process and its log lines so far."""
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"msg": raw.strip()})
            if "listening" in (lines[-1].get("msg"), lines[-1].get("message")):
                listening.set()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    assert listening.wait(120), lines
    assert proc.poll() is None, lines
    return proc, lines


def test_startup_names_misspelt_settings_and_states_what_it_runs():
    env = serve_env(UPSTREAM_URLS=f"http://127.0.0.1:{free_port()}", RERANK_PROVIDER="compatible",
                    RERANK_BASE_URL=f"http://127.0.0.1:{free_port()}", RERANK_MODEL="bge-reranker-v2-m3",
                    RERANK_INDICES="products*,docs", RERANK_SCORE_MODE="rerank",
                    REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_TIMEOUT_MS="200",
                    RERANK_WINDWO="50", RERANK_PROVDER="cohere", RERANK_PROXY_SERVICE_HOST="10.0.0.1", WORKERS="2")
    proc, lines = start_serve(env)
    try:
        messages = [line.get("msg", "") for line in lines]
        assert "RERANK_PROVDER is not a setting and is ignored; did you mean RERANK_PROVIDER?" in messages
        assert "RERANK_WINDWO is not a setting and is ignored; did you mean RERANK_WINDOW?" in messages
        assert not [m for m in messages if "RERANK_PROXY_SERVICE_HOST" in m]  # a Kubernetes service link
        assert any("shared cache (REDIS_URL) unreachable at start-up" in m for m in messages)
        started = next(line for line in lines if line.get("msg") == "listening")
        assert started["provider"] == "compatible"
        assert started["model"] == "bge-reranker-v2-m3"
        assert started["window"] == 100
        assert started["score_mode"] == "rerank"
        assert started["indices"] == ["products*", "docs"]
        assert started["cache_tiers"] == ["memory", "host", "redis"]
        workers = next(line for line in lines if line.get("msg") == "workers")
        assert workers["workers"] == 2
        assert workers["why"] == "WORKERS=2"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize(("env", "message"), [
    ({"RERANK_TEMPLATE": "title: {title"}, "RERANK_TEMPLATE='title: {title': malformed template"),
    ({"RERANK_RULES": '[{"index": "p*", "template": "{name}}"}]'}, "rule 0: malformed template"),
    ({"LOCAL_VECTOR_STORE": "/dev/null/vectors.sqlite"}, "LOCAL_VECTOR_STORE='/dev/null/vectors.sqlite'"),
])
def test_configuration_errors_stop_serve_with_one_exit_code(env, message):
    base = {"RERANK_PROVIDER": "local" if "LOCAL_VECTOR_STORE" in env else "none"}
    completed = subprocess.run([sys.executable, "-m", "rerank_proxy.cli", "serve"], capture_output=True, text=True,
                               env=serve_env(**base, **env), timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("rerank-proxy: configuration error: ")
    assert message in completed.stderr


def test_version():
    completed = subprocess.run([sys.executable, "-m", "rerank_proxy.cli", "--version"], capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"rerank-proxy {__version__}"


def test_unknown_setting_warnings_leave_other_variables_alone():
    env = {"RERANK_WINDOW": "5", "RERANK_API_KEY_FILE": "/x", "RERANK_TIMOUT_MS": "1", "PATH": "/bin",
           "REDIS_PORT_6379_TCP_ADDR": "10.0.0.2", "REDIS_SERVICE_PORT": "6379", "HOME": "/root"}
    assert unknown_setting_warnings(env) == ["RERANK_TIMOUT_MS is not a setting and is ignored"
                                             "; did you mean RERANK_ATTEMPT_TIMEOUT_MS?"]


def test_serve_logs_in_ecs_when_asked():
    proc, lines = start_serve(serve_env(UPSTREAM_URLS=f"http://127.0.0.1:{free_port()}", RERANK_PROVIDER="none",
                                        LOG_FORMAT="ecs"))
    try:
        started = next(line for line in lines if line.get("message") == "listening")
        assert started["log"]["level"] == "info"
        assert started["ecs"]["version"]
        assert started["rerank"]["provider"] == "none"
        assert started["process"]["pid"] > 0
        assert started["server"]["address"] == "127.0.0.1"
        assert started["service"]["version"] == __version__
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
