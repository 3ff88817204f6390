"""Find a JDK that a given engine build can run on.

The integ-test zips bring no JDK, and one Java does not fit all: Elasticsearch 9 and OpenSearch 3
need Java 21+, while Elasticsearch 8 and OpenSearch 2 need a Java below 24 (see
`Distribution.java_range`). Candidates, first match wins:

1. `RERANK_PROXY_JAVA_HOME`: used for every engine, with no version check (an explicit choice);
2. `JAVA_HOME_21` for engines that need 21+, `JAVA_HOME_17` for those that need 17-23;
3. `JAVA_HOME`, then the `java` on PATH;
4. every JDK under /usr/lib/jvm (e.g. /usr/lib/jvm/temurin-25-jdk-amd64), newest first.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

JVM_DIR = Path("/usr/lib/jvm")


class JavaNotFound(RuntimeError):
    """No installed JDK fits the engine build."""


def java_major(home: Path) -> int | None:
    """Major version of the JDK at `home`, read from its `release` file (no JVM start needed)."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.MULTILINE)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java_home(minimum: int, maximum: int) -> Path:
    """The first candidate JDK whose major version is within [minimum, maximum]."""
    forced = os.environ.get("RERANK_PROXY_JAVA_HOME")
    if forced:
        return Path(forced)
    seen: list[str] = []
    for home in _candidates(minimum):
        major = java_major(home)
        seen.append(f"{home} ({major or '?'})")
        if major is not None and minimum <= major <= maximum and (home / "bin" / "java").exists():
            return home
    wanted = f"{minimum}+" if maximum >= 99 else f"{minimum}-{maximum}"
    raise JavaNotFound(
        f"no JDK with Java {wanted} found; set JAVA_HOME_{minimum} or RERANK_PROXY_JAVA_HOME. "
        f"Looked at: {', '.join(seen) or 'nothing'}"
    )


def _candidates(minimum: int) -> list[Path]:
    names = ["JAVA_HOME_21"] if minimum >= 21 else ["JAVA_HOME_17"]
    names.append("JAVA_HOME")
    found = [Path(os.environ[name]) for name in names if os.environ.get(name)]
    on_path = shutil.which("java")
    if on_path:
        found.append(Path(on_path).resolve().parent.parent)
    if JVM_DIR.is_dir():
        installed = [p for p in JVM_DIR.iterdir() if p.is_dir() and not p.is_symlink()]
        found.extend(sorted(installed, key=lambda p: java_major(p) or 0, reverse=True))
    return found
