"""Sampling parameters and the float64 numpy reference for every sampling filter.

Each filter is a small pure function from logits to logits, removed tokens set to -inf.
Backends implement the same functions on their own tensors; the shared test-vector table
(`tests/sampling_vectors.py`) checks every implementation against these references.

Order, identical on every backend:
    repetition penalty -> temperature -> top-k -> top-p -> min-p -> sample
Temperature 0 means greedy: argmax of the penalised logits, other filters skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from gptbench.errors import UserError


MAX_NEW_TOKENS = 100_000_000  # past this, the token buffer alone would need ~1 GB a row


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. Validated on construction (UserError, one line)."""

    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    repetition_window: int = 64  # how many recent tokens (prompt included) the penalty looks at
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        # Written as `not (valid)` so that NaN, which fails every comparison, is rejected too.
        if not (0 <= self.temperature < math.inf):
            raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise UserError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        if not self.top_k >= 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (0 < self.repetition_penalty < math.inf):
            raise UserError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if not self.repetition_window >= 0:
            raise UserError(f"repetition_window must be >= 0 (0 = penalty off), got {self.repetition_window}")
        if not self.max_new_tokens >= 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.max_new_tokens > MAX_NEW_TOKENS:
            raise UserError(f"max_new_tokens must be at most {MAX_NEW_TOKENS:,}, got {self.max_new_tokens:,}")
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        ids = tuple(int(t) for t in self.stop_token_ids)
        if any(t < 0 for t in ids):
            raise UserError(f"stop token ids must be >= 0, got {list(ids)}")
        object.__setattr__(self, "stop_token_ids", ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---- float64 numpy references ---------------------------------------------------------
NEG_INF = -np.inf


Logits = TypeVar("Logits")


def apply_filters(
    logits: Logits,
    params: SamplingParams,
    history: np.ndarray | None,
    *,
    repetition_penalty: Callable[[Logits, np.ndarray, float], Logits],
    center: Callable[[Logits], Logits],
    top_k: Callable[[Logits, int], Logits],
    top_p: Callable[[Logits, float], Logits],
    min_p: Callable[[Logits, float], Logits],
) -> Logits:
    """The filter order above, for a backend's own tensors and filter functions, so every
    backend applies them identically. (The float64 reference spells the order out on its
    own: it is the oracle the backends are tested against.)

    `center` subtracts each row's maximum before the temperature divides: the softmax and
    every filter are unchanged by a shift, and a tiny temperature (1e-40) then sends the
    other logits to -inf instead of overflowing float32 into inf - inf = NaN."""
    x = logits
    if history is not None and params.repetition_penalty != 1.0 and history.size:
        x = repetition_penalty(x, history, params.repetition_penalty)
    if params.greedy:
        return x
    x = center(x) / params.temperature
    x = top_k(x, params.top_k)
    x = top_p(x, params.top_p)
    return min_p(x, params.min_p)


def ref_repetition_penalty(logits: np.ndarray, history: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style penalty on tokens seen in `history` ([B, W] ids, -1 = padding):
    positive logits are divided by `penalty`, negative ones multiplied."""
    out = np.array(logits, dtype=np.float64, copy=True)
    if penalty == 1.0 or history.size == 0:
        return out
    for b in range(out.shape[0]):
        seen = np.unique(history[b][history[b] >= 0])
        vals = out[b, seen]
        out[b, seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def ref_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64) / temperature


def ref_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep logits >= the k-th largest per row (ties at the boundary are kept)."""
    out = np.array(logits, dtype=np.float64, copy=True)
    if k <= 0 or k >= out.shape[-1]:
        return out
    kth = np.sort(out, axis=-1)[:, -k][:, None]
    out[out < kth] = NEG_INF
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    m = np.max(logits, axis=-1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(axis=-1, keepdims=True)


def ref_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the most probable tokens until their mass reaches p.

    A token is kept when the probability mass strictly before it (in descending order)
    is < p, so the top token always survives.
    """
    out = np.array(logits, dtype=np.float64, copy=True)
    if p >= 1.0:
        return out
    probs = _softmax(out)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    remove_sorted = before >= p
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    out[remove] = NEG_INF
    return out


def ref_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is >= min_p times the top token's probability."""
    out = np.array(logits, dtype=np.float64, copy=True)
    if min_p <= 0.0:
        return out
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    threshold = np.max(out, axis=-1, keepdims=True) + np.log(min_p)
    out[out < threshold] = NEG_INF
    return out


def ref_filtered_logits(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None = None) -> np.ndarray:
    """All filters in their fixed order; with temperature 0 only the penalty applies."""
    x = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if history is not None and params.repetition_penalty != 1.0:
        x = ref_repetition_penalty(x, np.atleast_2d(history), params.repetition_penalty)
    if params.greedy:
        return x
    x = ref_temperature(x, params.temperature)
    x = ref_top_k(x, params.top_k)
    x = ref_top_p(x, params.top_p)
    x = ref_min_p(x, params.min_p)
    return x


def ref_probs(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None = None) -> np.ndarray:
    """The distribution the sampler draws from ([B, V]); one-hot argmax when greedy."""
    x = ref_filtered_logits(logits, params, history)
    if params.greedy:
        out = np.zeros_like(x)
        out[np.arange(x.shape[0]), np.argmax(x, axis=-1)] = 1.0
        return out
    return _softmax(x)
