"""The benchmarks' one way to start the proxy (bench/common.py), and a guard that every bench uses it.

No engine, no proxy run: `proxy_env` is a pure function, `start_proxy` is run with `spawn` and the
readiness wait replaced, and the guard reads bench/*.py with `ast`. The guard is what keeps a
BENCHMARKS.md row that says "shipped defaults" honest: a bench may set a proxy setting only by
naming it to the harness, which records it as a difference (`settings_differ` in its results).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import common, report
from rerank_proxy.config import FILE_VARIANTS, SETTING_NAMES, load_settings

BENCH = Path(__file__).resolve().parents[1] / "bench"
UPSTREAM = "http://127.0.0.1:9400"
PROVIDER_TRIO = {"RERANK_PROVIDER", "RERANK_BASE_URL", "RERANK_API_KEY"}
SETTINGISH = SETTING_NAMES | {f"{name}_FILE" for name in FILE_VARIANTS}


@pytest.fixture(autouse=True)
def inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings in the environment the bench runs in: the harness must not pass any of them on."""
    for name, value in {"LOG_LEVEL": "debug", "ADMIN_TOKEN": "inherited", "WORKERS": "3",
                        "RERANK_WINDOW": "7", "PROXY_API_KEYS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)


def setting_names(env: dict[str, str]) -> set[str]:
    return {name for name in env if name in SETTINGISH}


# --- (a) nothing named: the shipped environment ---------------------------------------------------

def test_nothing_named_is_the_shipped_environment() -> None:
    env, argv, differs = common.proxy_env(UPSTREAM, None, {}, port=8123)
    assert setting_names(env) == {"UPSTREAM_URLS"}
    assert env["UPSTREAM_URLS"] == UPSTREAM
    assert argv[-7:] == ["-m", "rerank_proxy.cli", "serve", "--host", "127.0.0.1", "--port", "8123"]
    assert not {"--workers", "--log-level"} & set(argv)
    assert differs == {}


def test_a_provider_adds_exactly_the_provider_trio() -> None:
    env, argv, differs = common.proxy_env(UPSTREAM, "http://127.0.0.1:8799")
    assert setting_names(env) == {"UPSTREAM_URLS"} | PROVIDER_TRIO
    assert (env["RERANK_PROVIDER"], env["RERANK_BASE_URL"]) == ("cohere", "http://127.0.0.1:8799")
    assert not {"--workers", "--log-level"} & set(argv)
    assert differs == {"RERANK_API_KEY": "<redacted>", "RERANK_BASE_URL": "http://127.0.0.1:8799",
                       "RERANK_PROVIDER": "cohere"}


def test_named_settings_and_workers_are_set_and_recorded() -> None:
    env, argv, differs = common.proxy_env(
        UPSTREAM, None, {"LOG_LEVEL": "warning", "ADMIN_TOKEN": common.ADMIN_TOKEN, "RERANK_WINDOW": 100,
                         "RERANK_TEXT_FROM_MAPPING": False}, workers=1)
    assert setting_names(env) == {"UPSTREAM_URLS", "LOG_LEVEL", "ADMIN_TOKEN", "RERANK_WINDOW",
                                  "RERANK_TEXT_FROM_MAPPING"}
    assert argv[argv.index("--workers") + 1] == "1"
    # RERANK_WINDOW=100 is the shipped value: set, but no difference; the secret is redacted
    assert differs == {"ADMIN_TOKEN": "<redacted>", "LOG_LEVEL": "warning", "RERANK_TEXT_FROM_MAPPING": "false",
                       "WORKERS": "1"}


def test_workers_auto_named_is_no_difference() -> None:
    _, argv, differs = common.proxy_env(UPSTREAM, None, workers="auto")
    assert argv[argv.index("--workers") + 1] == "auto"
    assert differs == {}


def test_start_proxy_runs_what_proxy_env_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: dict[str, Any] = {}

    def fake_spawn(name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path = common.REPO
                   ) -> common.Service:
        spawned.update(cmd=cmd, env=env, cwd=cwd)
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        return common.Service(name, proc)

    monkeypatch.setattr(common, "spawn", fake_spawn)
    monkeypatch.setattr(common, "wait_http", lambda *args, **kwargs: None)
    service = common.start_proxy(UPSTREAM, provider=None, port=8124, name="under-test", wait_workers=False,
                                 CACHE_MAX_ENTRIES=0)
    env, argv, differs = common.proxy_env(UPSTREAM, None, {"CACHE_MAX_ENTRIES": 0}, port=8124)
    assert (spawned["cmd"], spawned["env"]) == (argv, env)
    assert service.extra["differs"] == differs == {"CACHE_MAX_ENTRIES": "0"}
    assert common.started_proxies()[service.extra["label"]] == differs


def test_in_process_settings_load_the_same_environment() -> None:
    settings, differs = common.in_process_settings(UPSTREAM, "http://127.0.0.1:8799", name="in-process-test",
                                                   RERANK_MAX_CONCURRENCY=16)
    env, _, expected = common.proxy_env(UPSTREAM, "http://127.0.0.1:8799", {"RERANK_MAX_CONCURRENCY": 16})
    assert settings == load_settings({k: v for k, v in env.items() if k in SETTING_NAMES})
    assert settings.log_level == "info"
    assert settings.admin_token == ""
    assert settings.rerank_window == 100
    assert differs == expected
    assert differs["RERANK_MAX_CONCURRENCY"] == "16"
    assert common.started_proxies()["in-process-test"] == differs


# --- (b) only real settings, with values they accept ---------------------------------------------

@pytest.mark.parametrize("settings", [{"LOG_LEVELS": "warning"}, {"log_level": "warning"},
                                      {"RERANK_PROXY_CACHE_DIR": "/tmp"}, {"PYTHONPATH": "/x"}])
def test_an_unknown_setting_name_raises(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="not a proxy setting"):
        common.proxy_env(UPSTREAM, None, settings)
    with pytest.raises(ValueError, match="not a proxy setting"):
        common.named(**settings)


def test_a_bad_value_raises_without_showing_a_secret() -> None:
    with pytest.raises(ValueError, match="LOG_LEVEL='loud'"):
        common.named(LOG_LEVEL="loud")
    with pytest.raises(ValueError, match="REDIS_URL=<redacted>") as caught:
        common.named(REDIS_URL="http://user:hunter2@redis")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("provider", "settings"), [(None, {"UPSTREAM_URLS": "http://x:9200"}),
                                                    (None, {"PORT": 9}), (None, {"WORKERS": 2}),
                                                    ("http://p:1", {"RERANK_PROVIDER": "tei"})])
