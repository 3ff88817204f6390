"""Which engine build a newcomer's `demo` / `engine up` runs on the Java this machine has."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_proxy.local_engines import java
from rerank_proxy.local_engines.distributions import (
    DEFAULT_VERSIONS,
    SECOND_LINE_VERSIONS,
    distribution,
    machine_default,
)


def only_java(monkeypatch: pytest.MonkeyPatch, *majors: int) -> None:
    """This machine has exactly these Java majors (find_java_home's own range check on them)."""
    def find(minimum: int, maximum: int) -> Path:
        for major in majors:
            if minimum <= major <= maximum:
                return Path(f"/jdk-{major}")
        raise java.JavaNotFound(f"no Java {minimum}-{maximum}")

    monkeypatch.setattr(java, "find_java_home", find)


def test_the_pinned_builds_where_their_java_is_installed(monkeypatch: pytest.MonkeyPatch):
    only_java(monkeypatch, 17, 25)
    for kind in ("elasticsearch", "opensearch"):
        assert machine_default(kind) == (distribution(kind), None)


def test_debian_12s_java_17_runs_elasticsearch_8_and_says_why(monkeypatch: pytest.MonkeyPatch):
    only_java(monkeypatch, 17)
    build, note = machine_default("elasticsearch")
    assert build.version == SECOND_LINE_VERSIONS["elasticsearch"]
    assert note is not None
    assert "Java 21+" in note
    assert DEFAULT_VERSIONS["elasticsearch"] in note
    assert machine_default("opensearch") == (distribution("opensearch"), None)


def test_only_a_new_java_runs_opensearch_3(monkeypatch: pytest.MonkeyPatch):
    only_java(monkeypatch, 25)
    build, note = machine_default("opensearch")
    assert build.major == 3
    assert note is not None
    assert "Java 17-23" in note


def test_no_fitting_java_keeps_the_pinned_build_whose_start_names_the_java(monkeypatch: pytest.MonkeyPatch):
    only_java(monkeypatch)
    assert machine_default("elasticsearch") == (distribution("elasticsearch"), None)
