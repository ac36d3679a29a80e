"""Sampling: its parameters, each knob described once, and the float64 reference of every filter.

`SamplingParams` is the one description of the sampling knobs: each field carries its flag,
chat slash-commands, TUI label, help and valid range (`gptbench.backends.knobs`), and its
default is the only default. `gptbench sample` / `chat` flags, the chat's `/temp 0.7`
commands and the TUI's sampling form are generated from `SAMPLING_KNOBS`, and every one of
them validates through `SamplingParams` itself, so none can drift or disagree.

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

from gptbench.backends.knobs import Knob, Rule, int_or_none, knob, knobs_of, unescape


MAX_NEW_TOKENS = 100_000_000  # past this, the token buffer alone would need ~1 GB a row

# 256 new tokens by default, everywhere (the TUI and `chat` used to say 200): a paragraph or
# two of text that comes back within seconds on a CPU, and the default that `gptbench
# sample` scripts have always had, so none of them changes.
DEFAULT_MAX_NEW_TOKENS = 256

_FLOAT = dict(parse=float, kind="a number", arg="X")
_INT = dict(parse=int, kind="an integer", arg="N")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. Validated on construction (UserError, one line)."""

    temperature: float = knob(
        0.8, flag="--temperature", help="0 = greedy", **_FLOAT, label="Temperature",
        rules=(Rule(lambda v: 0 <= v < math.inf, "must be >= 0 (0 = greedy)"),),
        commands=("temp", "temperature", "t"),
    )
    top_k: int = knob(
        0, flag="--top-k", help="keep the k most likely tokens (0 = off)", **_INT, label="Top-k",
        rules=(Rule(lambda v: v >= 0, "must be >= 0 (0 = off)"),), normalize=int,
        commands=("top_k", "top-k", "topk", "k"),
    )
    top_p: float = knob(
        1.0, flag="--top-p", help="nucleus sampling mass in (0, 1] (1 = off)", **_FLOAT, label="Top-p",
        rules=(Rule(lambda v: 0.0 < v <= 1.0, "must be in (0, 1] (1 = off)"),),
        commands=("top_p", "top-p", "topp", "p"),
    )
    min_p: float = knob(
        0.0, flag="--min-p", help="drop tokens below min_p x the top probability, in [0, 1) (0 = off)", **_FLOAT,
        label="Min-p", rules=(Rule(lambda v: 0.0 <= v < 1.0, "must be in [0, 1) (0 = off)"),),
        commands=("min_p", "min-p", "minp"),
    )
    repetition_penalty: float = knob(
        1.0, flag="--repetition-penalty", help="> 1 discourages repeats (1 = off)", **_FLOAT, label="Rep. penalty",
        rules=(Rule(lambda v: 0 < v < math.inf, "must be > 0 (1 = off)"),),
        commands=("rep", "repetition_penalty", "repetition-penalty", "penalty"),
    )
    # how many recent tokens (prompt included) the penalty looks at; not in the TUI form
    repetition_window: int = knob(
        64, flag="--repetition-window", help="recent tokens the penalty looks at", **_INT,
        rules=(Rule(lambda v: v >= 0, "must be >= 0 (0 = penalty off)"),),
        commands=("window", "repetition_window", "repetition-window"),
    )
    max_new_tokens: int = knob(
        DEFAULT_MAX_NEW_TOKENS, flag="--max-new-tokens", help="tokens to generate", **_INT, label="Max tokens",
        rules=(Rule(lambda v: v >= 0, "must be >= 0"), Rule(lambda v: v <= MAX_NEW_TOKENS, f"must be at most {MAX_NEW_TOKENS:,}")),
        commands=("max", "max_new_tokens", "max-new-tokens", "n"),
    )
    # text stops and token-id stops are for scripts and the terminal chat; not in the TUI form
    stop: tuple[str, ...] = knob(
        (), flag="--stop", help="stop string, not printed (\\n means newline)", parse=unescape, kind="text", arg="TEXT",
        normalize=lambda v: tuple(s for s in v if s), commands=("stop",),
    )
    stop_token_ids: tuple[int, ...] = knob(
        (), flag="--stop-token-id", help="stop at this token id (end-of-text always stops)", parse=int,
        kind="an integer", arg="ID", noun="stop token ids",
        rules=(Rule(lambda v: all(int(t) >= 0 for t in v), "must be >= 0"),), normalize=lambda v: tuple(int(t) for t in v),
    )
    seed: int | None = knob(
        None, flag="--seed", help="sampling seed (same seed + params = same text)", parse=int_or_none,
        kind="an integer or none", arg="N|none", label="Seed", commands=("seed",),
    )

    def __post_init__(self) -> None:
        for k in SAMPLING_KNOBS:
            object.__setattr__(self, k.name, k.check(getattr(self, k.name)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


SAMPLING_KNOBS: tuple[Knob, ...] = knobs_of(SamplingParams)


def training_sample_params(max_new_tokens: int, seed: int | None) -> SamplingParams:
    """The sample a trainer prints at each evaluation: the default temperature with top-k 200
    (nanoGPT's sampling setting), which keeps an undertrained model's rare-token noise out
    of the preview so what it shows is what the model has learned."""
    return SamplingParams(temperature=0.8, top_k=200, max_new_tokens=max_new_tokens, seed=seed)


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
