"""The GPT spec in MLX, with its KV cache. Read it beside `backends/torch/model.py`: the
same classes, in the same order, with the same names, line for line where the frameworks allow.

Module attribute names are the canonical tensor names (`wte`, `wpe`, `h.N.attn.c_attn`, ...)
and MLX `Linear` stores `[out, in]` like torch, so `tree_flatten(model.parameters())` keys
are already canonical and no tensor is transposed between the backends. The model returns
logits; the loss is `cross_entropy` below, outside the model. Dropout takes an explicit
PRNG `key` (the one difference in the forward signature): MLX cannot restore its global
random state from an array, and an explicit key keeps a compiled training step a pure
function of (weights, optimizer state, key, batch). Generation appends to a per-layer
`KVCache`, as in mlx-lm's `KVCache.update_and_fetch`. Rotary embeddings come from
`spec.rope_tables` (underscore attributes, so never parameters nor in a weights file),
looked up at the positions the model computes anyway, so cached decoding and left padding
rotate every token by its true position.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys

import numpy as np

from gptbench import paths


def _preload_cblas() -> str | None:
    """Make MLX's CPU matmuls use a fast CBLAS instead of the reference BLAS.

    The Linux `mlx[cpu]` wheel links netlib's reference BLAS (single-threaded, unblocked:
    ~3 GFLOP/s for sgemm on a modern core). Loading an optimised CBLAS with RTLD_GLOBAL
    *before* `mlx.core` is imported makes the dynamic linker resolve MLX's `cblas_sgemm`
    to it (OpenBLAS: ~8-15x faster training here). `$GPTBENCH_MLX_BLAS` is `auto` by
    default (the system OpenBLAS when present; Debian: `apt-get install
    libopenblas0-pthread`), `off` to keep the reference BLAS, or a library path.
    Returns the library loaded, or None (off, not found, not Linux, or mlx already loaded).
    """
    want = paths.env(paths.MLX_BLAS) or "auto"
    if want.lower() in ("0", "off", "none") or sys.platform != "linux" or "mlx.core" in sys.modules:
        return None
    path = ctypes.util.find_library("openblas") if want.lower() == "auto" else want
    if not path:
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    return path


BLAS = _preload_cblas()  # must run before the first `import mlx.core`

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from gptbench.backends.spec import GPTConfig, rope_tables  # noqa: E402

CACHE_STEP = 256  # the KV cache grows in chunks of this many positions


class KVCache:
    """Keys and values of one layer, `[B, H, capacity, D]`, grown in `CACHE_STEP` chunks.

    `update_and_fetch` writes the new positions into the preallocated buffer and returns
    views of everything cached so far, so a decode step never concatenates the history.
    """

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        B, H, T, D = k.shape
        prev, need = self.offset, self.offset + T
        if self.keys is None or need > self.keys.shape[2]:
            capacity = ((need + CACHE_STEP - 1) // CACHE_STEP) * CACHE_STEP
            new_k = mx.zeros((B, H, capacity, D), dtype=k.dtype)
            new_v = mx.zeros((B, H, capacity, D), dtype=v.dtype)
            if self.keys is not None and prev:
                new_k[:, :, :prev, :] = self.keys[:, :, :prev, :]
                new_v[:, :, :prev, :] = self.values[:, :, :prev, :]
            self.keys, self.values = new_k, new_v
        self.keys[:, :, prev:need, :] = k
        self.values[:, :, prev:need, :] = v
        self.offset = need
        return self.keys[:, :, :need, :], self.values[:, :, :need, :]


class ModelCache:
    """One KVCache per layer plus the left padding of each row (batched prompts)."""

    def __init__(self, n_layer: int, pad: mx.array | None = None) -> None:
        self.layers = [KVCache() for _ in range(n_layer)]
        self.pad = pad  # [B] int32: left-padding tokens per row, or None

    @property
    def offset(self) -> int:
        return self.layers[0].offset

    def _pads(self) -> mx.array:
        k = self.layers[0].keys
        return self.pad if self.pad is not None else mx.zeros((k.shape[0],), dtype=mx.int32)

    def select(self, rows: list[int]) -> "ModelCache":
        """A cache of only `rows` (continuous batching: finished rows leave), without the
        leading positions that every kept row pads."""
        keep = mx.array(rows, dtype=mx.int32)
        pad = self._pads()[keep]
        drop = int(pad.min().item())
        out = ModelCache(len(self.layers), pad - drop if bool((pad > drop).any().item()) else None)
        for src, dst in zip(self.layers, out.layers):
            dst.update_and_fetch(src.keys[keep, :, drop : src.offset], src.values[keep, :, drop : src.offset])
        return out

    def join(self, other: "ModelCache") -> "ModelCache":
        """This cache's rows, then `other`'s (rows joining a batch), the shorter left-padded
        so that both end at the same position; padded keys are masked like a prompt's."""
        T = max(self.offset, other.offset)
        pad = mx.concatenate([self._pads() + (T - self.offset), other._pads() + (T - other.offset)])
        out = ModelCache(len(self.layers), pad if bool(pad.any().item()) else None)

        def left(t: mx.array, n: int) -> mx.array:
            return mx.concatenate([mx.zeros((*t.shape[:2], T - n, t.shape[3]), dtype=t.dtype), t[:, :, :n]], axis=2)

        for a, b, dst in zip(self.layers, other.layers, out.layers):
            dst.update_and_fetch(mx.concatenate([left(a.keys, a.offset), left(b.keys, b.offset)]),
                                 mx.concatenate([left(a.values, a.offset), left(b.values, b.offset)]))
        return out


