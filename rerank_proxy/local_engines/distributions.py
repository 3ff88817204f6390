"""Which engine builds we run, where they come from and where they are kept.

We run the official *integ-test* zips that both projects publish on Maven Central: they are the
only builds reachable from machines without internet access besides the package registries.
They are minimal (no bundled JDK, few modules), which `runner.py` accounts for.

The zip and the unpacked tree are cached under `cache_dir()` so that tests and benchmarks never
download twice; `mvn` keeps its own copy in `~/.m2` as well.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rerank_proxy.local_engines import root_endpoint

ELASTICSEARCH = "elasticsearch"
OPENSEARCH = "opensearch"
KINDS = (ELASTICSEARCH, OPENSEARCH)

# Pinned defaults. Maven Central's maven-metadata.xml for the Elasticsearch integ-test zip stops at
# 8.19.x, but 9.x zips are there: probing (newest first from 9.5.6) found 9.5.4 to be the newest 9.x
# that resolves (9.5.5/9.5.6 do not); 9.5.3, 9.5.2, 9.5.0, 9.4.3, 9.3.2, 9.2.4 resolve too.
# OpenSearch 2.19.6 is the newest 2.x listed. Second lines, also verified: Elasticsearch 8.19.21 and
# OpenSearch 3.6.0.
DEFAULT_VERSIONS: dict[str, str] = {ELASTICSEARCH: "9.5.4", OPENSEARCH: "2.19.6"}
SECOND_LINE_VERSIONS: dict[str, str] = {ELASTICSEARCH: "8.19.21", OPENSEARCH: "3.6.0"}

_MAVEN_GROUPS: dict[str, str] = {
    ELASTICSEARCH: "org.elasticsearch.distribution.integ-test-zip",
    OPENSEARCH: "org.opensearch.distribution.integ-test-zip",
}

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Distribution:
    """One engine build: its kind and version, and the names derived from them."""

    kind: str
    version: str

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.version}"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def maven_artifact(self) -> str:
        return f"{_MAVEN_GROUPS[self.kind]}:{self.kind}:{self.version}:zip"

    @property
    def java_range(self) -> tuple[int, int]:
        """Supported Java majors (inclusive).

        Elasticsearch 9 and OpenSearch 3 need Java 21+. Elasticsearch 8 and OpenSearch 2 still rely
        on the Java SecurityManager, which Java 24 removed, so they need a Java from 17 to 23.
        """
        needs_21 = (self.kind == ELASTICSEARCH and self.major >= 9) or (
            self.kind == OPENSEARCH and self.major >= 3
        )
        return (21, 99) if needs_21 else (17, 23)


def distribution(kind: str, version: str | None = None) -> Distribution:
    """The build to run; `version=None` means the pinned default of that kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown engine {kind!r}; expected one of {', '.join(KINDS)}")
    return Distribution(kind, version or DEFAULT_VERSIONS[kind])


def machine_default(kind: str) -> tuple[Distribution, str | None]:
    """The build of `kind` to run when no version is asked for, and a note when it is not the pinned one.

    The pinned default when this machine has a Java it runs on; else the second line when that one
    fits (Debian 12 ships Java 17 only: Elasticsearch 9 needs 21+, Elasticsearch 8 runs on 17; a
    machine with only Java 24+ runs OpenSearch 3, not 2). Neither fits: the pinned default, whose
    start then names the Java it needs.
    """
    from rerank_proxy.local_engines.java import JavaNotFound, find_java_home

    pinned = distribution(kind)
    for dist in (pinned, distribution(kind, SECOND_LINE_VERSIONS[kind])):
        try:
            find_java_home(*dist.java_range)
        except JavaNotFound:
            continue
        if dist == pinned:
            return pinned, None
        low, high = pinned.java_range
        needs = f"Java {low}+" if high >= 99 else f"Java {low}-{high}"
        return dist, f"{pinned.name} needs {needs}, which this machine lacks; running {dist.name} instead"
    return pinned, None


