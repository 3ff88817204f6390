"""docs/settings.md, generated from the settings table: the reference cannot drift from the code.

    python -m rerank_proxy.config_reference > docs/settings.md

A test compares the file with `markdown()`, so a setting added or changed in `config.SETTINGS`
without regenerating the page fails the suite.
"""

from __future__ import annotations

from collections.abc import Iterable

from rerank_proxy.config import SETTINGS, TOOL_SETTINGS, Setting

GROUP_TITLES = {
    "upstream": "Engines (upstream)",
    "limits": "Limits at the edge",
    "server": "Server",
    "access": "Access",
    "rerank": "Reranking",
    "local model": "Built-in model",
    "cache": "Caching",
    "console": "Relevance console",
    "experiments": "Online experiments (UBI and arms)",
    "logging": "Logging",
}

INTRO = """# Settings

Every setting is an environment variable, validated at start-up: a wrong value stops the process
with one line naming the variable, the problem and what is accepted, and a variable that looks like
a setting but is none (a misspelling) is warned about with the closest name. Flags of
`rerank-proxy serve` (`--host`, `--port`, `--workers`, `--log-level`) override the environment.
These secrets can also be read from a file named by `<NAME>_FILE`, and are never logged:
{secrets}.

The guide to what these do is the [README](../README.md); the per-topic pages ([search](search.md),
[rerankers](rerankers.md), [caching](caching.md), [operations](operations.md)) say how they
interact. This page is generated from the settings table in `rerank_proxy/config.py`
(`python -m rerank_proxy.config_reference > docs/settings.md`), and a test keeps the two equal.
"""

TOOLS_INTRO = """## Tools' environment (engine runner, demo)

These are read only by `rerank-proxy engine ...` and the demo, never by the proxy itself.
"""


def _cell(value: str) -> str:
    return f"`{value}`" if value else "(empty)"


def _table(settings: Iterable[Setting]) -> list[str]:
    lines = ["| name | default | accepts | meaning | example |", "| --- | --- | --- | --- | --- |"]
    for s in settings:
        meaning = s.meaning.replace("|", "\\|")
        accepts = s.parse.accepted.replace("|", "\\|")
        lines.append(f"| `{s.name}` | {_cell(s.default)} | {accepts} | {meaning} | {_cell(s.example)} |")
    return lines


def markdown() -> str:
    secrets = ", ".join(f"`{s.name}`" for s in SETTINGS if s.from_file)
    parts = [INTRO.format(secrets=secrets)]
    for group, title in GROUP_TITLES.items():
        members = [s for s in SETTINGS if s.group == group]
        if members:
            parts.append(f"## {title}\n\n" + "\n".join(_table(members)) + "\n")
    parts.append(TOOLS_INTRO + "\n" + "\n".join(_table(TOOL_SETTINGS)) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
