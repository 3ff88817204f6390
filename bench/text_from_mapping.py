"""Hit text from the index mapping (RERANK_TEXT_FROM_MAPPING): Cranfield nDCG@10, characters and tokens per hit.

Three indices on one engine:
- `cranfield` as bench/relevance.py indexes it: title and text typed `text`, the integer `bucket`;
- Cranfield with its metadata kept as exact values: title and text `text`, author and bib (`j. ae.
  scs. 25, 1958, 324.`) `keyword`, the way a catalogue keeps codes next to its prose;
- a synthetic product catalogue: title and description `text`; sku, gtin, brand, category, colour
  and tags `keyword`; price and stock numbers.

Relevance, for each Cranfield index with RERANK_TEXT_FROM_MAPPING=false (every string of `_source`,
the old default) and true (the new one), everything else on the shipped defaults (built-in model,
blend 0.7, window 100): `rerank-proxy warm --index ...` into one vector store, then `rerank-proxy
serve`, then the 225 judged queries (`multi_match` over title and text, `size: 100`) through it.

Text sent, per index and setting: every query's candidate window (the engine's top 100) turned into
texts by the proxy's own code (`mapped_hit_texts` on a `TextFieldCache` reading the real mapping, or
every string); mean characters, and all-MiniLM-L6-v2 word pieces with no truncation, per hit (a
hosted reranker's own tokenizer counts differently, but in proportion).

    .venv/bin/python -m bench.text_from_mapping --url http://127.0.0.1:19200
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    REPO,
    engine_version,
    in_process_settings,
    index_cranfield,
    log,
    machine_info,
    named,
    start_command,
    start_proxy,
    started_proxies,
)
from bench.relevance_offline import load, ndcg_at
from rerank_proxy.engine import EnginePool
from rerank_proxy.search.text.hit_text import hit_texts
from rerank_proxy.search.text.text_fields import TextFieldCache, mapped_hit_texts

DATASET = Path("/work/shared/datasets/cranfield")
RESULTS = REPO / "bench" / "results" / "text_from_mapping.json"
CRANFIELD = "bench-mapping-cranfield"
CRANFIELD_META = "bench-mapping-cranfield-meta"
PRODUCTS = "bench-mapping-products"
WINDOW = 100

_ADJECTIVES = ["waterproof", "lightweight", "insulated", "breathable", "packable", "stretch", "thermal", "quick-dry"]
_ITEMS = ["hiking jacket", "trail running shoe", "rain pants", "fleece pullover", "down vest", "merino base layer",
          "daypack", "trekking poles", "sleeping bag", "camp stove", "softshell jacket", "hiking boot"]
_MATERIALS = ["nylon ripstop", "recycled polyester", "merino wool", "a three-layer membrane", "aluminium", "mesh"]
_USES = ["alpine hikes", "wet commutes", "winter camping", "fast trail runs", "multi-day treks", "travel"]
_BRANDS = ["ACME", "NORTHCO", "PEAKLINE", "TRAILWORKS", "SUMMITGEAR"]
_COLOURS = ["black", "navy", "olive", "red", "grey"]
PRODUCT_QUERIES = ["waterproof hiking jacket", "lightweight trail running shoe", "merino base layer for winter",
                   "packable down vest", "insulated sleeping bag", "breathable rain pants", "daypack for travel",
                   "thermal fleece pullover", "quick-dry softshell jacket", "aluminium trekking poles",
                   "camp stove for multi-day treks", "stretch hiking boot", "red rain jacket", "navy fleece",
                   "recycled polyester jacket"]


def products(n: int = 600, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        adjective, item, material = rng.choice(_ADJECTIVES), rng.choice(_ITEMS), rng.choice(_MATERIALS)
        brand, colour, category = rng.choice(_BRANDS), rng.choice(_COLOURS), 1000 + _ITEMS.index(item)
        docs.append({
            "sku": f"{brand[:3]}-{category}-{i:05d}-{colour[:3].upper()}",
            "gtin": "".join(rng.choice("0123456789") for _ in range(13)),
            "title": f"{adjective.capitalize()} {item}",
            "brand": brand,
            "category": f"CAT-{category}",
            "colour": colour,
            "description": f"A {adjective} {item} in {colour}, made of {material}, for {rng.choice(_USES)}. "
                           f"Weighs {rng.randint(150, 1900)} g; {rng.choice(['two', 'three', 'four'])} pockets.",
            "tags": ["outdoor", f"season-{rng.choice(['ss', 'aw'])}{rng.randint(22, 25)}",
                     f"line-{rng.randint(1, 40)}"],
            "price": round(rng.uniform(15, 450), 2),
            "stock": rng.randint(0, 400),
        })
    return docs


def create(client: httpx.Client, index: str, properties: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    client.delete(f"/{index}")
    client.put(f"/{index}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                  "mappings": {"properties": properties}}).raise_for_status()
    lines = []
    for i, doc in enumerate(docs):
        lines += [json.dumps({"index": {"_id": doc.pop("_id", str(i))}}), json.dumps(doc)]
    reply = client.post(f"/{index}/_bulk", params={"refresh": "true"}, content="\n".join(lines) + "\n",
                        headers={"content-type": "application/x-ndjson"})
    reply.raise_for_status()
    assert not reply.json()["errors"], f"bulk into {index} failed"


def index_all(url: str) -> None:
    index_cranfield(url, CRANFIELD)
    meta = []
    for line in (DATASET / "corpus.jsonl").open():
        doc = json.loads(line)
        meta.append({"_id": doc["_id"], "title": doc.get("title", ""), "text": doc.get("text", ""),
                     "author": doc["metadata"].get("author", ""), "bib": doc["metadata"].get("bib", "")})
    text, keyword = {"type": "text"}, {"type": "keyword"}
    with httpx.Client(base_url=url, timeout=120) as client:
        create(client, CRANFIELD_META, {"title": text, "text": text, "author": keyword, "bib": keyword}, meta)
        create(client, PRODUCTS, {"title": text, "description": text, "sku": keyword, "gtin": keyword,
                                  "brand": keyword, "category": keyword, "colour": keyword, "tags": keyword,
                                  "price": {"type": "float"},
                                  "stock": {"type": "integer"}}, products())
    log(f"indexed {CRANFIELD_META} and {PRODUCTS}")


# --- text sent per hit ------------------------------------------------------------------------------

async def texts_per_setting(url: str, index: str, queries: list[str], fields: list[str]) -> dict[str, list[str]]:
    """Every candidate text of every query's window, as the proxy builds it with the mapping off and on."""
    settings, _ = in_process_settings(url, None, name="hit texts (in-process)")
    rule = settings.default_rule(index)
    engine = EnginePool(settings)
    cache = TextFieldCache(engine)
    out: dict[str, list[str]] = {"every string": [], "text fields": []}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for query in queries:
                body = {"size": WINDOW, "query": {"multi_match": {"query": query, "fields": fields}}}
                reply = await client.post(f"/{index}/_search", json=body)
                reply.raise_for_status()
                hits = reply.json()["hits"]["hits"]
                out["every string"] += hit_texts(hits, dataclasses.replace(rule, text_from_mapping=False))
                out["text fields"] += await mapped_hit_texts(hits, rule, None, cache)
    finally:
        await cache.aclose()
        engine.close()
    return out


