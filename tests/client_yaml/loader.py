"""Read the suite's YAML files into plain data: one `YamlFile` per file, one `YamlTest` per test document."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Step = dict[str, Any]  # one step: {"do": {...}} or {"match": {...}} ...

SECTION_KEYS = frozenset({"requires", "setup", "teardown"})


class SuiteFormatError(ValueError):
    """A file the runner cannot read as a YAML REST test file."""


@dataclass
class YamlTest:
    name: str
    steps: list[Step]


@dataclass
class YamlFile:
    path: Path
    relpath: str                      # relative to the suite's tests/ folder, e.g. "indices/alias.yml"
    requires: dict[str, Any] = field(default_factory=dict)
    setup: list[Step] = field(default_factory=list)
    teardown: list[Step] = field(default_factory=list)
    tests: list[YamlTest] = field(default_factory=list)

    @property
    def folder(self) -> str:
        """The API folder ("indices"), or "" for files directly under tests/."""
        head, sep, _ = self.relpath.partition("/")
        return head if sep else ""

    def test_id(self, test: YamlTest) -> str:
        return f"{self.relpath}::{test.name}"

    def strings(self) -> set[str]:
        """Every string in the file (keys and values): the names the file may create on the engine."""
        found: set[str] = set()
        _collect_strings([self.setup, self.teardown, [t.steps for t in self.tests]], found)
        return found


def _collect_strings(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        found.add(value)
        found.update(part.strip() for part in value.split(",") if part.strip())
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect_strings(key, found)
            _collect_strings(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, found)


def _steps(value: Any, where: str) -> list[Step]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(step, dict) and len(step) == 1 for step in value):
        raise SuiteFormatError(f"{where}: expected a list of one-key steps, got {value!r:.200}")
    return value


def load_file(path: Path, root: Path) -> YamlFile:
    relpath = path.relative_to(root).as_posix()
    loaded = YamlFile(path=path, relpath=relpath)
    with path.open(encoding="utf-8") as handle:
        documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    for document in documents:
        if not isinstance(document, dict) or len(document) != 1:
            raise SuiteFormatError(f"{relpath}: each document must have exactly one key, got {document!r:.200}")
        ((key, value),) = document.items()
        if key == "requires":
            loaded.requires = dict(value or {})
        elif key == "setup":
            loaded.setup = _steps(value, f"{relpath} setup")
        elif key == "teardown":
            loaded.teardown = _steps(value, f"{relpath} teardown")
        else:
            loaded.tests.append(YamlTest(name=str(key), steps=_steps(value, f"{relpath} {key}")))
    return loaded


def load_suite(root: Path) -> list[YamlFile]:
    """Every `*.yml` under `root` (the suite's tests/ folder), in path order (files are numbered to run in order)."""
    return [load_file(path, root) for path in sorted(root.rglob("*.yml"))]
