"""The metrics endpoint as Prometheus itself sees it: Debian's promtool lints the exposition, a real
Prometheus server (on a loopback port, its own temp storage) scrapes the proxy and answers PromQL,
and a multi-worker `rerank-proxy serve` answers every scrape with the whole process tree's counts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from rerank_proxy.scoring.providers.resilience import ResilientReranker
from tests.fixtures.proxy import free_port, proxy_settings, run_proxy
from tests.fixtures.tools import DeployTools
from tests.support_data import load_corpus
from tests.support_rerankers import OverlapReranker
from tests.support_wait import wait_until

CHART_FILES = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "rerank-proxy" / "files"
DASHBOARD, ALERTS = CHART_FILES / "dashboard.json", CHART_FILES / "alerts.yaml"
HIT_RATIO = ('sum(increase(rerank_proxy_cache_lookups_total{result=~"hit|coalesced"}[5m]))'
             ' / sum(increase(rerank_proxy_cache_lookups_total[5m]))')
RERANKED_RATE = 'sum(rate(rerank_proxy_requests_total{outcome=~"reranked|cached"}[5m]))'


def families(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def promtool_check_metrics(tools: DeployTools, text: str) -> subprocess.CompletedProcess[str]:
    return tools.run("promtool", "check", "metrics", stdin_text=text)


@contextmanager
def run_prometheus(tools: DeployTools, tmp_path: Path, target: str,
                   metrics_path: str = "/_rerank/metrics") -> Iterator[str]:
    """A Prometheus server scraping `target` every second; yields its URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rerank-proxy
    metrics_path: {metrics_path}
    static_configs:
      - targets: ["{target}"]
""")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([tools.path("prometheus"), f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                             stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "prometheus to become ready", timeout_s=60, interval_s=0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def query(url: str, promql: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def wait_for_value(url: str, promql: str, expected: float, deadline_s: float = 60) -> None:
    """Until Prometheus has scraped what the proxy already counted (an observable effect)."""
    last: list[dict] = []

    def reached() -> bool:
        last[:] = query(url, promql)
        return bool(last) and float(last[0]["value"][1]) == expected

    wait_until(reached, lambda: f"{promql} to reach {expected} (last answer: {last})", deadline_s, interval_s=0.2)


def own_value(text: str, sample: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample))


@pytest.fixture
def metered_proxy(engine):
    settings = proxy_settings(engine.url, RERANK_MAX_RETRIES="0")
    reranker = ResilientReranker(OverlapReranker(), settings)
    with run_proxy(settings, reranker=reranker) as running:
        yield running


def test_every_family_once_and_promtool_accepts_it(metered_proxy, engine, index_name, deploy_tools):
    load_corpus(engine.url, index_name)
    body = {"query": {"match": {"body": "engine"}}}
    for _ in range(2):
        httpx.post(f"{metered_proxy.url}/{index_name}/_search", json=body)
    text = httpx.get(f"{metered_proxy.url}/_rerank/metrics").text
    names = families(text)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for name in ("rerank_proxy_requests_total", "rerank_proxy_request_duration_seconds",
                 "rerank_proxy_cache_lookups_total", "rerank_proxy_provider_calls_total",
                 "rerank_proxy_provider_documents_total", "rerank_proxy_provider_billed_units_total",
                 "rerank_proxy_provider_errors_total", "rerank_proxy_breaker_state", "rerank_proxy_engine_up",
                 "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in names, name
    # documents sent and billed units have one name each (the cache's copies are not exported)
    assert not [n for n in names if n.endswith(("documents_sent_total", "_billed_units_total"))
                and n != "rerank_proxy_provider_billed_units_total"]
    checked = promtool_check_metrics(deploy_tools, text)
    assert checked.returncode == 0, checked
    assert not checked.stdout.strip(), checked
    assert not checked.stderr.strip(), checked


def test_promtool_rejects_a_duplicate_family(deploy_tools):
    """The check above is able to fail: the exposition this issue started from is refused."""
    duplicated = ("# HELP x_total a\n# TYPE x_total counter\nx_total 1\n"
                  "# HELP x_total a\n# TYPE x_total counter\nx_total 2\n")
    assert promtool_check_metrics(deploy_tools, duplicated).returncode != 0


def test_a_real_prometheus_scrapes_and_answers_promql(metered_proxy, engine, index_name, tmp_path, deploy_tools):
    load_corpus(engine.url, index_name)
    target = f"127.0.0.1:{metered_proxy.port}"
    with run_prometheus(deploy_tools, tmp_path, target) as prometheus:
        wait_for_value(prometheus, 'up{job="rerank-proxy"}', 1)
        # misses first, then the same search again: every score from the cache
        body = {"query": {"match": {"body": "engine"}}}
        first = httpx.post(f"{metered_proxy.url}/{index_name}/_search", json=body)
        assert first.headers["x-rerank"] == "reranked"
        misses = own_value(httpx.get(f"{metered_proxy.url}/_rerank/metrics").text,
                           'rerank_proxy_cache_lookups_total{result="miss"}')
        assert misses > 0
        wait_for_value(prometheus, 'sum(rerank_proxy_cache_lookups_total{result="miss"})', misses)
        second = httpx.post(f"{metered_proxy.url}/{index_name}/_search", json=body)
        assert second.headers["x-rerank"] == "cached"
        wait_for_value(prometheus, 'sum(rerank_proxy_cache_lookups_total{result="hit"})', misses)
        # one scrape carries every series, so increase()'s extrapolation cancels out in the ratio
        ratio = query(prometheus, HIT_RATIO)
        assert ratio, ratio
        assert abs(float(ratio[0]["value"][1]) - 0.5) < 1e-9, ratio
        rate = query(prometheus, RERANKED_RATE)
        assert rate, rate
        assert float(rate[0]["value"][1]) > 0, rate
        engine_up = query(prometheus, "max(rerank_proxy_engine_up)")
        assert float(engine_up[0]["value"][1]) == 1
        # the dashboard's and the alerts' queries run, on metrics the proxy really exports
        exported = set(families(httpx.get(f"{metered_proxy.url}/_rerank/metrics").text))
        for expr in dashboard_and_alert_exprs():
            response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
            assert response.status_code == 200, (expr, response.text)
            assert response.json()["status"] == "success", (expr, response.text)
            for name in re.findall(r"(?<![:\w])(?:rerank_proxy|process)_[a-z_]+", expr):
                assert re.sub(r"_(bucket|count|sum)$", "", name) in exported, (name, expr)


def dashboard_and_alert_exprs() -> list[str]:
    """Every PromQL of the dashboard (its variables filled in) and of the rules file."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"].replace("$job", ".+").replace("$__rate_interval", "1m")
             for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load(ALERTS.read_text())
    return exprs + [r["expr"] for g in rules["groups"] for r in g["rules"]]