def sizes(texts: list[str], tokenizer: Any) -> dict[str, float]:
    pieces = [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return {"hits": len(texts), "chars_per_hit": statistics.fmean(len(t) for t in texts),
            "tokens_per_hit": statistics.fmean(pieces)}


def text_sizes(url: str, cranfield_queries: list[str]) -> dict[str, dict[str, Any]]:
    from tokenizers import Tokenizer

    from rerank_proxy.local.minilm import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    runs = {CRANFIELD: (cranfield_queries, ["title", "text"]), CRANFIELD_META: (cranfield_queries, ["title", "text"]),
            PRODUCTS: (PRODUCT_QUERIES, ["title", "description"])}
    out: dict[str, dict[str, Any]] = {}
    for index, (queries, fields) in runs.items():
        texts = asyncio.run(texts_per_setting(url, index, queries, fields))
        out[index] = {name: sizes(values, tokenizer) for name, values in texts.items()}
        out[index]["example"] = {name: values[0] for name, values in texts.items()}
        log(f"{index}: {out[index]}")
    return out


# --- relevance through the proxy --------------------------------------------------------------------

def through_proxy(url: str, index: str, store: Path, from_mapping: bool, queries: dict[str, str],
                  qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """`rerank-proxy warm` then `serve` of this checkout (bench.common's harness: the shipped defaults
    plus the store and RERANK_TEXT_FROM_MAPPING), and the judged queries through it."""
    settings = named(LOCAL_VECTOR_STORE=str(store), RERANK_TEXT_FROM_MAPPING=from_mapping)
    warm = start_command("warm", ["warm", "--index", index, "--url", url], **settings)
    if warm.proc.wait() != 0:
        raise SystemExit(f"warm failed:\n{warm.log_tail()}")
    log(f"warm {index} (from mapping: {from_mapping}): {warm.log_tail(1)}")
    proxy = start_proxy(url, provider=None, name=f"proxy-{index}-from-mapping-{str(from_mapping).lower()}",
                        ready="/_rerank/health", wait_workers=False, **settings)
    try:
        return run_queries(proxy.url, index, queries, qrels)
    finally:
        proxy.stop()


def run_queries(url: str, index: str, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    ndcg: list[float] = []
    outcomes: dict[str, int] = {}
    with httpx.Client(timeout=120) as client:
        for qid, text in queries.items():
            body = {"query": {"multi_match": {"query": text, "fields": ["title", "text"]}}, "size": 100,
                    "_source": False}
            reply = client.post(f"{url}/{index}/_search", json=body)
            reply.raise_for_status()
            outcome = reply.headers.get("x-rerank", "engine")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            ndcg.append(ndcg_at([h["_id"] for h in reply.json()["hits"]["hits"]], qrels[qid]))
    return {"ndcg@10": statistics.fmean(ndcg), "outcomes": outcomes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="engine URL (Elasticsearch or OpenSearch)")
    parser.add_argument("--keep", action="store_true", help="keep the three indices afterwards")
    args = parser.parse_args()
    _, queries, qrels = load(DATASET)
    index_all(args.url)
    result: dict[str, Any] = {"machine": machine_info(), "engine": engine_version(args.url),
                              "sizes": text_sizes(args.url, list(queries.values()))}
    store = Path(tempfile.mkdtemp(prefix="text-from-mapping-")) / "vectors.sqlite"
    rows: dict[str, Any] = {}
    for index in (CRANFIELD, CRANFIELD_META):
        rows[index] = {"engine alone": run_queries(args.url, index, queries, qrels)}
        for from_mapping in (False, True):
            name = "text fields (new default)" if from_mapping else "every string (old default)"
            rows[index][name] = through_proxy(args.url, index, store, from_mapping, queries, qrels)
            log(f"{index}, {name}: {rows[index][name]}")
    result["relevance"] = rows
    result["settings_differ"] = started_proxies()
    RESULTS.write_text(json.dumps(result, indent=2))
    if not args.keep:
        httpx.delete(f"{args.url}/{CRANFIELD},{CRANFIELD_META},{PRODUCTS}", timeout=60)

    print(f"\n| index | text | nDCG@10 (Cranfield, {len(queries)} queries) | X-Rerank |")
    print("| --- | --- | --- | --- |")
    for index, variants in rows.items():
        for name, row in variants.items():
            print(f"| {index} | {name} | {row['ndcg@10']:.4f} | {row['outcomes']} |")
    print("\n| index | text | characters per hit | MiniLM tokens per hit |")
    print("| --- | --- | --- | --- |")
    for index, by_setting in result["sizes"].items():
        for name in ("every string", "text fields"):
            row = by_setting[name]
            print(f"| {index} | {name} | {row['chars_per_hit']:.0f} | {row['tokens_per_hit']:.1f} |")


if __name__ == "__main__":
    main()
