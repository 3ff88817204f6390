"""What the default hit text sends for each framework's own schema, and what it does to nDCG.

Haystack, LangChain and LlamaIndex each write the 1,400 Cranfield abstracts through their own
Elasticsearch store (straight to the engine: the writes are not what is measured), with the
metadata an app keeps beside the content (title, author, bib, source). Each framework picks its
own mapping: Haystack keeps meta as keywords; LangChain and LlamaIndex keep a `metadata` object that
dynamic mapping types as `text`, and LlamaIndex serialises its whole node into
`metadata._node_content`.

Text sent: every judged query's window (the engine's top 100 for a `match` on the framework's
content field, the query its BM25 retriever sends) turned into texts by the proxy's own code,
with the rule before the change (every text field of the mapping, JSON strings included) and after
it (`prose.without_metadata`, `prose.is_serialised_json`); mean characters and all-MiniLM-L6-v2
word pieces per hit.

Relevance: `before` (the revision given by --before, default the one before the change) and `after`
(this checkout), each `rerank-proxy serve` on the shipped defaults with a fresh HOME (so a fresh
vector store at the shipped path; no setting changed), on a cold start: pass 1 sends the 225
queries, the embedder is left to store the windows' documents, pass 2 sends them again; nDCG@10 of
both passes and the share reranked.

    .venv/bin/python -m bench.framework_text     # the writers run in .venv-apps (make apps-venv)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, engine_version, log, machine_info, start_engine, start_proxy, started_proxies
from bench.relevance import DATASET, store_rows, wait_until_stored
from bench.relevance_offline import load, ndcg_at
from bench.revisions import worktrees
from bench.text_from_mapping import sizes
from rerank_proxy.config import IndexRule
from rerank_proxy.search.text.hit_text import hit_texts
from rerank_proxy.search.text.mapping_fields import RERANK_TEXT_TYPES, TextPaths, answer_paths
from rerank_proxy.search.text.prose import without_metadata

RESULTS = REPO / "bench" / "results" / "framework_text.json"
SHIPPED_STORE = ".cache/rerank-proxy/vectors.sqlite"  # LOCAL_VECTOR_STORE's default, under HOME
BEFORE = "0607b87"  # the last revision whose default hit text kept metadata objects and JSON strings
WINDOW = 100
ID_PREFIX = "cran-"  # bench/framework_writers.py stores each paper under this prefix

Paper = dict[str, Any]


def papers() -> list[Paper]:
    out = []
    for line in (DATASET / "corpus.jsonl").open():
        row = json.loads(line)
        meta = row.get("metadata") or {}
        out.append({"id": row["_id"], "text": row.get("text") or row.get("title") or "",
                    "metadata": {"title": row.get("title", ""), "author": meta.get("author") or "",
                                 "bib": meta.get("bib") or "", "source": f"cranfield-{row['_id']:0>4}"}})
    return out


# --- each framework writes the corpus its own way -------------------------------------------------

APPS_PYTHON = REPO / ".venv-apps" / "bin" / "python"  # the frameworks pin elasticsearch-py <9: their own venv
# framework -> the field its BM25 retriever matches
CONTENT_FIELD = {"haystack": "content", "langchain": "text", "llamaindex": "content"}


def write(url: str, framework: str, corpus: list[Paper], folder: Path) -> str:
    """The corpus written through the framework's own store (bench/framework_writers.py, in .venv-apps)."""
    if not APPS_PYTHON.exists():
        raise SystemExit(f"{APPS_PYTHON} is missing: `make apps-venv` builds the frameworks' venv")
    index = f"bench-framework-{framework}"
    httpx.delete(f"{url}/{index}", timeout=60)
    lines = folder / "corpus.jsonl"
    lines.write_text("".join(json.dumps(p) + "\n" for p in corpus))
    done = subprocess.run([str(APPS_PYTHON), "-m", "bench.framework_writers", framework, url, index, str(lines)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{framework} could not write the corpus:\n{done.stderr[-2000:]}")
    count = httpx.get(f"{url}/{index}/_count", timeout=60).json()["count"]
    assert count == len(corpus), f"{framework} wrote {count} of {len(corpus)} documents"
    log(f"{framework}: wrote {count} documents into {index}")
    return index


def search(client: httpx.Client, url: str, index: str, field: str, query: str, source: bool) -> dict[str, Any]:
    body = {"query": {"match": {field: query}}, "size": WINDOW, "_source": source}
    reply = client.post(f"{url}/{index}/_search", json=body)
    reply.raise_for_status()
    return {"hits": reply.json()["hits"]["hits"], "x-rerank": reply.headers.get("x-rerank", "engine")}


# --- text sent per hit ------------------------------------------------------------------------------

def texts_sent(url: str, index: str, field: str, queries: list[str]) -> dict[str, list[str]]:
    """Every window text under the rule before the change and after it (the proxy's own code)."""
    mapping = httpx.get(f"{url}/{index}/_mapping", timeout=60).json()
    every_text_field = answer_paths(mapping, RERANK_TEXT_TYPES)
    before_paths, after_paths = TextPaths(every_text_field), TextPaths(without_metadata(every_text_field))
    rule = IndexRule("*", text_from_mapping=True)
    out: dict[str, list[str]] = {"before": [], "after": []}
    with httpx.Client(timeout=120) as client:
        for query in queries:
            hits = search(client, url, index, field, query, True)["hits"]
            for hit in hits:  # the old rule: every text field, serialised JSON kept
                parts: list[str] = []
                before_paths.strings_into(hit.get("_source"), parts, keep_json=True)
                out["before"].append("\n".join(parts)[: rule.max_chars])
            out["after"] += hit_texts(hits, rule, None, {index: after_paths})
    return out


def text_sizes(url: str, index: str, field: str, queries: list[str]) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from rerank_proxy.local.minilm import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = texts_sent(url, index, field, queries)
    out: dict[str, Any] = {name: sizes(values, tokenizer) for name, values in texts.items()}
    out["json_share"] = {name: statistics.fmean('{"' in t for t in values) for name, values in texts.items()}
    out["example"] = {name: values[0][:600] for name, values in texts.items()}
    return out


# --- relevance through the proxy, cold start ---------------------------------------------------------

def one_pass(url: str, index: str, field: str, queries: dict[str, str], qrels: dict,
             seen: set[str] | None = None) -> dict[str, Any]:
    ndcg, reranked = [], 0
    with httpx.Client(timeout=120) as client:
        for qid, text in queries.items():
            answer = search(client, url, index, field, text, False)
            ranked = [h["_id"].removeprefix(ID_PREFIX) for h in answer["hits"]]
            if seen is not None:
                seen.update(ranked)
            ndcg.append(ndcg_at(ranked, qrels[qid]))
            reranked += answer["x-rerank"] in ("reranked", "cached")
    return {"ndcg@10": statistics.fmean(ndcg), "reranked_share": reranked / len(queries)}


def cold_start(engine: str, index: str, field: str, checkout: Path, name: str, queries: dict[str, str],
               qrels: dict, expected: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"framework-text-{name}-"))
    proxy = start_proxy(engine, provider=None, name=name, checkout=checkout, ready="/_rerank/health",
                        wait_workers=False, home=home)
    try:
        first = one_pass(proxy.url, index, field, queries, qrels)
        settled = wait_until_stored(home / SHIPPED_STORE, expected, limit_s=900)
        second = one_pass(proxy.url, index, field, queries, qrels)
    finally:
        proxy.stop()
    row = {"pass1": first, "pass2": second, "settled_s": settled, "store_rows": store_rows(home / SHIPPED_STORE)}
    log(f"{name}: {row}")
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = args.url or start_engine()
    _, queries, qrels = load(DATASET)
    corpus = papers()
    result: dict[str, Any] = {"machine": machine_info(), "engine": engine_version(engine), "before": args.before,
                              "frameworks": {}}
    with worktrees([args.before]) as trees:
        for framework in args.frameworks:
            index = write(engine, framework, corpus, Path(tempfile.mkdtemp(prefix="framework-text-")))
            field = CONTENT_FIELD[framework]
            row: dict[str, Any] = {"mapping_text_fields": sorted(answer_paths(
                httpx.get(f"{engine}/{index}/_mapping", timeout=60).json(), RERANK_TEXT_TYPES))}
            row["sizes"] = text_sizes(engine, index, field, list(queries.values()))
            seen: set[str] = set()
            row["engine alone"] = one_pass(engine, index, field, queries, qrels, seen)
            text_of = {p["id"]: p["text"] for p in corpus}
            expected = len({text_of[i] for i in seen})  # identical abstracts share one vector
            for label, checkout in (("before", trees[args.before]), ("after", REPO)):
                row[label] = cold_start(engine, index, field, checkout, f"{framework}-{label}", queries, qrels,
                                        expected)
            result["frameworks"][framework] = row
            log(f"{framework}: {json.dumps(row['sizes'], default=str)[:400]}")
    result["settings_differ"] = started_proxies()
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| framework | text fields in its mapping | chars/hit before -> after | tokens/hit before -> after "
             "| hits with JSON before -> after | nDCG@10 engine | before (pass 1 / 2) | after (pass 1 / 2) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in result["frameworks"].items():
        s = row["sizes"]
        lines.append(
            f"| {name} | {', '.join(row['mapping_text_fields'])} "
            f"| {s['before']['chars_per_hit']:.0f} -> {s['after']['chars_per_hit']:.0f} "
            f"| {s['before']['tokens_per_hit']:.0f} -> {s['after']['tokens_per_hit']:.0f} "
            f"| {s['json_share']['before']:.0%} -> {s['json_share']['after']:.0%} "
            f"| {row['engine alone']['ndcg@10']:.4f} "
            f"| {row['before']['pass1']['ndcg@10']:.4f} / {row['before']['pass2']['ndcg@10']:.4f} "
            f"| {row['after']['pass1']['ndcg@10']:.4f} / {row['after']['pass2']['ndcg@10']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an Elasticsearch URL (default: the bench engine, started if needed)")
    parser.add_argument("--before", default=BEFORE, help="the revision to compare with (default %(default)s)")
    parser.add_argument("--frameworks", nargs="+", default=list(CONTENT_FIELD), choices=list(CONTENT_FIELD))
    result = run(parser.parse_args())
    RESULTS.write_text(json.dumps(result, indent=2))
    print(table(result))
    log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
