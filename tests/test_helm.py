"""The Helm chart (deploy/helm/rerank-proxy), its alert rules and its Grafana dashboard.

A real `helm` (built from its Go module by `make tools` into .tools/bin) lints and renders the
chart; kubernetes-validate checks the rendered core objects against the Kubernetes schemas;
promtool checks the PrometheusRule's rules and runs their unit tests. Our own assertions tie the
chart to the proxy: every setting is a value, the rendered settings load, secrets come from files,
probes hit the right endpoints, a changed setting changes the pod template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank_proxy.config import FILE_VARIANTS, SECRET_NAMES, SETTING_NAMES, load_settings
from tests.fixtures.tools import DeployTools, ok

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "rerank-proxy"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
EVERYTHING = ["--set", "redis.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
              "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true",
              "--set", "secrets.existingSecret=rerank-secrets", "--set", "secrets.keys.RERANK_API_KEY=api-key",
              "--set", "secrets.keys.ADMIN_TOKEN=admin-token"]


def render(tools: DeployTools, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The chart as `helm template` renders it with `args`: (kind, name) -> object."""
    out = ok(tools.run("helm", "template", "rp", str(CHART), "--namespace", "search", *args))
    docs = {}
    for doc in yaml.safe_load_all(out):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} rendered twice"
            docs[key] = doc
    return docs


def proxy_pod(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return docs[("Deployment", "rp-rerank-proxy")]["spec"]["template"]


def container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (only,) = proxy_pod(docs)["spec"]["containers"]
    return only


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_helm_lint_passes_with_defaults_and_with_everything_on(deploy_tools: DeployTools) -> None:
    ok(deploy_tools.run("helm", "lint", "--strict", str(CHART)))
    ok(deploy_tools.run("helm", "lint", "--strict", str(CHART), *EVERYTHING))


@pytest.mark.parametrize("version", [None, "1.29.0"])
def test_rendered_objects_match_the_kubernetes_schemas(tmp_path: Path, version: str | None,
                                                       deploy_tools: DeployTools) -> None:
    docs = render(deploy_tools, *EVERYTHING)
    assert {kind for kind, _ in docs} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "NetworkPolicy", *CRD_KINDS}
    core = tmp_path / "core.yaml"
    core.write_text(yaml.safe_dump_all([d for (kind, _), d in docs.items() if kind not in CRD_KINDS]))
    versions = ["--kubernetes-version", version] if version else []
    ok(deploy_tools.run("kubernetes-validate", "--strict", *versions, str(core)))


def test_every_setting_is_a_value_and_the_rendered_settings_load(tmp_path: Path, deploy_tools: DeployTools) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["settings"]) == SETTING_NAMES - SECRET_NAMES, "values.settings must list every setting"
    docs = render(deploy_tools, *EVERYTHING)
    data = docs[("ConfigMap", "rp-rerank-proxy")]["data"]
    env = {e["name"]: e["value"] for e in container(docs)["env"]}
    assert set(env) == {"RERANK_API_KEY_FILE", "ADMIN_TOKEN_FILE"}
    assert not set(data) & {f"{n}_FILE" for n in FILE_VARIANTS}
    files = {}
    for name, path in env.items():  # the mounted Secret's files, moved to tmp
        local = tmp_path / Path(path).name
        local.write_text("s3cret-" + name)
        files[name] = str(local)
    settings = load_settings({**data, **files})
    assert settings.host == "0.0.0.0"
    assert settings.rerank_api_key == "s3cret-RERANK_API_KEY_FILE"
    assert settings.redis_url == "redis://rp-rerank-proxy-redis:6379/0"


CLUSTER_SECRET = ["--set", "secrets.existingSecret=rerank-secrets", "--set", "secrets.keys.REDIS_URL=redis-url"]


