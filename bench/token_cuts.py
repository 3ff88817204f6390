"""Where should the built-in model cut a document? nDCG@10 and embedding time at 128, 192 and 256 tokens.

    .venv/bin/python -m bench.token_cuts                       # numpy BM25 first stage, no engine
    .venv/bin/python -m bench.token_cuts --lexical engine --url http://127.0.0.1:9250

Embedding is most of what a cold store costs, and it grows with the tokens per document, so a
smaller LOCAL_MODEL_MAX_TOKENS is the one lever that cuts the work itself. For each cut: the
Cranfield documents' token lengths (how many the cut shortens), the time to embed 100 documents
(interleaved rounds over the same documents, on the shipped LOCAL_EMBED_THREADS=2), and
nDCG@10 of the shipped ranking (blend 0.7 over the lexical top 100) with its difference to 256
tokens and a paired bootstrap 95% interval. Results: bench/results/token_cuts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.relevance_offline import (
    RULE,
    Candidates,
    blend,
    bm25_candidates,
    delta_ci,
    embed_all,
    engine_candidates,
    lexical_order,
    load,
    per_query,
)
from rerank_proxy.local.minilm import MiniLM
from rerank_proxy.search.text.hit_text import hit_text

CUTS = (128, 192, 256)
SHIPPED_WEIGHT = 0.7
RESULTS = Path(__file__).resolve().parent / "results" / "token_cuts.json"


def token_lengths(model: MiniLM, texts: list[str]) -> list[int]:
    return [len(model.tokenizer.encode(text).ids) for text in texts]


def time_per_100(cuts: tuple[int, ...], texts: list[str], rounds: int) -> dict[int, list[float]]:
    """Seconds to embed 100 documents at each cut, the cuts taking turns so drift hits all alike."""
    models = {cut: MiniLM(max_tokens=cut) for cut in cuts}
    sample = texts[:100]
    for model in models.values():   # first call loads and warms the session
        model.embed(sample[:8])
    seconds: dict[int, list[float]] = {cut: [] for cut in cuts}
    for round_no in range(rounds):
        for cut in cuts if round_no % 2 == 0 else reversed(cuts):
            started = time.perf_counter()
            models[cut].embed(sample)
            seconds[cut].append(time.perf_counter() - started)
        print(f"  timing round {round_no + 1}/{rounds}: "
              + ", ".join(f"{c}: {seconds[c][-1]:.2f} s" for c in cuts), file=sys.stderr)
    for model in models.values():
        model.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/datasets/cranfield"))
    parser.add_argument("--lexical", choices=("bm25", "engine"), default="bm25")
    parser.add_argument("--url", default="http://127.0.0.1:9250", help="engine for --lexical engine")
    parser.add_argument("--index", default="bench-cranfield")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds of 100 documents per cut")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rerank-proxy-bench-vectors"))
    args = parser.parse_args()

    corpus, queries, qrels = load(args.corpus)
    doc_texts = {d: hit_text(doc, RULE) for d, doc in corpus.items()}
    candidates: Candidates = (engine_candidates(args.url, args.index, corpus, queries, False)
                              if args.lexical == "engine" else bm25_candidates(corpus, queries))
    probe = MiniLM(max_tokens=512)
    lengths = token_lengths(probe, list(doc_texts.values()))
    probe.close()
    print(f"Cranfield: {len(corpus)} docs, {len(qrels)} judged queries; tokens per document: median "
          f"{statistics.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max {max(lengths)}\n",
          file=sys.stderr)

    ndcg: dict[int, np.ndarray] = {}
    for cut in CUTS:
        model = MiniLM(max_tokens=cut)
        docs = embed_all(model, doc_texts, args.cache, f"cranfield-docs-{cut}")
        qvecs = embed_all(model, queries, args.cache, f"cranfield-queries-{cut}")
        model.close()
        ndcg[cut] = per_query(candidates, qrels, docs, qvecs, blend(SHIPPED_WEIGHT))[0]
    lexical = per_query(candidates, qrels, docs, qvecs, lexical_order)[0]
    seconds = time_per_100(CUTS, list(doc_texts.values()), args.rounds)

    rows: list[dict[str, Any]] = []
    for cut in CUTS:
        low, high = delta_ci(ndcg[cut] - ndcg[256])
        rows.append({"max_tokens": cut, "docs_cut": sum(n > cut for n in lengths), "docs": len(lengths),
                     "ndcg10": float(ndcg[cut].mean()), "vs_lexical": float(ndcg[cut].mean() - lexical.mean()),
                     "vs_256": float(ndcg[cut].mean() - ndcg[256].mean()), "vs_256_ci": [low, high],
                     "s_per_100_median": statistics.median(seconds[cut]), "s_per_100": seconds[cut]})
    print(f"| max tokens | documents cut | nDCG@10 (blend {SHIPPED_WEIGHT}, {args.lexical}) | vs lexical "
          "| vs 256 [95% CI] | s per 100 docs (median) | time vs 256 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base_time = rows[-1]["s_per_100_median"]
    for r in rows:
        ci = r["vs_256_ci"]
        print(f"| {r['max_tokens']} | {r['docs_cut']}/{r['docs']} | {r['ndcg10']:.4f} | {r['vs_lexical']:+.3f} "
              f"| {r['vs_256']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] | {r['s_per_100_median']:.2f} "
              f"| {r['s_per_100_median'] / base_time:.2f}x |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"lexical": args.lexical, "lexical_ndcg10": float(lexical.mean()),
                                   "rounds": args.rounds, "rows": rows,
                                   "load_average_at_end": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
