"""Which suite files run against the local engine.

The subset: every file whose `requires` says `stack: true` and names no `feature_flag`, minus the API
folders below. The local engine is Elasticsearch's integ-test build: of x-pack it has only x-pack-core
and x-pack-security (security switched off, see rerank_proxy/local_engines/runner.py), and it lacks most
other modules. Each folder left out is an x-pack plugin that build does not ship, so every file in it
fails at once with "no handler found" (or, for security, needs users and roles that do not exist with
security off); running them would only repeat that. All other files run, including those that fail
directly for a reason of the environment (painless, mustache, reindex, data streams and ingest-common
are modules this build lacks; see docs/local-engines.md): the comparison is direct vs proxy, test by
test.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.client_yaml.loader import YamlFile, load_suite

_SUITE_IN_SHARED = Path("conformance") / "elasticsearch-clients-tests" / "tests"


def _suite_root() -> Path:
    """CLIENT_YAML_SUITE, else the workplace's shared folder beside the checkout, else its fixed place
    (a clean clone elsewhere, as CI makes, still finds it)."""
    if "CLIENT_YAML_SUITE" in os.environ:
        return Path(os.environ["CLIENT_YAML_SUITE"])
    beside = Path(__file__).resolve().parents[3] / "shared" / _SUITE_IN_SHARED
    return beside if beside.is_dir() else Path("/work/shared") / _SUITE_IN_SHARED


SUITE_ROOT = _suite_root()

_XPACK = "an x-pack plugin the integ-test build does not ship"
EXCLUDED_FOLDERS: dict[str, str] = {
    "async_search": f"async-search: {_XPACK}",
    "enrich": f"enrich: {_XPACK}",
    "entsearch": f"ent-search (connectors): {_XPACK}",
    "eql": f"eql: {_XPACK}",
    "esql": f"esql: {_XPACK}",
    "graph": f"graph: {_XPACK}",
    "ilm": f"index lifecycle management: {_XPACK}",
    "inference": f"inference: {_XPACK}",
    "logstash": f"logstash management: {_XPACK}",
    "machine_learning": f"ml: {_XPACK}",
    "migration": f"migrate: {_XPACK}",
    "query_rules": f"ent-search (query rules): {_XPACK}",
    "search_application": f"ent-search (search applications): {_XPACK}",
    "search_mvt": f"vector-tile: {_XPACK}",
    "searchable_snapshots": f"searchable-snapshots: {_XPACK}",
    "security": "x-pack-security is in the build but switched off: no users, roles, API keys or tokens",
    "sql": f"sql: {_XPACK}",
    "streams": f"streams: {_XPACK}",
    "text_structure": f"text-structure: {_XPACK}",
    "transform": f"transform: {_XPACK}",
    "watcher": f"watcher: {_XPACK}",
}


def for_stack(file: YamlFile) -> bool:
    requires = file.requires
    return bool(requires.get("stack")) and not requires.get("feature_flag")


def select(root: Path = SUITE_ROOT) -> list[YamlFile]:
    """The subset, in the suite's order."""
    return [f for f in load_suite(root) if for_stack(f) and f.folder not in EXCLUDED_FOLDERS]