def cache_dir() -> Path:
    """Root of the engine cache: `$RERANK_PROXY_CACHE_DIR`, else a per-user default.

    As root the default is `/var/cache/rerank-proxy/engines` rather than `~/.cache/...`: engines run
    as an unprivileged user, who cannot enter `/root` (mode 0700) to read the unpacked tree.
    """
    configured = os.environ.get("RERANK_PROXY_CACHE_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/cache/rerank-proxy/engines")
    return Path("~/.cache/rerank-proxy/engines").expanduser()


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Serialise work on one cache entry across processes and threads.

    `flock` alone does not exclude threads of one process that open the file separately, so a
    per-name thread lock is taken first (the test fixtures start engines from threads).
    """
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(name, threading.Lock())
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with thread_lock, open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def zip_path(dist: Distribution) -> Path:
    return cache_dir() / "zips" / f"{dist.name}.zip"


def home_path(dist: Distribution) -> Path:
    """Where the unpacked tree lives (the zip's single top folder, renamed into place)."""
    return cache_dir() / "dist" / dist.name


def fetch(dist: Distribution, say: Say = print) -> Path:
    """Download the zip once with `mvn dependency:copy` (Maven Central, also cached in ~/.m2)."""
    target = zip_path(dist)
    with file_lock(f"zip-{dist.name}"):
        if target.is_file():
            return target
        if shutil.which("mvn") is None:
            raise RuntimeError("`mvn` is needed to fetch engine builds from Maven Central")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            _run_mvn_copy(dist, Path(tmp), say)
            downloaded = Path(tmp) / target.name
            if not downloaded.is_file():
                raise RuntimeError(f"mvn finished but {downloaded.name} is missing")
            downloaded.replace(target)
    return target


def _run_mvn_copy(dist: Distribution, out_dir: Path, say: Say) -> None:
    command = [
        "mvn", "-B", "-q", "dependency:copy",
        f"-Dartifact={dist.maven_artifact}", f"-DoutputDirectory={out_dir}",
    ]
    say(f"fetching {dist.name} from Maven Central ({dist.maven_artifact})")
    started = time.monotonic()
    next_report = started + 10
    with open(out_dir / "mvn.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir)
        while process.poll() is None:
            time.sleep(0.5)
            if time.monotonic() >= next_report:
                next_report += 10
                elapsed = time.monotonic() - started
                say(f"  still fetching {dist.name}: {elapsed:.0f} s, {_m2_bytes(dist) / 1e6:.0f} MB in ~/.m2")
    if process.returncode != 0:
        output = (out_dir / "mvn.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(
            f"could not fetch {dist.maven_artifact} (does version {dist.version} exist?):\n{output}"
        )
    say(f"fetched {dist.name} in {time.monotonic() - started:.0f} s")


def _m2_bytes(dist: Distribution) -> int:
    """Bytes downloaded so far into the local Maven repository (for progress lines only)."""
    folder = Path("~/.m2/repository").expanduser().joinpath(
        *_MAVEN_GROUPS[dist.kind].split("."), dist.kind, dist.version
    )
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def unpack(dist: Distribution, say: Say = print) -> Path:
    """Unpack the cached zip once; returns the engine home (with `bin/`, `lib/`, `config/`...).

    Elasticsearch homes also get the root endpoint plugin (`root_endpoint`), checked on every call
    so that a tree unpacked before the plugin existed, or built from older sources, gets it too.
    """
    home = home_path(dist)
    archive = fetch(dist, say)
    with file_lock(f"home-{dist.name}"):
        if not (home / "bin" / dist.kind).is_file():
            home.parent.mkdir(parents=True, exist_ok=True)
            say(f"unpacking {archive.name}")
            with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
                top = _extract(archive, Path(tmp))
                if home.exists():
                    shutil.rmtree(home)
                top.replace(home)
        if dist.kind == ELASTICSEARCH:
            root_endpoint.install(dist, home, say)
    return home


def _extract(archive: Path, out_dir: Path) -> Path:
    """Extract keeping the Unix permission bits (zipfile drops them; `bin/*` must stay executable)."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            extracted = Path(zf.extract(member, out_dir))
            mode = (member.external_attr >> 16) & 0o777
            if mode:
                extracted.chmod(mode | 0o600 if not member.is_dir() else mode | 0o700)
        tops = {Path(name).parts[0] for name in zf.namelist()}
    if len(tops) != 1:
        raise RuntimeError(f"{archive.name}: expected one top-level folder, found {sorted(tops)}")
    return out_dir / tops.pop()
