"""What the framework tests share: a small Cranfield corpus, the proxy they point at, the framework
scenario's run and the checks.

The frameworks run in `.venv-apps` (they pin elasticsearch-py <9; this venv has 9.x), so this side
imports none of them: tests/apps/scenario.py, run there as a subprocess, writes the corpus through the
framework's own store (through the proxy), searches through its own retriever once through the proxy
and once straight at the engine, and prints the answers' ids and shapes as JSON. The test checks:

(a) the search was reranked: the proxy's access line for the `_search` says `reranked` (the
    X-Rerank value; the frameworks do not hand response headers back), and the reranker got the hits;
(b) the framework's answer has the same shape both ways: same fields, same number of results,
    same ids as a set (the window is the framework's top_k, so the reranked candidates are exactly
    the engine's top hits);
(c) the text each hit was scored on (what the recording reranker received, as a provider would) is
    recorded for the schema the framework creates, then must be the content: no serialised JSON,
    none of the metadata values.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support_rerankers import RecordingReranker
from tests.support_wait import wait_until

REPO = Path(__file__).resolve().parents[2]
# shared/ lies beside the repository (in CI too: a copy of it beside the clone).
CRANFIELD = [REPO.parent / "shared" / "datasets" / "cranfield", Path("/work/shared/datasets/cranfield")]
CORPUS_SIZE = 40
# The framework's top_k and the proxy's window alike: the proxy reranks exactly the engine's top K.
K = 10
QUERY = "boundary layer heat transfer"  # 22 of the 40 papers match: more than K
SCENARIO_TIMEOUT_S = 300  # importing a framework takes seconds; a run with writes and two searches, tens


@dataclass(frozen=True)
class Paper:
    """One Cranfield abstract: `text` is the content; the rest is metadata a framework keeps beside it."""

    id: str
    title: str
    text: str
    author: str
    bib: str

    @property
    def metadata(self) -> dict[str, str]:
        return {"title": self.title, "author": self.author, "bib": self.bib, "source": f"cranfield-{self.id:0>4}"}


def papers() -> list[Paper]:
    """The first CORPUS_SIZE papers of Cranfield (no paper is found: the tests fail, they do not skip)."""
    folder = next((p for p in CRANFIELD if (p / "corpus.jsonl").is_file()), None)
    assert folder is not None, f"the Cranfield corpus is not at any of {[str(p) for p in CRANFIELD]}"
    out = []
    with (folder / "corpus.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            meta = row.get("metadata") or {}
            out.append(Paper(row["_id"], row["title"], row["text"], meta.get("author") or "", meta.get("bib") or ""))
            if len(out) == CORPUS_SIZE:
                break
    return out


def write_corpus(corpus: list[Paper], path: Path) -> Path:
    """The corpus as the scenario and bench.framework_writers read it: {"id", "text", "metadata"} lines."""
    path.write_text("".join(json.dumps({"id": p.id, "text": p.text, "metadata": p.metadata}) + "\n" for p in corpus))
    return path


def not_content_values(corpus: list[Paper]) -> set[str]:
    """The metadata values that are not also content (Cranfield's text starts with its title)."""
    return {value for paper in corpus for value in paper.metadata.values()
            if len(value) >= 4 and value not in paper.text}


# --- the engine, read directly --------------------------------------------------------------------

def flat_mapping(engine_url: str, index: str) -> dict[str, str]:
    """The index's mapping as {dotted field path: type}, sub-fields (`fields`) included."""
    response = httpx.get(f"{engine_url}/{index}/_mapping", timeout=30)
    assert response.status_code == 200, response.text
    out: dict[str, str] = {}

    def walk(properties: Mapping[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                walk(spec["properties"], f"{path}.")
            else:
                out[path] = spec.get("type", "object")
            for sub, sub_spec in (spec.get("fields") or {}).items():
                out[f"{path}.{sub}"] = sub_spec.get("type", "object")

    mappings = response.json()[index]["mappings"]
    walk(mappings.get("properties", {}), "")
    return dict(sorted(out.items()))


def stored_sources(engine_url: str, index: str) -> dict[str, dict[str, Any]]:
    """Every document of the index as stored, {_id: _source}."""
    response = httpx.post(f"{engine_url}/{index}/_search", json={"size": 1000, "query": {"match_all": {}}},
                          timeout=30)
    assert response.status_code == 200, response.text
    return {hit["_id"]: hit["_source"] for hit in response.json()["hits"]["hits"]}


def leaves(source: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, value as text) of each string or number in a _source."""
    if isinstance(source, dict):
        for key, value in source.items():
            yield from leaves(value, f"{prefix}{key}.")
    elif isinstance(source, list):
        for item in source:
            yield from leaves(item, prefix)
    elif isinstance(source, (str, int, float)) and not isinstance(source, bool):
        yield prefix.rstrip("."), str(source)


# --- what the reranker received -------------------------------------------------------------------

# The opening of a serialised JSON object (`{"key":`, `[{"key":`): caught even when the cut at
# RERANK_MAX_CHARS leaves the rest unparseable.
_JSON_OPENING = re.compile(r'[{\[]\s*"[^"\n]{1,200}"\s*:')


def json_fragments(text: str) -> list[str]:
    """The substrings of `text` that parse as a non-empty JSON object or an array of records or
    strings (serialised records), and the openings of serialised objects that were cut."""
    decoder = json.JSONDecoder()
    found = [match.group(0) for match in _JSON_OPENING.finditer(text)]
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        # a list of numbers is prose's reference marks ("[2]", "[1, 3]"), not a record
        if (isinstance(value, dict) and value) or (
                isinstance(value, list) and any(isinstance(item, (dict, list, str)) for item in value)):
            found.append(text[start:end])
    return found


def _contains(text: str, value: str) -> bool:
    """Whether a field's value is in the text (a long value: its first 60 characters)."""
    return value.strip()[:60] in text


def _sent(text: str, value: str, content: str) -> bool:
    """Whether a field's value is part of the text sent: found more often than the content holds it
    (Cranfield's title opens its text, so a title is counted only when it is sent besides)."""
    probe = value.strip()[:60]
    if len(probe) < 3:
        return False
    return text.count(probe) > (0 if value == content else content.count(probe))


@dataclass
class Measured:
    """What the proxy's default hit text sent the reranker for one framework's schema."""

    framework: str
    mapping: dict[str, str]
    fields_sent: dict[str, int]          # source path -> in how many of the received texts its value is
    chars: list[int]
    json_hits: int                       # received texts carrying serialised JSON
    metadata_hits: int                   # received texts carrying a metadata value that is not content
    sample: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        mean = sum(self.chars) / len(self.chars) if self.chars else 0.0
        lines = [f"{self.framework}: {len(self.chars)} hit texts, chars per hit mean {mean:.0f} "
                 f"(min {min(self.chars, default=0)}, max {max(self.chars, default=0)}); "
                 f"with serialised JSON: {self.json_hits}; with metadata values: {self.metadata_hits}",
                 "  mapping: " + ", ".join(f"{path}:{kind}" for path, kind in self.mapping.items()),
                 "  fields in the text sent: " + ", ".join(f"{path} ({n}/{len(self.chars)})"
                                                         for path, n in self.fields_sent.items()),
                 f"  first text sent: {self.sample[:150]!r} ... {self.sample[-350:]!r}"]
        return "\n".join(lines)


MEASURED: list[Measured] = []


def measure(framework: str, engine_url: str, index: str, texts: list[str], corpus: list[Paper]) -> Measured:
    """Record what the reranker received for `index` (written by `framework`) and return it."""
    sources = stored_sources(engine_url, index)
    secrets = not_content_values(corpus)
    fields_sent: dict[str, int] = {}
    for text in texts:
        # the stored document this text was made from: the paper whose content it carries (every
        # framework here is given `cran-<id>` as the document's id, its _id)
        paper = next((p for p in corpus if p.text[:60] in text), None)
        source = sources.get(f"cran-{paper.id}") if paper else None
        if paper is None or source is None:
            continue
        for path in sorted({path for path, value in leaves(source) if _sent(text, value, paper.text)}):
            fields_sent[path] = fields_sent.get(path, 0) + 1
    measured = Measured(
        framework=framework, mapping=flat_mapping(engine_url, index), fields_sent=dict(sorted(fields_sent.items())),
        chars=[len(t) for t in texts], json_hits=sum(1 for t in texts if json_fragments(t)),
        metadata_hits=sum(1 for t in texts if any(v in t for v in secrets)), sample=texts[0] if texts else "")
    MEASURED.append(measured)
    return measured


def assert_sent_content(framework: str, engine_url: str, index: str, texts: list[str], corpus: list[Paper]) -> None:
    """(c): what the reranker was sent for the framework's schema, recorded, then checked to be the content."""
    measure(framework, engine_url, index, texts, corpus)
    assert_texts_are_content(texts, corpus)


def assert_texts_are_content(texts: list[str], corpus: list[Paper]) -> None:
    """Each text sent is a paper's content: no serialised JSON, no metadata value that is not content."""
    assert texts, "the reranker received no text"
    secrets = not_content_values(corpus)
    contents = [paper.text[:60] for paper in corpus]
    for text in texts:
        assert not json_fragments(text), f"serialised JSON in the text sent: {json_fragments(text)[0][:200]!r}"
        leaked = sorted(v for v in secrets if v in text)
        assert not leaked, f"metadata values in the text sent: {leaked[:5]} in {text[:300]!r}"
        assert any(content in text for content in contents), f"no paper's content in the text sent: {text[:300]!r}"


# --- the framework's side, in .venv-apps -----------------------------------------------------------

def run_scenario(python: Path, case: str, proxy_url: str, engine_url: str, index: str,
                 corpus_file: Path) -> dict[str, Any]:
    """Run tests/apps/scenario.py for `case` in the apps venv; its JSON (a failed run fails the test)."""
    command = [str(python), "-m", "tests.apps.scenario", case, proxy_url, engine_url, index, str(corpus_file),
               "--query", QUERY, "--k", str(K)]
    env = {**os.environ, "HAYSTACK_TELEMETRY_ENABLED": "False"}
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as timeout:
        stderr = timeout.stderr.decode(errors="replace") if isinstance(timeout.stderr, bytes) else timeout.stderr
        pytest.fail(f"the {case} scenario took over {SCENARIO_TIMEOUT_S} s\nstderr:\n{(stderr or '')[-4000:]}",
                    pytrace=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        pytest.fail(f"the {case} scenario exited {done.returncode}: `{' '.join(command)}`\n"
                    f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}", pytrace=False)
    out: dict[str, Any] = json.loads(lines[-1])
    return out


# --- the proxy, as the apps see it ----------------------------------------------------------------

@dataclass
class AppsProxy:
    """A proxy of the test's own (empty score cache) with the recording reranker, its access lines."""

    url: str
    reranker: RecordingReranker
    caplog: pytest.LogCaptureFixture

    def mark(self) -> int:
        """Where the reranker's record stands now: `texts_since` gives what it got after."""
        return len(self.reranker.sent)

    def texts_since(self, mark: int) -> list[str]:
        return [text for batch in self.reranker.sent[mark:] for text in batch]

    def search_lines(self, index: str) -> list[dict[str, Any]]:
        """The access lines of searches on `index` so far."""
        lines = [getattr(record, "fields", {}) for record in self.caplog.records
                 if record.name == "rerank_proxy.access"]
        return [line for line in lines if str(line.get("path", "")).startswith(f"/{index}/_search")]

    def assert_reranked(self, index: str, searches: int = 1) -> list[dict[str, Any]]:
        """Wait for the access lines of `searches` searches on `index` (written once each answer has
        gone out) and check that each says `reranked`, the X-Rerank value."""
        wait_until(lambda: len(self.search_lines(index)) >= searches,
                   f"the access lines of {searches} search(es) on {index}")
        lines = self.search_lines(index)
        assert [line["outcome"] for line in lines] == ["reranked"] * len(lines), lines
        return lines


def capture_access(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rerank_proxy.access")