def test_an_external_redis_cluster_comes_from_the_secret_and_sets_redis_cluster(tmp_path: Path,
                                                                                deploy_tools: DeployTools) -> None:
    docs = render(deploy_tools, "--set", "redis.external.cluster=true", *CLUSTER_SECRET)
    data = docs[("ConfigMap", "rp-rerank-proxy")]["data"]
    assert data["REDIS_CLUSTER"] == "true"
    assert "REDIS_URL" not in data  # the seed's URL (a password, maybe) is the Secret's file
    assert ("Deployment", "rp-rerank-proxy-redis") not in docs
    env = {e["name"]: e["value"] for e in container(docs)["env"]}
    seed = tmp_path / "REDIS_URL"
    seed.write_text("redis://redis-cluster-0.redis-cluster:6379/0")
    settings = load_settings({**data, "REDIS_URL_FILE": str(seed)})
    assert env["REDIS_URL_FILE"].endswith("/REDIS_URL")
    assert settings.redis_cluster is True
    assert settings.redis_url == "redis://redis-cluster-0.redis-cluster:6379/0"
    # the single-Redis options stay as they were: the chart's own Redis, or an external one
    for single in (render(deploy_tools, "--set", "redis.enabled=true"), render(deploy_tools, *CLUSTER_SECRET)):
        assert single[("ConfigMap", "rp-rerank-proxy")]["data"]["REDIS_CLUSTER"] == "false"
    assert render(deploy_tools, "--set", "redis.enabled=true")[("ConfigMap", "rp-rerank-proxy")]["data"][
        "REDIS_URL"] == "redis://rp-rerank-proxy-redis:6379/0"


@pytest.mark.parametrize(("args", "said"), [
    (["--set", "redis.external.cluster=true"], "secrets.keys.REDIS_URL"),
    (["--set", "redis.external.cluster=true", "--set", "redis.enabled=true", *CLUSTER_SECRET], "not a Redis Cluster"),
    (["--set", "settings.REDIS_CLUSTER=true", "--set", "redis.enabled=true"], "not a Redis Cluster"),
])
def test_a_redis_cluster_without_its_url_or_on_the_charts_own_redis_is_refused(args: list[str], said: str,
                                                                               deploy_tools: DeployTools) -> None:
    refused = deploy_tools.run("helm", "template", "rp", str(CHART), *args)
    assert refused.returncode != 0
    assert said in refused.stderr


def test_secrets_are_files_from_an_existing_secret(deploy_tools: DeployTools) -> None:
    docs = render(deploy_tools, *EVERYTHING)
    pod = proxy_pod(docs)["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    assert volume["secretName"] == "rerank-secrets"
    assert volume["items"] == [{"key": "admin-token", "path": "ADMIN_TOKEN"},
                               {"key": "api-key", "path": "RERANK_API_KEY"}]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "secrets")
    assert mount["readOnly"] is True
    for entry in container(docs)["env"]:
        assert entry["value"] == f"{mount['mountPath']}/{entry['name'].removesuffix('_FILE')}"
    refused = deploy_tools.run("helm", "template", "rp", str(CHART), "--set", "secrets.keys.ADMIN_TOKEN=x")
    assert refused.returncode != 0
    assert "existingSecret" in refused.stderr
    assert "ADMIN_TOKEN" not in docs[("ConfigMap", "rp-rerank-proxy")]["data"]  # the Secret's file serves
    defaults = render(deploy_tools)
    # no Secret's token: admin off, not a token per replica printed in pod logs
    assert defaults[("ConfigMap", "rp-rerank-proxy")]["data"]["ADMIN_TOKEN"] == "off"
    assert "env" not in container(defaults)
    assert "secrets" not in {v["name"] for v in proxy_pod(defaults)["spec"]["volumes"]}


def test_probes_security_context_resources_and_drain(deploy_tools: DeployTools) -> None:
    docs = render(deploy_tools)
    c = container(docs)
    pod = proxy_pod(docs)["spec"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/_rerank/health", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/_rerank/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/_rerank/ready", "port": "http"}
    strict = container(render(deploy_tools, "--set", "readiness.requireEngine=true"))
    assert strict["readinessProbe"]["httpGet"]["path"] == "/_rerank/ready?engine=required"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/var/lib/rerank-proxy", "/tmp"}
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    sleep_s = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    data = docs[("ConfigMap", "rp-rerank-proxy")]["data"]
    assert pod["terminationGracePeriodSeconds"] > sleep_s + float(data["SHUTDOWN_GRACE_S"])
    too_short = deploy_tools.run("helm", "template", "rp", str(CHART), "--set", "terminationGracePeriodSeconds=25")
    assert too_short.returncode != 0
    assert "terminationGracePeriodSeconds" in too_short.stderr
    zones = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert zones == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for spread in pod["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"]["matchLabels"], proxy_pod(docs)["metadata"]["labels"])