def padding_mask(start: int, T: int, pad: mx.array) -> mx.array:
    """[B, 1, T, start+T] boolean attention mask for left-padded rows: causal, padded keys
    masked out, and a padded query still sees itself (its output is never used)."""
    keys = mx.arange(start + T)
    queries = mx.arange(start, start + T)[:, None]
    allowed = (keys[None, :] <= queries)[None] & (keys[None, None, :] >= pad[:, None, None])
    allowed = allowed | (keys[None, :] == queries)[None]
    return allowed[:, None]


def segment_mask(segments: mx.array) -> mx.array:
    """[B, 1, T, T] boolean attention mask of packed rows (`segments` [B, T]): causal, and a
    token sees the shared segment 0 and its own segment only (so several continuations
    after one context each see the context and themselves, never each other)."""
    T = segments.shape[1]
    causal = mx.tril(mx.ones((T, T), dtype=mx.bool_))
    keys, queries = segments[:, None, :], segments[:, :, None]
    return (causal[None] & ((keys == 0) | (keys == queries)))[:, None]


def dropout(x: mx.array, p: float, key: mx.array | None) -> mx.array:
    """Inverted dropout with an explicit key; identity when `key` is None (eval) or p == 0."""
    if key is None or p == 0.0:
        return x
    keep = mx.random.bernoulli(1.0 - p, x.shape, key=key)
    return mx.where(keep, x / (1.0 - p), mx.zeros_like(x))


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate channel pairs (i, i + D/2) of `x` [B, H, T, D] by the angles whose cos and
    sin are [1 or B, 1, T, D/2] (the half-split convention of `spec.rope_tables`), in
    float32 (the tables' dtype), returned in the dtype of `x`."""
    x1, x2 = mx.split(x, 2, axis=-1)
    return mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm_eps = config.norm_eps if config.qk_norm else None
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def __call__(
        self, x: mx.array, cache: KVCache | None = None, mask: mx.array | None = None,
        rope: tuple[mx.array, mx.array] | None = None, key: mx.array | None = None,
    ) -> mx.array:
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = mx.split(self.c_attn(x), 3, axis=-1)
        q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        if self.qk_norm_eps is not None:  # eps passed explicitly: MLX has no default
            q = mx.fast.rms_norm(q, None, self.qk_norm_eps)
            k = mx.fast.rms_norm(k, None, self.qk_norm_eps)
        if rope is not None:  # before the cache write: the cache holds rotated keys
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        scale = 1.0 / math.sqrt(D)
        attn_key = resid_key = None
        if key is not None and self.dropout > 0:
            attn_key, resid_key = mx.random.split(key)
        if mask is not None:
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        elif attn_key is not None:
            # Training with attention dropout: the fused kernel has no dropout, so spell it out.
            scores = (q * scale) @ k.transpose(0, 1, 3, 2)
            causal = mx.tril(mx.ones((T, k.shape[2]), dtype=mx.bool_), k=k.shape[2] - T)
            scores = mx.where(causal, scores, mx.array(-mx.inf, dtype=scores.dtype))
            y = dropout(mx.softmax(scores, axis=-1, precise=True), self.dropout, attn_key) @ v
        elif T > 1:
            # A training step, a prefill, or several new tokens on top of a cache: MLX's
            # "causal" aligns lower-right, which is right in every case.
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
        else:  # one new token attends to everything cached
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
        return dropout(self.c_proj(y), self.dropout, resid_key)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        if config.mlp == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def __call__(self, x: mx.array, key: mx.array | None = None) -> mx.array:
        if self.kind == "gelu":
            h = nn.gelu_approx(self.c_fc(x))  # the tanh approximation, GPT-2's gelu_new
        elif self.kind == "relu2":
            h = mx.square(nn.relu(self.c_fc(x)))
        else:
            h = nn.silu(self.c_gate(x)) * self.c_fc(x)
        return dropout(self.c_proj(h), self.dropout, key)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def __call__(
        self, x: mx.array, cache: KVCache | None = None, mask: mx.array | None = None,
        rope: tuple[mx.array, mx.array] | None = None, key: mx.array | None = None,
    ) -> mx.array:
        attn_key, mlp_key = mx.random.split(key) if key is not None else (None, None)
        x = x + self.attn(self.ln_1(x), cache, mask, rope, attn_key)
        return x + self.mlp(self.ln_2(x), mlp_key)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # not parameters (underscore names): rebuilt from the config, never saved
            cos, sin = rope_tables(config)
            self._rope_cos = mx.array(cos)
            self._rope_sin = mx.array(sin)
        self.h = [Block(config) for _ in range(config.n_layer)]
        self.ln_f = _norm(config)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def init_weights(self, seed: int) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2·n_layer) (or
        exactly 0 with `zero_init_proj`), biases 0, norm gains 1, from one key per tensor
        derived from the seed (not the global RNG), so zeroing one tensor changes no other."""
        from mlx.utils import tree_flatten, tree_unflatten

        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        flat = tree_flatten(self.parameters())
        keys = mx.random.split(mx.random.key(seed % (1 << 64)), len(flat))
        new = []
        for i, (name, p) in enumerate(flat):
            if name.endswith("c_proj.weight"):
                value = mx.random.normal(p.shape, key=keys[i]) * proj_std
                if self.config.zero_init_proj:
                    value = mx.zeros(p.shape)
            elif p.ndim >= 2:
                value = mx.random.normal(p.shape, key=keys[i]) * 0.02
            elif name.endswith(".bias"):
                value = mx.zeros(p.shape)
            else:  # norm gains
                value = mx.ones(p.shape)
            new.append((name, value.astype(mx.float32)))
        self.update(tree_unflatten(new))

    def __call__(self, idx: mx.array, cache: ModelCache | None = None, last_only: bool = False, key: mx.array | None = None,
                 keep: mx.array | None = None, packed: tuple[mx.array, mx.array] | None = None) -> mx.array:
        """Logits [B, T, V] (or [B, 1, V] with `last_only`; [N, V] at the flat positions
        b * T + t in `keep`, so the head runs only where asked). `packed` = (positions [B, T],
        segments [B, T]) of packed rows (`segment_mask`), without a cache. A `key` turns
        dropout on."""
        B, T = idx.shape
        start = cache.offset if cache is not None else 0
        pad = cache.pad if cache is not None else None
        pos = mx.arange(start, start + T)
        mask = None
        if pad is not None:  # positions restart at 0 after each row's padding
            pos = mx.maximum(pos[None, :] - pad[:, None], 0)
            mask = padding_mask(start, T, pad)
        elif packed is not None:
            pos, mask = packed[0], segment_mask(packed[1])
        keys = mx.random.split(key, self.config.n_layer + 1) if key is not None and self.config.dropout > 0 else None
        x, rope = self.wte(idx), None
        if self.config.pos == "rope":  # [T] or [B, T] positions -> [1 or B, 1, T, D/2]
            rope = (self._rope_cos[pos].reshape(-1, 1, T, self._rope_cos.shape[1]),
                    self._rope_sin[pos].reshape(-1, 1, T, self._rope_sin.shape[1]))
        else:
            x = x + self.wpe(pos)
        x = dropout(x, self.config.dropout, keys[0] if keys is not None else None)
        for i, block in enumerate(self.h):
            x = block(x, cache.layers[i] if cache is not None else None, mask, rope, keys[i + 1] if keys is not None else None)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        elif keep is not None:
            x = x.reshape(B * T, -1)[keep]
        logits = self.head(x)
        if self.config.logit_softcap:  # in float32, as torch (whose autocast may give bfloat16)
            cap = self.config.logit_softcap
            logits = cap * mx.tanh(logits.astype(mx.float32) / cap)
        return logits

    def head(self, x: mx.array) -> mx.array:
        """The LM head: the token embedding, transposed, when tied; else its own matrix."""
        return self.wte.as_linear(x) if self.config.tie_embeddings else self.lm_head(x)


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean token cross-entropy in float32; targets of -1 are ignored (torch's ignore_index)."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(mx.float32)
    t = targets.reshape(-1)
    valid = t >= 0
    picked = mx.take_along_axis(logits, mx.maximum(t, 0)[:, None], axis=-1)[:, 0]
    losses = mx.logsumexp(logits, axis=-1) - picked
    losses = mx.where(valid, losses, mx.zeros_like(losses))
    return losses.sum() / mx.maximum(valid.sum(), 1).astype(mx.float32)


def target_logprobs(model: GPT, idx: mx.array, targets: np.ndarray, positions: np.ndarray | None = None,
                    segments: np.ndarray | None = None) -> np.ndarray:
    """log p(target) at every position, float32 numpy [B, T], 0 where a target is -1; the
    head and the log-sum-exp (float32) run only at the positions with a target. With
    `positions` and `segments` the rows are packed (see `GPT.__call__`)."""
    flat = np.flatnonzero(np.asarray(targets) >= 0)
    packed = None
    if segments is not None:
        packed = tuple(mx.array(np.asarray(a, dtype=np.int32)) for a in (positions, segments))
    logits = model(idx, keep=mx.array(flat.astype(np.int32)), packed=packed).astype(mx.float32)
    t = mx.array(np.asarray(targets, dtype=np.int32).reshape(-1)[flat])
    picked = mx.take_along_axis(logits, t[:, None], axis=-1)[:, 0] - mx.logsumexp(logits, axis=-1)
    out = np.zeros(np.shape(targets), dtype=np.float32)
    out.reshape(-1)[flat] = np.array(picked)
    return out
