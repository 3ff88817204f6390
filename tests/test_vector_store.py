"""The local vector store: keys, persistence, bound, float16, and several processes at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from rerank_proxy.local.vector_store import VectorStore, vector_key

DIM = 384


def vec(seed: int) -> np.ndarray:
    """A deterministic unit vector per seed, so any process can check what it reads."""
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def key(i: int) -> bytes:
    return vector_key("all-MiniLM-L6-v2", 256, f"document {i}")


def test_key_is_sha256_of_model_tokens_and_text():
    base = vector_key("all-MiniLM-L6-v2", 256, "hello world")
    assert len(base) == 32
    assert base == vector_key("all-MiniLM-L6-v2", 256, "hello world")
    assert base != vector_key("all-MiniLM-L6-v2", 256, "hello world!")
    assert base != vector_key("all-MiniLM-L6-v2", 256, "Hello world")
    assert base != vector_key("all-MiniLM-L6-v2", 128, "hello world")
    assert base != vector_key("other-model", 256, "hello world")
    # The separator keeps (model, tokens, text) unambiguous.
    assert vector_key("m", 25, "6x") != vector_key("m", 256, "x")
    assert vector_key("m", 1, "\ud800 lone surrogate")  # never raises on odd text


def test_put_get_roundtrip_and_missing(tmp_path: Path):
    store = VectorStore(tmp_path / "v.sqlite", dtype="float32")
    assert store.get_many([key(1)]) == {}
    assert store.put_many([(key(i), vec(i)) for i in range(5)]) == 5
    assert store.put_many([(key(0), vec(0))]) == 0           # already stored: nothing added
    found = store.get_many([key(0), key(3), key(7), key(3)])
    assert set(found) == {key(0), key(3)}
    np.testing.assert_array_equal(found[key(0)], vec(0))
    assert found[key(0)].dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        found[key(0)][0] = 1.0                               # shared via the LRU: read-only
    assert store.missing([key(7), key(1), key(8), key(7)]) == [key(7), key(8), key(7)]
    assert store.count() == 5
    store.close()


def test_get_many_reads_sqlite_not_only_memory(tmp_path: Path):
    store = VectorStore(tmp_path / "v.sqlite", dtype="float32", memory_entries=0)
    store.put_many([(key(i), vec(i)) for i in range(600)])   # more than one SELECT chunk
    found = store.get_many([key(i) for i in range(600)])
    assert len(found) == 600
    np.testing.assert_array_equal(found[key(599)], vec(599))


def test_persists_across_reopen_and_creates_parent_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    store = VectorStore("~/deep/er/vectors.sqlite", dtype="float32")
    assert store.path == tmp_path / "deep" / "er" / "vectors.sqlite"
    store.put_many([(key(i), vec(i)) for i in range(3)])
    store.close()

    reopened = VectorStore("~/deep/er/vectors.sqlite")
    found = reopened.get_many([key(0), key(1), key(2)])
    assert len(found) == 3
    np.testing.assert_array_equal(found[key(2)], vec(2))
    reopened.close()
    with sqlite3.connect(tmp_path / "deep" / "er" / "vectors.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bound_evicts_oldest(tmp_path: Path):
    store = VectorStore(tmp_path / "v.sqlite", max_entries=10, memory_entries=0)
    for start in range(0, 25, 5):
        store.put_many([(key(i), vec(i)) for i in range(start, start + 5)])
        assert store.count() <= 10
    assert store.count() == 10
    assert set(store.get_many([key(i) for i in range(25)])) == {key(i) for i in range(15, 25)}


def test_bound_holds_for_one_batch_larger_than_it(tmp_path: Path):
    store = VectorStore(tmp_path / "v.sqlite", max_entries=3, memory_entries=0)
    store.put_many([(key(i), vec(i)) for i in range(8)])
    assert store.count() == 3
    assert set(store.get_many([key(i) for i in range(8)])) == {key(5), key(6), key(7)}


def test_rejects_wrong_dimensions(tmp_path: Path):
    store = VectorStore(tmp_path / "v.sqlite")
    with pytest.raises(ValueError, match="vector has 10 dimensions, expected 384"):
        store.put_many([(key(0), np.ones(10, dtype=np.float32))])
    store.put_many([(key(0), vec(0))])
    store.close()
    with pytest.raises(ValueError, match="holds 384-d vectors, not 768-d"):
        VectorStore(tmp_path / "v.sqlite", dim=768).count()


def test_float16_is_the_default_and_reads_back_consistently(tmp_path: Path):
    half = VectorStore(tmp_path / "v.sqlite")
    half.put_many([(key(0), vec(0))])
    from_memory = half.get_many([key(0)])[key(0)]
    half.close()
    reader = VectorStore(tmp_path / "v.sqlite", dtype="float32", memory_entries=0)  # the file decides
    from_disk = reader.get_many([key(0)])[key(0)]
    assert reader.dtype == "float16"
    assert from_disk.dtype == np.float32
    assert np.abs(from_disk - vec(0)).max() < 1e-3
    # Just computed, from the LRU, from disk: bit-identical, so scores never depend on the path.
    np.testing.assert_array_equal(from_memory, from_disk)
    np.testing.assert_array_equal(reader.as_stored(vec(0)[None, :])[0], from_disk)


def test_float32_file_stays_float32(tmp_path: Path):
    VectorStore(tmp_path / "v.sqlite", dtype="float32").put_many([(key(0), vec(0))])
    reader = VectorStore(tmp_path / "v.sqlite", memory_entries=0)
    np.testing.assert_array_equal(reader.get_many([key(0)])[key(0)], vec(0))
    assert reader.dtype == "float32"


def _writer(path: str, worker: int, batches: int, bound: int) -> None:
    store = VectorStore(path, max_entries=bound, dtype="float32", memory_entries=0, busy_timeout_s=30)
    for b in range(batches):
        ids = [worker * 100_000 + b * 10 + j for j in range(10)]
        store.put_many([(key(i), vec(i)) for i in ids])
        store.get_many([key(i) for i in ids[:3]])
    store.close()


def test_two_processes_writing_concurrently(tmp_path: Path):
    path = str(tmp_path / "shared.sqlite")
    bound = 500
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150, bound)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = VectorStore(path, memory_entries=0)
    assert store.count() == bound
    all_ids = [w * 100_000 + b * 10 + j for w in (1, 2) for b in range(150) for j in range(10)]
    found = store.get_many([key(i) for i in all_ids])
    assert len(found) == bound
    for i in all_ids:
        if key(i) in found:
            np.testing.assert_array_equal(found[key(i)], vec(i))


def _use_after_fork(store: VectorStore, queue) -> None:
    store.put_many([(key(42), vec(42))])
    queue.put(len(store.get_many([key(1), key(42)])))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_connection_is_reopened_after_fork(tmp_path: Path):
    store = VectorStore(tmp_path / "v.sqlite", memory_entries=0)
    store.put_many([(key(1), vec(1))])                     # the parent's connection is open
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_use_after_fork, args=(store, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 2
    assert len(store.get_many([key(1), key(42)])) == 2     # parent still works and sees the child's write