@contextmanager
def serve(engine_url: str, workers: int) -> Iterator[str]:
    """`rerank-proxy serve` as a production container runs it, with `workers` processes."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RERANK_", "UPSTREAM_"))}
    env.update({"UPSTREAM_URLS": engine_url, "RERANK_PROVIDER": "none", "PORT": str(port),
                "WORKERS": str(workers), "LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    stderr = proc.stderr
    assert stderr is not None  # stderr=PIPE

    def all_workers_report() -> bool:
        assert proc.poll() is None, stderr.read().decode()
        try:
            metrics = httpx.get(f"{url}/_rerank/metrics", timeout=5).text
        except httpx.TransportError:
            return False
        return own_value(metrics, "rerank_proxy_workers ") == workers

    try:
        wait_until(all_workers_report, "every worker to start", timeout_s=120, interval_s=0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, stderr.read().decode()


def test_every_scrape_sees_every_worker(engine, deploy_tools):
    workers, requests = 3, 30
    with serve(engine.url, workers) as url, httpx.Client() as client:
        for _ in range(requests):  # a new connection each time: the kernel spreads them over workers
            assert client.get(f"{url}/_cluster/health", headers={"Connection": "close"}).status_code == 200
        for _ in range(10):  # whichever worker answers the scrape, it reports all of them
            response = client.get(f"{url}/_rerank/metrics", headers={"Connection": "close"})
            text = response.text
            assert own_value(text, 'rerank_proxy_requests_total{outcome="passthrough",status="2xx"}') == requests
            assert own_value(text, "rerank_proxy_workers ") == workers
            names = families(text)
            assert len(names) == len(set(names))
        checked = promtool_check_metrics(deploy_tools, text)
        assert checked.returncode == 0, checked
        assert own_value(text, "process_cpu_seconds_total ") > 0


def test_merged_exposition_sums_counters_and_keeps_gauge_rules(deploy_tools):
    from prometheus_client.parser import text_string_to_metric_families

    from rerank_proxy.admin.peers import merge, render, snapshot

    one = ("# HELP r_total r\n# TYPE r_total counter\nr_total{o=\"a\"} 2.0\n"
           "# HELP b b\n# TYPE b gauge\nb 0.0\n# HELP rerank_proxy_breaker_state s\n"
           "# TYPE rerank_proxy_breaker_state gauge\nrerank_proxy_breaker_state 2.0\n"
           "# HELP process_start_time_seconds start\n# TYPE process_start_time_seconds gauge\n"
           "process_start_time_seconds 200.0\n")
    two = ("# HELP r_total r\n# TYPE r_total counter\nr_total{o=\"a\"} 3.0\nr_total{o=\"b\"} 1.0\n"
           "# HELP b b\n# TYPE b gauge\nb 5.0\n# HELP rerank_proxy_breaker_state s\n"
           "# TYPE rerank_proxy_breaker_state gauge\nrerank_proxy_breaker_state 0.0\n"
           "# HELP process_start_time_seconds start\n# TYPE process_start_time_seconds gauge\n"
           "process_start_time_seconds 100.0\n")
    groups = [snapshot(text_string_to_metric_families(text)) for text in (one, two)]
    text = render(merge(groups)).decode()
    assert 'r_total{o="a"} 5.0' in text
    assert 'r_total{o="b"} 1.0' in text
    assert "\nb 5.0" in text
    assert "process_start_time_seconds 100.0" in text
    assert "rerank_proxy_breaker_state 2.0" in text  # the worst worker's breaker
    assert promtool_check_metrics(deploy_tools, text).returncode == 0
