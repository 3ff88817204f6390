"""`.venv-apps`: the proxy package and the `apps` extra's frameworks side by side, as an app's own
environment has them. They pin elasticsearch-py <9 while `.venv` needs 9.x, hence a venv of their own.

`make apps-venv` builds it; the framework tests' fixture calls `ensure()` so that pytest alone works
too. Both leave the same stamp: the requirements it was built from (the project's dependencies and
the `apps` extra, read from pyproject.toml), so a change to them rebuilds it and nothing else does.

    python -m tests.apps.apps_venv           # build it if missing or stale (pip shows its progress)
    python -m tests.apps.apps_venv --stamp   # only write the stamp (the Makefile's last step)

Standard library only: the Makefile runs this with the new venv's own python.
"""

from __future__ import annotations

import argparse
import fcntl
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APPS_VENV = REPO / ".venv-apps"
APPS_PYTHON = APPS_VENV / "bin" / "python"
STAMP = APPS_VENV / ".installed-stamp"  # the Makefile's stamp too
BUILD_TIMEOUT_S = 1200  # a cold pip cache on a busy machine; a warm one takes about a minute


class AppsVenvError(Exception):
    """`.venv-apps` could not be built; the message says why and how to fix it."""


def requirements() -> str:
    """What the venv is built from: the project's dependencies and the `apps` extra, one a line."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    apps = project.get("optional-dependencies", {}).get("apps")
    if not apps:
        raise AppsVenvError("pyproject.toml has no `apps` extra (the frameworks .venv-apps installs)")
    return "\n".join([*project["dependencies"], "[apps]", *apps]) + "\n"


def is_fresh() -> bool:
    return APPS_PYTHON.exists() and STAMP.exists() and STAMP.read_text() == requirements()


def write_stamp() -> None:
    STAMP.write_text(requirements())


def _run(cmd: list[str], what: str, hint: str, capture: bool) -> None:
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=capture, text=True, timeout=BUILD_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AppsVenvError(f"{what}: `{' '.join(cmd)}` took over {BUILD_TIMEOUT_S} s.{hint}") from None
    if done.returncode != 0:
        output = ((done.stdout or "") + (done.stderr or ""))[-6000:]
        raise AppsVenvError(f"{what}: `{' '.join(cmd)}` exited {done.returncode}.{hint}\n{output}")


def ensure(capture: bool = True) -> Path:
    """The venv's python, after building the venv if it is missing or stale.

    A lock inside the venv's directory lets two test sessions on one checkout build it once.
    """
    APPS_VENV.mkdir(exist_ok=True)
    with (APPS_VENV / ".build-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_fresh():
            return APPS_PYTHON
        if not APPS_PYTHON.exists():
            base = getattr(sys, "_base_executable", None) or sys.executable
            _run([base, "-m", "venv", str(APPS_VENV)], "python -m venv .venv-apps", " On Debian the venv "
                 "module is in `apt-get install python3-venv`; or run `make apps-venv`.", capture)
        _run([str(APPS_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-e", ".[apps]"],
             "pip install -e '.[apps]' into .venv-apps", " Is the package index reachable? "
             "`make apps-venv` shows pip's own output.", capture)
        write_stamp()
    return APPS_PYTHON


def main() -> None:
    parser = argparse.ArgumentParser(description="Build .venv-apps if it is missing or stale.")
    parser.add_argument("--stamp", action="store_true", help="only record the requirements it was built from")
    args = parser.parse_args()
    try:
        if args.stamp:
            write_stamp()
        else:
            print(ensure(capture=False))
    except AppsVenvError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
