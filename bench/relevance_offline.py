"""Does the built-in model improve ranking? Cranfield: lexical top-100, then cosine / blend / RRF.

    .venv/bin/rerank-proxy engine up --engine elasticsearch --port 9250
    .venv/bin/python bench/relevance_offline.py --url http://127.0.0.1:9250
    .venv/bin/python bench/relevance_offline.py --lexical bm25      # no engine: numpy BM25

For every query the lexical stage gives 100 candidates (the engine's `multi_match` over title and
text, or a BM25 with k1=1.2, b=0.75 over lower-cased word tokens of title + text). They are then
reordered by: the lexical score alone; the cosine of all-MiniLM-L6-v2 embeddings alone; the proxy's
blend `w * minmax(cosine) + (1 - w) * minmax(lexical)` (the very `final_scores` the proxy runs); and
reciprocal rank fusion (k=60). Document text is what `hit_text` gives for {"title", "text"}.

Metrics (trec_eval conventions, graded gains 1-4 as given): nDCG@10 with linear gains and the ideal
ranking over all judged documents, MRR@10 (first document with gain > 0), Recall@100. Reranking
within the window cannot change Recall@100; it is shown to tell how much the first stage leaves out.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np

from rerank_proxy.config import IndexRule
from rerank_proxy.local.minilm import MiniLM
from rerank_proxy.scoring.final import combine as final_scores
from rerank_proxy.search.merge import rerank_order
from rerank_proxy.search.text.hit_text import hit_text

RULE = IndexRule(pattern="*")
WINDOW = 100
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RRF_K = 60


# --- data ----------------------------------------------------------------------------------------

def load(folder: Path) -> tuple[dict[str, dict], dict[str, str], dict[str, dict[str, int]]]:
    corpus = {}
    for line in (folder / "corpus.jsonl").open():
        doc = json.loads(line)
        corpus[doc["_id"]] = {"title": doc.get("title", ""), "text": doc.get("text", "")}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (folder / "qrels" / "test.tsv").open() as f:
        next(f)
        for line in f:
            qid, did, gain = line.split()
            qrels[qid][did] = int(gain)
    return corpus, {q: queries[q] for q in qrels}, qrels


# --- lexical first stage ---------------------------------------------------------------------------

Candidates = dict[str, list[tuple[str, float]]]  # query id -> [(doc id, lexical score)] best first


def engine_candidates(url: str, index: str, corpus: dict[str, dict], queries: dict[str, str],
                      reindex: bool) -> Candidates:
    with httpx.Client(base_url=url, timeout=120) as client:
        exists = client.head(f"/{index}").status_code == 200
        if exists and reindex:
            client.delete(f"/{index}").raise_for_status()
            exists = False
        if not exists:
            client.put(f"/{index}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                          "mappings": {"properties": {"title": {"type": "text"},
                                                                      "text": {"type": "text"}}}}).raise_for_status()
            lines = []
            for doc_id, doc in corpus.items():
                lines.append(json.dumps({"index": {"_index": index, "_id": doc_id}}))
                lines.append(json.dumps(doc))
            reply = client.post("/_bulk", content="\n".join(lines) + "\n",
                                headers={"content-type": "application/x-ndjson"}, params={"refresh": "true"})
            reply.raise_for_status()
            assert not reply.json()["errors"], "bulk indexing failed"
        count = client.get(f"/{index}/_count").json()["count"]
        assert count == len(corpus), f"{index} holds {count} docs, expected {len(corpus)} (use --reindex)"
        out: Candidates = {}
        ids = list(queries)
        for start in range(0, len(ids), 50):
            chunk = ids[start:start + 50]
            body = []
            for qid in chunk:
                body.append(json.dumps({"index": index}))
                body.append(json.dumps({"size": WINDOW, "_source": False, "query": {
                    "multi_match": {"query": queries[qid], "fields": ["title", "text"]}}}))
            reply = client.post("/_msearch", content="\n".join(body) + "\n",
                                headers={"content-type": "application/x-ndjson"})
            reply.raise_for_status()
            for qid, response in zip(chunk, reply.json()["responses"]):
                out[qid] = [(h["_id"], float(h["_score"])) for h in response["hits"]["hits"]]
        return out


_WORD = re.compile(r"\w+")


def bm25_candidates(corpus: dict[str, dict], queries: dict[str, str], k1: float = 1.2, b: float = 0.75) -> Candidates:
    """BM25 (Lucene's idf) over lower-cased \\w+ tokens of title + text, in numpy."""
    doc_ids = list(corpus)
    docs = [Counter(_WORD.findall(hit_text(corpus[d], RULE).lower())) for d in doc_ids]
    vocab = {t: i for i, t in enumerate(sorted({t for c in docs for t in c}))}
    tf = np.zeros((len(docs), len(vocab)), dtype=np.float32)
    for row, counts in enumerate(docs):
        for term, n in counts.items():
            tf[row, vocab[term]] = n
    length = tf.sum(axis=1)
    df = (tf > 0).sum(axis=0)
    idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * length / length.mean())
    weights = tf * (k1 + 1) / (tf + norm[:, None]) * idf[None, :]
    out: Candidates = {}
    for qid, text in queries.items():
        terms = [vocab[t] for t in _WORD.findall(text.lower()) if t in vocab]
        scores = weights[:, terms].sum(axis=1) if terms else np.zeros(len(docs))
        top = np.argsort(-scores, kind="stable")[:WINDOW]
        out[qid] = [(doc_ids[i], float(scores[i])) for i in top if scores[i] > 0]
    return out


