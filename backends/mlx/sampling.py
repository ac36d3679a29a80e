"""Sampling in MLX: the repetition penalty and the top-k / top-p / min-p filters of
`gptbench.backends.sampling` (whose numpy references they match), the sampling RNG, and the
draw. Mirrors `backends/torch/sampling.py`."""

from __future__ import annotations

# the model first: it may preload a faster CBLAS, which must happen before mlx.core loads.
import gptbench.backends.mlx.model  # noqa: F401  # isort: skip

import os

import mlx.core as mx
import numpy as np

from gptbench.backends.sampling import SamplingParams, apply_filters

NEG_INF = float("-inf")


def repetition_penalty(logits: mx.array, history: np.ndarray, penalty: float) -> mx.array:
    h = mx.array(np.asarray(history, dtype=np.int32))
    B = logits.shape[0]
    rows = mx.broadcast_to(mx.arange(B)[:, None], h.shape)
    counts = mx.zeros(logits.shape, dtype=mx.float32).at[rows, mx.maximum(h, 0)].add((h >= 0).astype(mx.float32))
    penalised = mx.where(logits > 0, logits / penalty, logits * penalty)
    return mx.where(counts > 0, penalised, logits)


def center(logits: mx.array) -> mx.array:
    return logits - mx.max(logits, axis=-1, keepdims=True)


def top_k_filter(logits: mx.array, k: int) -> mx.array:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.min(mx.topk(logits, k, axis=-1), axis=-1, keepdims=True)
    return mx.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: mx.array, p: float) -> mx.array:
    if p >= 1.0:
        return logits
    probs = mx.softmax(logits, axis=-1, precise=True)
    order = mx.argsort(-probs, axis=-1)  # MLX's sort is stable: ties keep index order
    sorted_probs = mx.take_along_axis(probs, order, axis=-1)
    before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
    remove = mx.put_along_axis(mx.zeros(probs.shape, dtype=mx.bool_), order, before >= p, axis=-1)
    return mx.where(remove, NEG_INF, logits)


def min_p_filter(logits: mx.array, min_p: float) -> mx.array:
    if min_p <= 0.0:
        return logits
    threshold = mx.max(logits, axis=-1, keepdims=True) + float(np.log(min_p))
    return mx.where(logits < threshold, NEG_INF, logits)


def filtered_logits(logits: mx.array, params: SamplingParams, history: np.ndarray | None) -> mx.array:
    """The fixed filter order of gptbench.backends.sampling, vectorised over the batch."""
    return apply_filters(logits, params, history, repetition_penalty=repetition_penalty, center=center,
                         top_k=top_k_filter, top_p=top_p_filter, min_p=min_p_filter)


class KeyStream:
    """A sampling RNG: an MLX key split once per draw (independent of training's key)."""

    def __init__(self, seed: int | None) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.key = mx.random.key(int(seed) % (1 << 64))  # MLX keys take an unsigned 64-bit seed

    def next(self) -> mx.array:
        self.key, sub = mx.random.split(self.key)
        return sub


def make_generator(seed: int | None) -> KeyStream:
    """A sampling RNG, independent of the training key; None = seeded from the OS."""
    return KeyStream(seed)


def sample_tokens(logits: mx.array, params: SamplingParams, history: np.ndarray | None, generator: KeyStream) -> np.ndarray:
    """One token per row (`GenerationBackend.sample`): the argmax when greedy, else a draw."""
    x = filtered_logits(logits, params, history)
    if params.greedy:
        tok = mx.argmax(x, axis=-1)
    else:
        tok = mx.random.categorical(x, axis=-1, key=generator.next())
    return np.array(tok).astype(np.int64)