def test_what_the_harness_sets_itself_cannot_be_named(provider: str | None, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"is set by the harness|while a provider is given"):
        common.proxy_env(UPSTREAM, provider, settings)


def test_start_command_is_not_a_way_around_start_proxy() -> None:
    with pytest.raises(ValueError, match="start_proxy"):
        common.start_command("serve", ["serve", "--port", "1"])


# --- (c) the guard: nothing but bench/common.py starts the proxy or sets a setting ----------------

HARNESS = {"start_proxy", "proxy_env", "in_process_settings", "start_command", "named"}
IN_PROCESS_PROXY = ("rerank_proxy.serve", "rerank_proxy.cli", "rerank_proxy.app")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _proxy_command(text: str) -> bool:
    """A string that names the proxy's CLI: the module run with -m, or a path to the script."""
    return "rerank_proxy.cli" in text or text.rstrip("/").endswith("rerank-proxy") or text == "rerank_proxy"


class _Module:
    """One parsed bench module, with what the guard's checks share."""

    def __init__(self, source: str, where: str) -> None:
        self.tree = ast.parse(source)
        self.where = where
        self.parents = {child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)}
        self.imported = {alias.asname or alias.name for node in ast.walk(self.tree)
                         if isinstance(node, ast.ImportFrom)
                         and (node.module, node.level) in (("common", 1), ("bench.common", 0))
                         for alias in node.names}
        skip = _docstrings(self.tree)
        self.strings = [(n, n.value) for n in ast.walk(self.tree)
                        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]
        self.problems: list[str] = []

    def say(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.where}:{getattr(node, 'lineno', '?')}: {text}")

    def _is_harness(self, func: ast.expr) -> bool:
        if isinstance(func, ast.Name):
            return func.id in HARNESS and func.id in self.imported
        return (isinstance(func, ast.Attribute) and func.attr in HARNESS and isinstance(func.value, ast.Name)
                and func.value.id == "common")

    def in_harness_call(self, node: ast.AST) -> bool:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.Call) and self._is_harness(node.func):
                return True
        return False


def _check_redefined(m: _Module) -> None:
    """A local function called like the harness would pass the settings check without recording."""
    for node in ast.walk(m.tree):
        name = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
        if isinstance(node, ast.Assign):
            name = next((t.id for t in node.targets if isinstance(t, ast.Name) and t.id in HARNESS), None)
        if name in HARNESS:
            m.say(node, f"defines {name!r}: only bench/common.py's harness may")


