"""The chart's and the manifests' default WORKERS and the memory they request (deploy/README.md,
"Memory and workers"): a pod needs BASE_MIB + PER_WORKER_MIB per worker, and with WORKERS=auto its
worker count is its CPU limit rounded down (rerank_proxy/cpus.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank_proxy.config import SETTINGS
from tests.fixtures.tools import DeployTools
from tests.test_helm import CHART, container, render

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "deploy" / "README.md"
KUSTOMIZE = ROOT / "deploy" / "kubernetes"

# The README's figures (measured RSS per worker with the built-in model, plus the full score cache
# and answer memo; the supervisor and the stores' page cache): keep them and the README together.
BASE_MIB = 64
PER_WORKER_MIB = 320

_MEMORY_UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 ** 2,
                 "k": 1e3 / 2 ** 20, "M": 1e6 / 2 ** 20, "G": 1e9 / 2 ** 20, "": 1 / 2 ** 20}


def mib(quantity: str | int) -> float:
    """A Kubernetes memory quantity in MiB."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    return float(match[1]) * _MEMORY_UNITS[match[2]]


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def workers_in_pod(workers: str, resources: dict[str, Any]) -> int:
    """What `WORKERS` gives in a container with these resources: a number as written; auto is the
    CPU limit (the cgroup CPU quota) rounded down, at least 1, as cpus.usable_cpus counts it."""
    if workers.strip().lower() != "auto":
        return int(workers)
    assert "cpu" in resources.get("limits", {}), "WORKERS=auto without a CPU limit: one worker per node CPU"
    return max(1, math.floor(cpus(resources["limits"]["cpu"])))


def need_mib(workers: int) -> int:
    return BASE_MIB + PER_WORKER_MIB * workers


def check_memory(workers_setting: str, resources: dict[str, Any]) -> int:
    workers = workers_in_pod(workers_setting, resources)
    for kind in ("requests", "limits"):
        assert mib(resources[kind]["memory"]) >= need_mib(workers), (
            f"{kind}.memory {resources[kind]['memory']} < {need_mib(workers)} MiB for {workers} workers "
            f"({BASE_MIB} + {PER_WORKER_MIB} x workers, deploy/README.md)")
    return workers


def test_the_readme_states_the_formula_the_tests_check() -> None:
    text = README.read_text()
    assert "## Memory and workers" in text
    assert f"memory = {BASE_MIB} MiB + {PER_WORKER_MIB} MiB x WORKERS" in text
    assert f"{PER_WORKER_MIB} MiB per worker" in text


def test_the_product_default_is_auto() -> None:
    assert next(s for s in SETTINGS if s.name == "WORKERS").default == "auto"


def test_the_chart_ships_auto_with_memory_for_the_workers_its_cpu_limit_gives(deploy_tools: DeployTools) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["settings"]["WORKERS"] == "auto"
    docs = render(deploy_tools)
    data = docs[("ConfigMap", "rp-rerank-proxy")]["data"]
    assert data["WORKERS"] == "auto"
    assert check_memory(data["WORKERS"], container(docs)["resources"]) == 2
    four = render(deploy_tools, "--set", "resources.limits.cpu=4", "--set", "resources.requests.memory=1408Mi",
                  "--set", "resources.limits.memory=2Gi")
    assert check_memory("auto", container(four)["resources"]) == 4
    short = render(deploy_tools, "--set", "resources.limits.cpu=4")
    with pytest.raises(AssertionError, match="memory 768Mi < 1344 MiB for 4 workers"):
        check_memory("auto", container(short)["resources"])


def test_the_chart_refuses_auto_without_a_cpu_limit(deploy_tools: DeployTools) -> None:
    refused = deploy_tools.run("helm", "template", "rp", str(CHART), "--set", "resources.limits.cpu=null")
    assert refused.returncode != 0
    assert "resources.limits.cpu" in refused.stderr
    fixed = render(deploy_tools, "--set", "resources.limits.cpu=null", "--set", "settings.WORKERS=2")
    assert "cpu" not in container(fixed)["resources"]["limits"]
    assert check_memory("2", container(fixed)["resources"]) == 2


def test_the_manifests_ship_auto_with_memory_for_the_workers_their_cpu_limit_gives() -> None:
    configmap = yaml.safe_load((KUSTOMIZE / "configmap.yaml").read_text())
    deployment = yaml.safe_load((KUSTOMIZE / "deployment.yaml").read_text())
    (proxy,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"]
    assert configmap["data"]["WORKERS"] == "auto"
    assert check_memory(configmap["data"]["WORKERS"], proxy["resources"]) == 2


def test_the_chart_and_the_manifests_request_the_same_resources(deploy_tools: DeployTools) -> None:
    deployment = yaml.safe_load((KUSTOMIZE / "deployment.yaml").read_text())
    (proxy,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"]
    chart = container(render(deploy_tools))["resources"]
    for kind in ("requests", "limits"):
        assert mib(proxy["resources"][kind]["memory"]) == mib(chart[kind]["memory"])
        assert cpus(proxy["resources"][kind]["cpu"]) == cpus(chart[kind]["cpu"])


@pytest.mark.parametrize(("quantity", "expected"), [("768Mi", 768), ("1Gi", 1024), ("1048576Ki", 1024),
                                                   ("1073741824", 1024)])
def test_memory_quantities_parse(quantity: str, expected: float) -> None:
    assert mib(quantity) == pytest.approx(expected)