def test_a_changed_setting_rolls_the_pods(deploy_tools: DeployTools) -> None:
    def checksum(*args: str) -> str:
        return proxy_pod(render(deploy_tools, *args))["metadata"]["annotations"]["checksum/config"]

    before = checksum()
    after = checksum("--set", "settings.RERANK_WINDOW=50")
    assert before != after
    assert before == checksum()


def test_service_hpa_pdb_redis_and_service_monitor_point_at_the_right_pods(deploy_tools: DeployTools) -> None:
    docs = render(deploy_tools, *EVERYTHING)
    pod_labels = proxy_pod(docs)["metadata"]["labels"]
    redis_labels = docs[("Deployment", "rp-rerank-proxy-redis")]["spec"]["template"]["metadata"]["labels"]
    service = docs[("Service", "rp-rerank-proxy")]
    assert selects(service["spec"]["selector"], pod_labels)
    assert not selects(service["spec"]["selector"], redis_labels)
    hpa = docs[("HorizontalPodAutoscaler", "rp-rerank-proxy")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rp-rerank-proxy"}
    assert "replicas" not in docs[("Deployment", "rp-rerank-proxy")]["spec"], "the HPA owns the replica count"
    assert docs[("Deployment", "rp-rerank-proxy")]["spec"].get("replicas") is None
    fixed = render(deploy_tools, "--set", "autoscaling.enabled=false")
    assert fixed[("Deployment", "rp-rerank-proxy")]["spec"]["replicas"] == 2
    pdb = docs[("PodDisruptionBudget", "rp-rerank-proxy")]["spec"]["selector"]["matchLabels"]
    assert selects(pdb, pod_labels)
    assert not selects(pdb, redis_labels)
    policy = docs[("NetworkPolicy", "rp-rerank-proxy-redis")]["spec"]
    assert selects(policy["podSelector"]["matchLabels"], redis_labels)
    assert selects(policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"], pod_labels)
    monitor = docs[("ServiceMonitor", "rp-rerank-proxy")]["spec"]
    assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["endpoints"] == [{"port": "http", "path": "/_rerank/metrics", "interval": "30s"}]
    assert {kind for kind, _ in render(deploy_tools)} == {"ConfigMap", "Deployment", "Service",
                                                          "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_prometheus_rule_carries_the_checked_rules(tmp_path: Path, deploy_tools: DeployTools) -> None:
    spec = render(deploy_tools, *EVERYTHING)[("PrometheusRule", "rp-rerank-proxy")]["spec"]
    assert spec == yaml.safe_load(ALERTS.read_text())
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    ok(deploy_tools.run("promtool", "check", "rules", str(rules)))
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {"RerankProxyFallbackRatioHigh", "RerankProxyBreakerOpen", "RerankProxyProviderErrors",
                      "RerankProxyProviderLatencyHigh", "RerankProxyCacheHitRatioCollapse",
                      "RerankProxyEngineUnreachable", "RerankProxyServerErrors"}


def test_alert_rules_pass_their_unit_tests(deploy_tools: DeployTools) -> None:
    out = ok(deploy_tools.run("promtool", "test", "rules", str(ALERT_TESTS)))
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    defined = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    assert defined <= tested, f"alerts without a unit test: {defined - tested}"


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_is_a_well_formed_grafana_dashboard(deploy_tools: DeployTools) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat")
        assert panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["w"] > 0
        assert grid["x"] + grid["w"] <= 24
        assert grid["h"] > 0
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        assert panel["targets"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], f"{panel['title']}: not filtered by $job"
    # the signals the alerts watch each have a panel
    text = " ".join(dashboard_exprs())
    for metric in ("rerank_proxy_fallbacks_total", "rerank_proxy_breaker_state", "rerank_proxy_provider_errors_total",
                   "rerank_proxy_rerank_duration_seconds_bucket", "rerank_proxy_cache_lookups_total",
                   "rerank_proxy_engine_up", 'status="5xx"'):
        assert metric in text, metric
    # replicas: each one's cache hit ratio, and the shared tier's errors, by instance
    by_instance = [e for e in dashboard_exprs() if e.startswith("sum by (instance)")]
    assert any("rerank_proxy_cache_lookups_total" in e and 'result=~"hit|coalesced"' in e for e in by_instance)
    assert any("rerank_proxy_cache_shared_errors_total" in e for e in by_instance)
    configmap = render(deploy_tools, *EVERYTHING)[("ConfigMap", "rp-rerank-proxy-dashboard")]
    assert json.loads(configmap["data"]["rerank-proxy.json"]) == dashboard
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
