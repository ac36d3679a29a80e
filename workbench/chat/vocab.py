"""Growing a pretrained model's vocabulary by the chat turn tokens: new embedding and head rows.

The new rows start at the mean of the old ones (the expected embedding of a token, so the
first logits of a grown model stay those of the pretrained one, up to the new tokens'
mean-sized share), plus a little seeded noise, 0.1 of each dimension's spread, so the four
turn tokens are told apart from the first step, even under LoRA where these rows stay
frozen. Every old row is kept bit for bit.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

GROWN = ("wte.weight", "lm_head.weight")  # the [vocab, n_embd] tensors (a tied head is wte itself)
NOISE = 0.1


def new_rows(old: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows for a [V, C] matrix: its mean row plus seeded noise of 0.1 of its spread."""
    work = old.astype(np.float64)
    mean, std = work.mean(axis=0), work.std(axis=0)
    noise = np.random.default_rng([seed, old.shape[0]]).standard_normal((n, old.shape[1]))
    return (mean + NOISE * std * noise).astype(old.dtype)


def grow_vocab(tensors: Mapping[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    """`tensors` with each vocabulary matrix grown to `vocab_size` rows (old rows unchanged)."""
    out = dict(tensors)
    for i, name in enumerate(GROWN):
        old = out.get(name)
        if old is not None and old.shape[0] < vocab_size:
            out[name] = np.concatenate([old, new_rows(old, vocab_size - old.shape[0], seed=i)])
    return out
