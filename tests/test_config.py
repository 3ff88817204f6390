"""Settings validation: a wrong value names the variable, the problem and what is accepted."""

import re
from pathlib import Path

import pytest

from rerank_proxy.config import (
    SETTING_NAMES,
    SETTINGS,
    TOOL_SETTING_NAMES,
    ConfigError,
    IndexRule,
    Settings,
    load_settings,
)
from rerank_proxy.config_values import ExistingFile

SETTINGS_DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_defaults_load():
    settings = load_settings({})
    assert settings.upstream_urls == ("http://127.0.0.1:9200",)
    assert settings.rerank_provider == "local"
    assert settings.rerank_window == 100


@pytest.mark.parametrize(("env", "needle"), [
    ({"RERANK_WINDOW": "abc"}, "RERANK_WINDOW='abc': not an integer; accepted: an integer from 1 to 10000"),
    ({"RERANK_WINDOW": "0"}, "RERANK_WINDOW='0': out of range"),
    ({"UPSTREAM_URLS": "ftp://x"}, "UPSTREAM_URLS='ftp://x': not an http(s) URL"),
    ({"RERANK_PROVIDER": "magic"}, "RERANK_PROVIDER='magic': unknown value; accepted: local, cohere"),
    ({"RERANK_PROVIDER": "cohere"}, "RERANK_API_KEY is empty"),
    ({"RERANK_PROVIDER": "tei"}, "RERANK_BASE_URL is empty"),
    ({"RERANK_RULES": "[{"}, "RERANK_RULES='[{': invalid JSON"),
    ({"RERANK_RULES": '[{"index":"a","colour":1}]'}, "unknown keys ['colour']"),
    ({"UPSTREAM_TLS_VERIFY": "maybe"}, "not a boolean"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud'"),
    ({"ADMIN_TOKEN_FILE": "/nonexistent/token"}, "ADMIN_TOKEN_FILE='/nonexistent/token': cannot read"),
])
def test_errors_are_one_clear_line(env, needle):
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_secret_values_are_not_echoed():
    with pytest.raises(ConfigError) as err:
        load_settings({"REDIS_URL": "http://user:hunter2@x"})
    assert "hunter2" not in str(err.value)
    assert "hunter2" not in str(load_settings({"UPSTREAM_URLS": "http://u:hunter2@h:9200"}).redacted())


def test_file_variants(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    settings = load_settings({"RERANK_PROVIDER": "cohere", "RERANK_API_KEY_FILE": str(key)})
    assert settings.rerank_api_key == "sk-from-file"
    assert settings.redacted()["RERANK_API_KEY"] == "<redacted>"


def test_redacted_config_hides_upstream_credentials():
    settings = load_settings({"UPSTREAM_URLS": "http://elastic:pw123456@es:9200"})
    assert "pw123456" not in str(settings.redacted())


def test_settings_doc_documents_exactly_the_settings():
    text = SETTINGS_DOC.read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", text, flags=re.M))
    expected = set(SETTING_NAMES) | set(TOOL_SETTING_NAMES)
    assert documented == expected, (
        f"missing from docs/settings.md: {sorted(expected - documented)}; "
        f"not a setting: {sorted(documented - expected)}")


def test_code_reads_only_declared_settings():
    """Every environment name the package reads is declared in config.SETTINGS (or is a tool's)."""
    package = Path(__file__).resolve().parent.parent / "rerank_proxy"
    read = set()
    for path in package.rglob("*.py"):
        read |= set(re.findall(r"""(?:environ(?:\.get)?|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']""", path.read_text()))
        read |= set(re.findall(r"""environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]""", path.read_text()))
    system = {"PATH", "HOME", "JAVA_HOME"}  # the usual meaning, passed on to the engines' scripts
    unknown = read - set(SETTING_NAMES) - set(TOOL_SETTING_NAMES) - system - {f"{n}_FILE" for n in SETTING_NAMES}
    assert not unknown, f"read but not declared in rerank_proxy/config.py SETTINGS: {sorted(unknown)}"
    assert len(SETTINGS) == len(SETTING_NAMES)


def rule_for(settings: Settings, index: str) -> IndexRule:
    rule = settings.rule_for(index)
    assert rule is not None, f"no rule for {index}"
    return rule


def test_the_mapping_gives_the_text_only_where_nothing_else_was_chosen():
    rules = '[{"index": "a*", "window": 5}, {"index": "b*", "fields": []}, {"index": "c*", "template": "{t}"}]'
    settings = load_settings({"RERANK_RULES": rules})
    assert rule_for(settings, "x").text_from_mapping                  # the default
    assert rule_for(settings, "a1").text_from_mapping                 # a rule that chose no text
    assert not rule_for(settings, "b1").text_from_mapping             # "fields": [] is every string
    assert not rule_for(settings, "c1").text_from_mapping
    assert not load_settings({"RERANK_FIELDS": "title"}).default_rule().text_from_mapping
    assert not rule_for(load_settings({"RERANK_TEMPLATE": "{title}"}), "x").text_from_mapping
    off = load_settings({"RERANK_TEXT_FROM_MAPPING": "false", "RERANK_RULES": rules})
    assert not rule_for(off, "x").text_from_mapping
    assert not rule_for(off, "a1").text_from_mapping
    with pytest.raises(ConfigError, match="RERANK_TEXT_FROM_MAPPING"):
        load_settings({"RERANK_TEXT_FROM_MAPPING": "sometimes"})


def test_settings_built_in_code_are_the_shipped_defaults():
    """One source: the dataclass's defaults are the table's, so tests that build `Settings(...)`
    run on what ships (RERANK_MAX_CONCURRENCY 64, WORKERS auto, ...)."""
    from rerank_proxy.config import Settings, field_names

    assert Settings() == load_settings({})
    assert set(field_names()) == {s.field for s in SETTINGS}
    assert Settings().rerank_max_concurrency == 64


@pytest.mark.parametrize("setting", [s for s in SETTINGS if not isinstance(s.parse, ExistingFile)],
                         ids=lambda s: s.name)
def test_each_example_is_accepted_by_its_parser(setting):
    """The example the docs show is a value the proxy starts with (file paths excepted: they must exist)."""
    setting.parse(setting.example)


def test_the_redacted_configuration_is_json_with_each_value_in_its_own_syntax():
    """The admin API answers it as JSON: a parsed value that is an object (the experiment) is shown as set."""
    import json

    shown = json.loads(json.dumps(load_settings({"RERANK_EXPERIMENT": "ab:12.5"}).redacted()))
    assert shown["RERANK_EXPERIMENT"] == "ab:12.5"
    assert shown["RERANK_EXPERIMENT_UNIT"] == "api_key"