def _check_spawned(m: _Module) -> None:
    """The proxy spawned (an argv with "serve" and the CLI, wherever the two are written in the module)."""
    serve = [node for node, text in m.strings if text == "serve"]
    command = [text for _, text in m.strings if _proxy_command(text)]
    if serve and command:
        m.say(serve[0], f"spawns `{command[0]} serve` itself: start it with bench.common.start_proxy")


def _check_in_process(m: _Module) -> None:
    """The proxy run in-process (serve, cli, app), or settings loaded outside in_process_settings."""
    for node in ast.walk(m.tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            if node.module == "rerank_proxy.config" and any(a.name == "load_settings" for a in node.names):
                m.say(node, "imports load_settings: build in-process settings with bench.common.in_process_settings")
        for module in modules:
            if module.startswith(IN_PROCESS_PROXY):
                m.say(node, f"imports {module}: the proxy is started by bench.common.start_proxy")


def _setting_written(node: ast.AST) -> list[tuple[ast.AST, str]]:
    """A setting name as a dict key, a keyword, an item assigned, or set by default."""
    if isinstance(node, ast.Dict):
        return [(k, k.value) for k in node.keys if isinstance(k, ast.Constant) and k.value in SETTING_NAMES]
    if isinstance(node, ast.keyword) and node.arg in SETTING_NAMES:
        return [(node, node.arg)]
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant) \
            and node.slice.value in SETTING_NAMES:
        return [(node, str(node.slice.value))]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("setdefault", "putenv", "__setitem__") and node.args \
            and isinstance(node.args[0], ast.Constant) and node.args[0].value in SETTING_NAMES:
        return [(node, str(node.args[0].value))]
    return []


def _check_settings(m: _Module) -> None:
    for node in ast.walk(m.tree):
        for at, setting in _setting_written(node):
            if not m.in_harness_call(at):
                m.say(at, f"sets {setting} outside the harness: name it to bench.common.start_proxy "
                          "(or build it with bench.common.named), so the run records it")


def guard_problems(source: str, where: str = "<bench>") -> list[str]:
    """What in one bench module starts the proxy or sets a proxy setting outside the harness."""
    module = _Module(source, where)
    for check in (_check_redefined, _check_spawned, _check_in_process, _check_settings):
        check(module)
    return module.problems


BENCH_MODULES = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")


def test_the_guard_sees_every_bench() -> None:
    names = {p.name for p in BENCH_MODULES}
    assert {"relevance.py", "scaling.py", "soak.py", "text_from_mapping.py", "search_cpu.py", "cost.py",
            "search_latency.py", "report.py"} <= names


@pytest.mark.parametrize("path", BENCH_MODULES, ids=lambda p: p.name)
def test_no_bench_starts_the_proxy_or_sets_a_setting_itself(path: Path) -> None:
    assert guard_problems(path.read_text(encoding="utf-8"), f"bench/{path.name}") == []


# The code the guard was written against, as it stood (bench/relevance.py, bench/scaling.py, bench/soak.py,
# bench/search_cpu.py, bench/cost.py): each must be refused, or the guard guards nothing.
OLD_CODE = {
    "relevance": '''
from bench.common import clean_env, spawn
def start_proxy(engine_url, store, **extra):
    env = clean_env(UPSTREAM_URLS=engine_url, LOCAL_VECTOR_STORE=str(store), LOG_LEVEL="warning", **extra)
    service = spawn("relevance-proxy", [str(REPO / ".venv/bin/rerank-proxy"), "serve", "--port", str(port)], env)
''',
    "scaling": '''
from .common import ADMIN_TOKEN, clean_env, spawn
def start_checkout_proxy(upstream, provider, window):
    settings = {"UPSTREAM_URLS": upstream, "LOG_LEVEL": "warning", "ADMIN_TOKEN": ADMIN_TOKEN,
                "RERANK_WINDOW": str(window)}
    service = spawn(f"proxy-scaling-{port}", [sys.executable, "-m", "rerank_proxy.cli", "serve",
                                              "--host", "127.0.0.1", "--port", str(port)],
                    env=clean_env(**settings))
''',
    "scaling, the results' hand-written differences": '''
results = {"settings": {"differ_from_defaults": {"LOG_LEVEL": "warning", "ADMIN_TOKEN": "set (for the bench)"}}}
''',
    "soak": '''
env = dict(os.environ, UPSTREAM_URLS=engine.url, LOG_LEVEL="warning")
proxy = subprocess.Popen([str(ROOT / ".venv/bin/rerank-proxy"), "serve", "--port", str(proxy_port)], env=env)
''',
    "search_cpu": '''
from rerank_proxy.config import load_settings
def _settings(engine, provider):
    env = {"UPSTREAM_URLS": engine, "LOG_LEVEL": "warning"}
    return load_settings(env)
''',
    "cost": '''
from .common import start_proxy
setups = [("no_cache", 1, 1, {"CACHE_MAX_ENTRIES": 0})]
''',
    "an item assigned": '''
env = clean_env()
env["LOG_LEVEL"] = "warning"
''',
    "a harness name redefined": '''
def named(**settings):
    return settings
start_proxy(upstream, provider=None, **named(LOG_LEVEL="warning"))
''',
    "the CLI helper of text_from_mapping": '''
def cli(*args):
    return [sys.executable, "-m", "rerank_proxy.cli", *args]
proxy = spawn("proxy", cli("serve", "--port", str(port)), env)
''',
}


