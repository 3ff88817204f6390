"""The built-in reranker: cosine similarity of all-MiniLM-L6-v2 embeddings, no key, no network.

A document's vector does not depend on the query, so it is computed once and kept in the shared
vector store; a warm rerank is then one query embedding (itself cached) and a 100 x 384 dot product.
Only documents never seen before pay for the model.

Model work runs on threads (numpy releases the GIL), never on the event loop. Documents without a
vector are a capacity state, not a failure: they go to the background embedder (`embedder.py`,
searches' documents first) and the search waits for them only when they can be ready within
LOCAL_COLD_WAIT_MS; otherwise it raises `RerankVectorsCold` at once, which the resilience layer
does not count toward the breaker and the pipeline answers in lexical order. The embedding carries
on after the search has answered, so reranked searches rise as the store warms from traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from cachetools import LRUCache

from rerank_proxy.config import ConfigError, Settings
from rerank_proxy.local.embedder import SEARCH, STARTUP, WRITE, BackgroundEmbedder, Dropped, wait_all
from rerank_proxy.local.minilm import MODEL_NAME, MiniLM, shared_model
from rerank_proxy.local.shared_vectors import TieredVectorStore, build_store
from rerank_proxy.local.vector_store import STORE_ERRORS, VectorStore, vector_key
from rerank_proxy.scoring.providers.base import RerankError, RerankResult
from rerank_proxy.scoring.providers.errors import RerankVectorsCold
from rerank_proxy.scoring.work_owner import current_owner

log = logging.getLogger(__name__)
T = TypeVar("T")

ACCEPTED_MODEL_NAMES = ("", MODEL_NAME, f"sentence-transformers/{MODEL_NAME}")
NATIVE_MAX_TOKENS = 256   # sentence-transformers' max_seq_length for this model (trained at 128)


class LocalReranker:
    """`Reranker` backed by the bundled MiniLM model and the SQLite vector store.

    `model` is "all-MiniLM-L6-v2" at sentence-transformers' 256 tokens and "all-MiniLM-L6-v2@<n>" for
    any other LOCAL_MODEL_MAX_TOKENS, because the token limit changes the scores and `model` is part
    of every score-cache key.
    """

    name = "local"
    pointwise = True
    in_process = True     # its time is this proxy's CPU and queues: running out of it is not a failure

    def __init__(self, settings: Settings, *, store: VectorStore | TieredVectorStore | None = None,
                 load_model: Callable[[], MiniLM] | None = None, query_cache_entries: int = 10_000) -> None:
        if settings.rerank_model not in ACCEPTED_MODEL_NAMES:
            raise ConfigError(f"RERANK_MODEL={settings.rerank_model!r}: the local provider only runs "
                              f"{MODEL_NAME}; accepted: empty or {MODEL_NAME}")
        self.max_tokens = settings.local_model_max_tokens
        self.model = MODEL_NAME if self.max_tokens == NATIVE_MAX_TOKENS else f"{MODEL_NAME}@{self.max_tokens}"
        self.store = store or build_store(settings)
        self._load_model = load_model or (lambda: shared_model(self.max_tokens))
        self._queries: LRUCache[str, np.ndarray] = LRUCache(query_cache_entries)
        self._store_warned_at = -math.inf
        # Two model threads: a short query embedding need not wait behind a cold batch (the batch
        # itself runs on the model's own two-thread pool). Store I/O gets its own threads.
        self._model_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="local-rerank-model")
        self._io_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="local-rerank-store")
        self.settings = settings
        self.cold_wait_s = settings.local_cold_wait_ms / 1000
        self.embedder = BackgroundEmbedder(lambda texts: self._load_model().embed(texts, inline=True),
                                           self.store, threads=settings.local_embed_threads,
                                           max_queue=settings.local_embed_queue_max,
                                           nice=settings.local_embed_nice,
                                           on_store_error=self._store_trouble)

    # --- Reranker protocol -----------------------------------------------------------------------

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResult:
        """Cosine similarity of the query with each document, in input order.

        Raises `RerankVectorsCold` when documents lack a vector and will not be embedded within
        LOCAL_COLD_WAIT_MS; they stay queued, so the next search finds them.
        """
        started = time.perf_counter()
        texts = list(documents)
        if not texts:
            return RerankResult(scores=[], provider_calls=0)
        query_task = asyncio.ensure_future(self._query_vector(query))
        try:
            keys = [self._key(t) for t in texts]
            vectors = await self._io(self._stored, keys)
            hits = len(vectors)
            new_keys = [k for k in dict.fromkeys(keys) if k not in vectors]
            if new_keys:
                vectors.update(await self._wait_for_cold(new_keys, dict(zip(keys, texts, strict=True)), len(texts)))
            query_vector, query_cached = await query_task
        finally:
            if not query_task.done():
                query_task.cancel()          # we failed or were cancelled: stop waiting for it
            elif not query_task.cancelled():
                query_task.exception()       # mark a failure as seen (it may not be the one raised)
        matrix = np.stack([vectors[k] for k in keys])
        scores = (matrix @ query_vector).astype(np.float64).tolist()
        return RerankResult(scores=scores, provider_calls=(not query_cached) + bool(new_keys), meta={
            "stored": hits, "embedded": len(new_keys), "query_cached": query_cached,
            "ms": round((time.perf_counter() - started) * 1000, 2)})

    async def _wait_for_cold(self, new_keys: list[bytes], text_of: dict[bytes, str],
                             total: int) -> dict[bytes, np.ndarray]:
        """The vectors of `new_keys` if the embedder has them within the cold wait, else raise."""
        owner = current_owner()
        futures = self.embedder.submit(((k, text_of[k]) for k in new_keys), SEARCH, owner)
        waited = [futures[k] for k in new_keys if k in futures]
        ready = (len(waited) == len(new_keys)
                 and self.embedder.estimate_seconds(owner) <= self.cold_wait_s
                 and await wait_all(waited, self.cold_wait_s))
        if ready:
            errors = [f.exception() for f in waited]
            failed = next((e for e in errors if e is not None and not isinstance(e, Dropped)), None)
            if failed is not None:  # the model is broken: a provider failure, unlike a cold store
                raise RerankError(f"local model failed: {failed}", retryable=False) from failed
            ready = not any(errors)
        if not ready:
            raise RerankVectorsCold(f"{len(new_keys)} of {total} documents have no vector yet; queued for "
                                    f"the background embedder ({self.embedder.queue_depth()} waiting)",
                                    frozenset(text_of[k] for k in new_keys))
        return {k: f.result() for k, f in zip(new_keys, waited, strict=True)}

    async def aclose(self) -> None:
        """Let running embed-and-store jobs finish (their vectors are worth keeping), then close."""
        await asyncio.to_thread(self.embedder.close)
        await asyncio.to_thread(self._model_threads.shutdown, wait=True)
        await asyncio.to_thread(self._io_threads.shutdown, wait=True)
        self.store.close()

    # --- extras for the server and the warmer ----------------------------------------------------

    async def load(self) -> None:
        """Load the model now (~0.3 s, ~90 MB) instead of on the first search."""
        await self._compute(self._load_model)

    def submit_texts(self, texts: Iterable[str], *, startup: bool = False) -> int:
        """Queue document texts (from writes, or a start-up scan) for background embedding.

        Returns how many were taken; never blocks on the model or the store, so the write they
        came from is not delayed. A full queue drops them (counted), never the write.
        """
        items = {self._key(t): t for t in texts}
        return len(self.embedder.submit(items.items(), STARTUP if startup else WRITE))

    def status(self) -> dict[str, Any]:
        """The background embedder and the store, for metrics and readiness."""
        return {"model": self.model, "store": str(self.store.path), **self.embedder.status()}

    async def embed_documents(self, texts: Sequence[str]) -> int:
        """Store a vector for every text that has none yet; returns how many were new."""
        text_of = {self._key(t): t for t in texts}
        missing = await self._io(self.store.missing, list(text_of))
        if not missing:
            return 0
        await self._compute(self._embed_and_store, [text_of[k] for k in missing], missing, strict=True)
        return len(missing)

    # --- internals -------------------------------------------------------------------------------

    def _key(self, text: str) -> bytes:
        return vector_key(MODEL_NAME, self.max_tokens, text)

    async def _query_vector(self, query: str) -> tuple[np.ndarray, bool]:
        vector = self._queries.get(query)
        if vector is not None:
            return vector, True
        vector = (await self._compute(lambda: self._load_model().embed([query])))[0]
        self._queries[query] = vector
        return vector, False

    def _stored(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """Stored vectors; a broken store degrades to "nothing stored", never to a failed search."""
        try:
            return self.store.get_many(keys)
        except STORE_ERRORS as exc:
            self._store_trouble("read", exc)
            return {}

    def _embed_and_store(self, texts: list[str], keys: list[bytes], strict: bool = False) -> np.ndarray:
        """New vectors, stored and returned as the store will give them back later (same scores)."""
        vectors = self._load_model().embed(texts)
        try:
            self.store.put_many(zip(keys, vectors, strict=True))
        except STORE_ERRORS as exc:
            if strict:
                raise
            self._store_trouble("write", exc)
        return self.store.as_stored(vectors)

    def _store_trouble(self, action: str, exc: Exception) -> None:
        """Log a broken store at most once a minute: every search would hit it again."""
        now = time.monotonic()
        if now - self._store_warned_at >= 60.0:
            self._store_warned_at = now
            log.warning("local vector store %s failed at %s (%s); searches still work, embedding every "
                        "document", action, self.store.path, exc)

    async def _compute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._model_threads, lambda: fn(*args, **kwargs))
        except (RuntimeError, OSError, ValueError, MemoryError) as exc:
            raise RerankError(f"local model failed: {exc}", retryable=False) from exc

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io_threads, fn, *args)
