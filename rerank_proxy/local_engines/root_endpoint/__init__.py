"""Give the local Elasticsearch a root endpoint (`GET /`, `HEAD /`) by building a tiny plugin.

The integ-test zip lacks the module that serves `/` (it answers 405), and Maven Central does not
publish that module on its own, so every client's `info()` call, and with it Haystack, LangChain
and LlamaIndex, fails at start-up. The Java sources next to this file are compiled at unpack time
against the distribution's own `lib/*.jar`, with a JDK that suits it, and installed as
`<home>/plugins/rerank-proxy-root-endpoint/`. Local-engine tooling only: the proxy never uses it.

`ActionPlugin.getRestHandlers` changed signature between lines, so one of two small subclasses is
compiled with the shared `RootEndpointPlugin.java`, chosen by what the server jar contains.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from rerank_proxy.local_engines.java import find_java_home

if TYPE_CHECKING:
    from rerank_proxy.local_engines.distributions import Distribution, Say

PLUGIN_NAME = "rerank-proxy-root-endpoint"
_PACKAGE = "rerankproxy.rootendpoint"
_SOURCES = Path(__file__).parent
_DESCRIPTOR = "plugin-descriptor.properties"
_STAMP = "build.sha256"  # what the installed plugin was built from; a change rebuilds it
# Present in the server jar when getRestHandlers takes a RestHandlersServices record (9.x).
_SERVICES_RECORD = "org/elasticsearch/plugins/ActionPlugin$RestHandlersServices.class"


class PluginBuildError(RuntimeError):
    """The root endpoint plugin could not be compiled; the message holds javac's output."""


def plugin_dir(home: Path) -> Path:
    return home / "plugins" / PLUGIN_NAME


def is_installed(dist: Distribution, home: Path) -> bool:
    """The plugin is in place and was built from the current sources for this distribution."""
    stamp = plugin_dir(home) / _STAMP
    try:
        return stamp.read_text().strip() == _fingerprint(dist, home)
    except OSError:
        return False


def install(dist: Distribution, home: Path, say: Say) -> None:
    """Build and install the plugin unless an up-to-date copy is there already.

    The caller holds the distribution's home lock. The plugin is staged outside `plugins/` (the
    node loads every folder there) and moved in whole, so a node never sees half a plugin.
    """
    if is_installed(dist, home):
        return
    with tempfile.TemporaryDirectory(prefix=".root-endpoint-", dir=home) as tmp:
        staged = Path(tmp) / PLUGIN_NAME
        build(dist, home, staged, say)
        target = plugin_dir(home)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staged.replace(target)


def build(dist: Distribution, home: Path, out_dir: Path, say: Say) -> None:
    """Compile against `home/lib/*.jar` and write the plugin folder (jar, descriptor, stamp) to `out_dir`."""
    say(f"building the root endpoint for {dist.name}")
    release = dist.java_range[0]
    javac = find_java_home(*dist.java_range) / "bin" / "javac"
    if not javac.is_file():
        raise PluginBuildError(
            f"{javac} is missing: building the root endpoint for {dist.name} needs a JDK, not a JRE "
            f"(point RERANK_PROXY_JAVA_HOME or JAVA_HOME_{release} at one)"
        )
    entry_class = _entry_class(home)
    out_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="root-endpoint-classes-") as classes:
        command = [
            str(javac), "--release", str(release), "-proc:none", "-nowarn", "-encoding", "UTF-8",
            "-cp", str(home / "lib" / "*"), "-d", classes,
            *(str(_SOURCES / f"{name}.java") for name in ("RootEndpointPlugin", entry_class)),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PluginBuildError(f"javac failed for {dist.name}:\n{(result.stdout + result.stderr)[-4000:]}")
        _write_jar(Path(classes), out_dir / f"{PLUGIN_NAME}.jar")
    descriptor = Template((_SOURCES / _DESCRIPTOR).read_text()).substitute(
        name=PLUGIN_NAME, version=dist.version, classname=f"{_PACKAGE}.{entry_class}",
        java_version=str(release), elasticsearch_version=dist.version,
    )
    (out_dir / _DESCRIPTOR).write_text(descriptor)
    (out_dir / _STAMP).write_text(_fingerprint(dist, home) + "\n")


def _entry_class(home: Path) -> str:
    """The subclass whose getRestHandlers override matches this build's ActionPlugin."""
    server_jars = sorted((home / "lib").glob("elasticsearch-[0-9]*.jar"))
    if not server_jars:
        raise PluginBuildError(f"no server jar (lib/elasticsearch-<version>.jar) under {home}")
    with zipfile.ZipFile(server_jars[0]) as jar:
        has_record = _SERVICES_RECORD in jar.namelist()
    return "RootEndpointPluginServices" if has_record else "RootEndpointPluginArgs"


def _write_jar(classes: Path, jar_path: Path) -> None:
    with zipfile.ZipFile(jar_path, "w", zipfile.ZIP_DEFLATED) as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
        for path in sorted(classes.rglob("*.class")):
            jar.write(path, path.relative_to(classes).as_posix())


def _fingerprint(dist: Distribution, home: Path) -> str:
    digest = hashlib.sha256(f"{dist.name}|{_entry_class(home)}|{dist.java_range[0]}".encode())
    for path in [*sorted(_SOURCES.glob("*.java")), _SOURCES / _DESCRIPTOR]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
