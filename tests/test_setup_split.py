"""`make demo` installs only what the demo needs: no test or benchmark Debian packages, no npm, no
test extra. Pure: reads .ci/system-packages' lists and `make`'s dry run, installs nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_ONLY = {"chromium", "nginx", "wrk", "redis-server", "prometheus"}


def packages(which: str) -> set[str]:
    out = subprocess.run(["bash", ".ci/system-packages", "--list", which], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


def dry_run(target: str) -> str:
    # -B: every recipe, as on a fresh clone, whatever the stamps in this tree say.
    return subprocess.run(["make", "-n", "-B", target], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def test_the_demo_set_has_no_test_or_benchmark_packages():
    demo, everything = packages("demo"), packages("all")
    assert {"maven", "unzip", "python3-venv"} <= demo
    assert not demo & TEST_ONLY
    assert demo < everything
    assert everything >= TEST_ONLY


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_installs_neither_npm_packages_nor_the_test_extra():
    demo = dry_run("demo")
    assert "bash .ci/system-packages demo" in demo
    assert "pip install -e .\n" in demo
    assert "model-requirements.txt" in demo
    assert "npm" not in demo
    assert "[test" not in demo
    # The same checks catch what `make test` does install, so they are not vacuous.
    test = dry_run("test")
    assert "npm ci" in test
    assert "pip install -e '.[test]'" in test
    # The frameworks pin elasticsearch-py <9: their own venv, never .venv (whose tests need 9.x).
    assert ".venv-apps/bin/pip install -e '.[apps]'" in test
    assert ".venv/bin/pip install -e '.[test,apps]'" not in test