# --- metrics ---------------------------------------------------------------------------------------

def ndcg_at(ranked: Sequence[str], gains: dict[str, int], k: int = 10) -> float:
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr_at(ranked: Sequence[str], gains: dict[str, int], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if gains.get(d, 0) > 0), 0.0)


def recall_at(ranked: Sequence[str], gains: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, g in gains.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


# --- rankers ---------------------------------------------------------------------------------------

Ranker = Callable[[list[float], list[float]], list[int]]  # (lexical, cosine) -> order of positions


def lexical_order(lex: list[float], cos: list[float]) -> list[int]:
    return list(range(len(lex)))  # the engine's order, ties included


def cosine_order(lex: list[float], cos: list[float]) -> list[int]:
    return rerank_order(final_scores(cos, lex, "rerank", 1.0))


def blend(weight: float) -> Ranker:
    return lambda lex, cos: rerank_order(final_scores(cos, lex, "blend", weight))


def rrf_order(lex: list[float], cos: list[float]) -> list[int]:
    cos_rank = {i: r for r, i in enumerate(rerank_order(cos))}
    fused = [1 / (RRF_K + i + 1) + 1 / (RRF_K + cos_rank[i] + 1) for i in range(len(lex))]
    return rerank_order(fused)


def evaluate(candidates: Candidates, qrels: dict[str, dict[str, int]], doc_vectors: dict[str, np.ndarray],
             query_vectors: dict[str, np.ndarray], ranker: Ranker) -> tuple[float, float, float, dict[str, list[str]]]:
    ndcg, mrr, recall, runs = per_query(candidates, qrels, doc_vectors, query_vectors, ranker)
    return float(np.mean(ndcg)), float(np.mean(mrr)), float(np.mean(recall)), runs


def per_query(candidates: Candidates, qrels: dict[str, dict[str, int]], doc_vectors: dict[str, np.ndarray],
              query_vectors: dict[str, np.ndarray], ranker: Ranker):
    """nDCG@10, MRR@10, Recall@100 per query (in qrels order) and the rankings."""
    ndcg, mrr, recall, runs = [], [], [], {}
    for qid, gains in qrels.items():
        cands = candidates.get(qid, [])
        ids = [d for d, _ in cands]
        lex = [s for _, s in cands]
        cos = [float(doc_vectors[d] @ query_vectors[qid]) for d in ids]
        ranked = [ids[i] for i in ranker(lex, cos)] if ids else []
        runs[qid] = ranked
        ndcg.append(ndcg_at(ranked, gains))
        mrr.append(mrr_at(ranked, gains))
        recall.append(recall_at(ranked, gains))
    return np.array(ndcg), np.array(mrr), np.array(recall), runs


def delta_ci(deltas: np.ndarray, rounds: int = 10_000, seed: int = 1) -> tuple[float, float]:
    """95% bootstrap interval of the mean per-query difference (queries resampled)."""
    rng = np.random.default_rng(seed)
    means = deltas[rng.integers(0, len(deltas), size=(rounds, len(deltas)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cross_validated_weight(candidates: Candidates, qrels: dict[str, dict[str, int]],
                           doc_vectors: dict[str, np.ndarray], query_vectors: dict[str, np.ndarray]) -> str:
    """2-fold check against tuning on the test set: pick w on odd query ids, score on even, and back."""
    folds = [{q: g for q, g in qrels.items() if int(q) % 2 == parity} for parity in (0, 1)]
    parts = []
    for tune, test in ((folds[1], folds[0]), (folds[0], folds[1])):
        best = max(WEIGHTS, key=lambda w: per_query(candidates, tune, doc_vectors, query_vectors, blend(w))[0].mean())
        held_out = per_query(candidates, test, doc_vectors, query_vectors, blend(best))[0].mean()
        lexical = per_query(candidates, test, doc_vectors, query_vectors, lexical_order)[0].mean()
        parts.append(f"w={best} -> {held_out:.4f} vs lexical {lexical:.4f} ({held_out - lexical:+.3f})")
    return "; ".join(parts)


def embed_all(model: MiniLM, texts: dict[str, str], cache: Path | None, tag: str) -> dict[str, np.ndarray]:
    keys = list(texts)
    path = cache / f"{tag}.npy" if cache else None
    if path and path.exists():
        matrix = np.load(path)
    else:
        started = time.perf_counter()
        matrix = model.embed([texts[k] for k in keys])
        print(f"  embedded {len(keys)} texts ({tag}) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, matrix)
    return dict(zip(keys, matrix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/datasets/cranfield"))
    parser.add_argument("--lexical", default="engine,bm25", help="first stages to run: engine, bm25 (comma-separated)")
    parser.add_argument("--url", default="http://127.0.0.1:9250", help="engine for --lexical engine")
    parser.add_argument("--index", default="bench-cranfield")
    parser.add_argument("--reindex", action="store_true")
    parser.add_argument("--max-tokens", default="128,256")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rerank-proxy-bench-vectors"),
                        help="folder for embedding caches ('' to disable)")
    args = parser.parse_args()

    corpus, queries, qrels = load(args.corpus)
    doc_texts = {d: hit_text(doc, RULE) for d, doc in corpus.items()}
    stages: dict[str, Candidates] = {}
    for stage in args.lexical.split(","):
        if stage == "engine":
            try:
                stages["engine multi_match"] = engine_candidates(args.url, args.index, corpus, queries, args.reindex)
            except httpx.HTTPError as exc:
                print(f"engine at {args.url} unavailable ({exc}); skipping it", file=sys.stderr)
        elif stage == "bm25":
            stages["numpy BM25"] = bm25_candidates(corpus, queries)
    cache = args.cache if str(args.cache) else None
    print(f"Cranfield: {len(corpus)} docs, {len(qrels)} judged queries, window {WINDOW}\n")

    for max_tokens in (int(x) for x in args.max_tokens.split(",")):
        model = MiniLM(max_tokens=max_tokens)
        doc_vectors = embed_all(model, doc_texts, cache, f"cranfield-docs-{max_tokens}")
        query_vectors = embed_all(model, queries, cache, f"cranfield-queries-{max_tokens}")
        model.close()
        for stage, candidates in stages.items():
            print(f"### {stage}, max tokens {max_tokens}\n")
            print("| ranking | nDCG@10 | vs lexical [95% CI] | MRR@10 | Recall@100 |")
            print("| --- | --- | --- | --- | --- |")
            rankers: list[tuple[str, Ranker]] = [("lexical", lexical_order), ("cosine", cosine_order)]
            rankers += [(f"blend w={w}", blend(w)) for w in WEIGHTS]
            rankers += [(f"RRF k={RRF_K}", rrf_order)]
            base = None
            for name, ranker in rankers:
                ndcg, mrr, recall, _ = per_query(candidates, qrels, doc_vectors, query_vectors, ranker)
                base = ndcg if base is None else base
                low, high = delta_ci(ndcg - base)
                delta = "" if name == "lexical" else f"{ndcg.mean() - base.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
                print(f"| {name} | {ndcg.mean():.4f} | {delta} | {mrr.mean():.4f} | {recall.mean():.4f} |")
            print(f"\n2-fold weight choice: {cross_validated_weight(candidates, qrels, doc_vectors, query_vectors)}\n")

        # float16 storage: same rankings?
        if max_tokens == 256 and stages:
            stage, candidates = next(iter(stages.items()))
            half = {d: v.astype(np.float16).astype(np.float32) for d, v in doc_vectors.items()}
            print(f"### float16 vs float32 stored vectors ({stage}, max tokens {max_tokens})\n")
            print("| ranking | nDCG@10 float32 | nDCG@10 float16 | queries with identical top-10 |")
            print("| --- | --- | --- | --- |")
            for name, ranker in (("cosine", cosine_order), ("blend w=0.5", blend(0.5)), ("blend w=0.7", blend(0.7))):
                n32, _, _, run32 = evaluate(candidates, qrels, doc_vectors, query_vectors, ranker)
                n16, _, _, run16 = evaluate(candidates, qrels, half, query_vectors, ranker)
                same = sum(run32[q][:10] == run16[q][:10] for q in run32)
                print(f"| {name} | {n32:.4f} | {n16:.4f} | {same}/{len(run32)} |")
            cos_err = max(abs(float(doc_vectors[d] @ query_vectors[q]) - float(half[d] @ query_vectors[q]))
                          for q in list(query_vectors)[:50] for d in doc_vectors)
            print(f"\nlargest cosine change from float16 storage: {cos_err:.2e}\n")


if __name__ == "__main__":
    main()