@pytest.mark.parametrize("name", OLD_CODE)
def test_the_guard_refuses_the_old_code(name: str) -> None:
    assert guard_problems(OLD_CODE[name], name)


def test_the_guard_accepts_named_settings() -> None:
    source = '''
from bench.common import named, start_proxy
HIT = {"proxy_hit": {}, "no_memo": named(CACHE_ANSWERS_MAX_MB=0)}
proxy = start_proxy(engine, provider=None, workers=1, LOG_LEVEL="warning")
'''
    assert guard_problems(source) == []


# --- the report states the differences it was given, and only those ------------------------------

def test_the_report_says_what_the_run_recorded() -> None:
    recorded = {"proxy-1w": {"RERANK_PROVIDER": "cohere", "WORKERS": "1"},
                "proxy-2w": {"RERANK_PROVIDER": "cohere", "WORKERS": "2"}}
    text = report.differs_sentence(report.recorded_differs({"settings_differ": recorded}))
    assert "in every proxy: RERANK_PROVIDER=cohere" in text
    assert "WORKERS=1 in proxy-1w" in text
    assert "WORKERS=2 in proxy-2w" in text
    assert "LOG_LEVEL" not in text
    assert "ADMIN_TOKEN" not in text
    none = report.differs_sentence(report.recorded_differs({"settings_differ": {"proxy": {}}}))
    assert none.startswith("Settings that differ from the shipped defaults: none")
    assert "not recorded" in report.differs_sentence(report.recorded_differs({}))


def test_the_scaling_block_takes_its_settings_from_the_run() -> None:
    cell = {"doc_bytes": 1024, "window": 10, "outcome": "reranked",
            "engine": {"answer_bytes": 1e4, "p50_ms": 1.0, "errors": 0},
            "nginx": {"p50_ms": 1.0, "cpu_ms_per_request": 0.1, "errors": 0},
            "proxy_hit": {"p50_ms": 1.0, "cpu_ms_per_request": 0.2, "errors": 0, "provider_calls_during_wrk": 0},
            "proxy_miss": {"cpu_ms_per_search": 1.0, "latency_ms": {"p50": 2.0}, "searches": 5}}
    machine = {"nproc": 2, "cpu_model": "x", "ram_gib": 1, "kernel": "k", "python": "3", "when": "now",
               "loadavg_at_start": [0.0, 0.0, 0.0]}
    data = {"machine": machine, "engine": "elasticsearch 9", "queries": 8, "indices": {"1kb": {"docs": 1100}},
            "params": {"duration": 2.0, "rounds": 1, "miss_count": 5, "miss_max_s": 1.0},
            "settings": {"shipped": {"WORKERS": "auto", "RERANK_WINDOW": "100"}, "worker_processes": 2},
            "cells": {"1kb/w10": cell},
            "settings_differ": {"proxy-scaling-1kb-w10": {"RERANK_PROVIDER": "cohere", "RERANK_WINDOW": "10"}}}
    text = report.scaling_tables(data)
    assert "RERANK_PROVIDER=cohere, RERANK_WINDOW=10." in text
    assert "Shipped defaults kept: WORKERS=auto (2 serving process(es));" in text
    assert "LOG_LEVEL" not in text
    assert "ADMIN_TOKEN" not in text
    assert "RERANK_WINDOW=100" not in text   # changed by a proxy of the run: not claimed as kept


def test_the_report_types_no_log_level_or_admin_token() -> None:
    """What the proxies were set to comes from the run's record; report.py names neither setting."""
    tree = ast.parse((BENCH / "report.py").read_text(encoding="utf-8"))
    said = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and ("LOG_LEVEL" in n.value or "ADMIN_TOKEN" in n.value)]
    assert said == []
