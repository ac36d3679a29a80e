"""The shared table of sampling test vectors, run against every backend's filters.

Each case is logits in (float32-representable, [B, V]), `SamplingParams`, and optionally a
repetition history ([B, W] ids, -1 = padding). The expected output is computed by the
float64 numpy references in `gptbench.backends.sampling`: the allowed token set (finite
logits after filtering) and the probabilities the sampler draws from.

A backend test calls:

    check_backend_filters(lambda logits, params, history: my_filtered_logits(...), to_numpy)

where `logits` arrives as a float32 numpy array, `history` as an int64 numpy array or None,
and `to_numpy` turns the backend's result into a numpy array. The greedy cases compare the
argmax (temperature 0 skips every filter but the repetition penalty).

Cases keep every float decision (top-p mass, min-p threshold) at least `MIN_MARGIN` away
from its boundary, so float32 arithmetic on a backend cannot legitimately flip it; ties
that *are* exact (equal logits at the top-k boundary) are deliberate and must be kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gptbench.backends.sampling import SamplingParams, ref_filtered_logits, ref_probs, ref_repetition_penalty, ref_temperature, ref_top_k

MIN_MARGIN = 1e-4  # relative distance of any top-p / min-p decision from its boundary
PROB_ATOL = 2e-5


@dataclass(frozen=True)
class SamplingCase:
    name: str
    logits: np.ndarray  # float32 values, [B, V]
    params: SamplingParams
    history: np.ndarray | None = None  # int64 [B, W], -1 = padding

    def expected_allowed(self) -> np.ndarray:
        return np.isfinite(ref_filtered_logits(self.logits, self.params, self.history))

    def expected_probs(self) -> np.ndarray:
        return ref_probs(self.logits, self.params, self.history)


def _f32(a: Any) -> np.ndarray:
    return np.atleast_2d(np.asarray(a, dtype=np.float32))


def _random_logits(seed: int, batch: int, vocab: int, scale: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, vocab)) * scale).astype(np.float32)


def _hist(rows: list[list[int]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64)


P = SamplingParams


def _build_cases() -> list[SamplingCase]:
    log_probs = np.log([0.5, 0.3, 0.15, 0.05])
    cases = [
        # ---- hand-made: ties, extremes, the order of the filters ----------------------
        SamplingCase("top_k ties at the boundary are kept", _f32([[1, 4, 2, 4, 3]]), P(temperature=1.0, top_k=1)),
        SamplingCase("top_k 3 with a tie above", _f32([[1, 4, 2, 4, 3]]), P(temperature=1.0, top_k=3)),
        SamplingCase("top_k >= vocab is off", _f32([[0.5, -1, 2]]), P(temperature=1.0, top_k=10)),
        SamplingCase("top_p tiny keeps the top token", _f32([[0.1, 3.0, 0.2, 2.9]]), P(temperature=1.0, top_p=1e-6)),
        SamplingCase("top_p 0.6 of (.5,.3,.15,.05)", _f32([log_probs]), P(temperature=1.0, top_p=0.6)),
        SamplingCase("top_p 0.85 of (.5,.3,.15,.05)", _f32([log_probs]), P(temperature=1.0, top_p=0.85)),
        SamplingCase("min_p 0.25 of (.5,.3,.15,.05)", _f32([log_probs]), P(temperature=1.0, min_p=0.25)),
        SamplingCase("min_p 0.5 of (.5,.3,.15,.05)", _f32([log_probs]), P(temperature=1.0, min_p=0.5)),
        SamplingCase("temperature sharpens", _f32([[0.0, 0.6931472, -1.0]]), P(temperature=0.5)),
        SamplingCase("temperature flattens", _f32([[0.0, 0.6931472, -1.0]]), P(temperature=3.0)),
        SamplingCase(
            "repetition penalty: positive divided, negative multiplied, duplicates once, -1 ignored",
            _f32([[2.0, -2.0, 1.0, 0.5]]),
            P(temperature=1.0, repetition_penalty=2.0),
            _hist([[0, 1, -1, 1]]),
        ),
        SamplingCase(
            "greedy argmax changes under the penalty",
            _f32([[3.0, 2.0, -1.0], [0.5, 0.4, 0.3]]),
            P(temperature=0.0, repetition_penalty=2.0),
            _hist([[0, -1], [0, 0]]),
        ),
        SamplingCase("greedy ignores top_k/top_p/min_p", _f32([[0.1, 0.3, 0.2]]), P(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9)),
        SamplingCase("large logits stay stable", _f32([[80.0, 79.0, -80.0, 60.0]]), P(temperature=0.7, top_p=0.9)),
        SamplingCase(
            "penalty before temperature before top_k",
            _f32([[4.0, 3.5, 3.0, -1.0, 0.0]]),
            P(temperature=0.5, top_k=2, repetition_penalty=1.5),
            _hist([[0, 4]]),
        ),
    ]
    # ---- random rows: every filter and combination, batched ----------------------------
    combos = [
        P(temperature=1.0),
        P(temperature=0.8, top_k=5),
        P(temperature=1.2, top_p=0.9),
        P(temperature=0.7, min_p=0.05),
        P(temperature=1.0, top_k=20, top_p=0.8, min_p=0.02),
        P(temperature=0.9, top_p=0.5, repetition_penalty=1.3),
        P(temperature=1.5, top_k=7, min_p=0.1, repetition_penalty=0.8),
        P(temperature=0.0),
        P(temperature=0.0, repetition_penalty=1.8),
    ]
    seed = 0
    for i, params in enumerate(combos):
        for vocab, scale in ((50, 2.0), (257, 4.0)):
            while True:  # deterministic: the first seed whose decisions all have margin
                seed += 1
                logits = _random_logits(seed, 3, vocab, scale)
                history = None
                if params.repetition_penalty != 1.0:
                    history = np.random.default_rng(seed + 10_000).integers(-1, vocab, size=(3, 12))
                case = SamplingCase(f"random #{i} V={vocab} {params}", logits, params, history)
                if decision_margin(case) >= MIN_MARGIN:
                    cases.append(case)
                    break
    return cases


def decision_margin(case: SamplingCase) -> float:
    """Smallest relative distance of any top-p / min-p / greedy decision from its boundary.

    Ties (exactly equal logits) are exact in float32 too and are not counted.
    """
    p = case.params
    x = ref_repetition_penalty(case.logits, case.history, p.repetition_penalty) if case.history is not None else np.asarray(case.logits, np.float64)
    margins = [np.inf]
    if p.greedy:
        s = np.sort(x, axis=-1)
        gap = s[:, -1] - s[:, -2]
        margins.append(float(np.min(np.where(gap == 0, np.inf, gap))))
        return min(margins)
    x = ref_top_k(ref_temperature(x, p.temperature), p.top_k)
    if p.top_p < 1.0:
        m = np.max(x, axis=-1, keepdims=True)
        e = np.exp(x - m)
        probs = e / e.sum(-1, keepdims=True)
        s = -np.sort(-probs, axis=-1)
        before = (np.cumsum(s, axis=-1) - s)[:, 1:]  # the top token's 0 is exact: always kept
        margins.append(float(np.min(np.abs(before - p.top_p))))
    if p.min_p > 0:
        finite = np.isfinite(x)
        thr = np.max(x, axis=-1, keepdims=True) + np.log(p.min_p)
        d = np.abs(x - thr)[finite]
        margins.append(float(np.min(d)))
    return min(margins)


CASES: list[SamplingCase] = _build_cases()


def check_backend_filters(
    filtered_logits_fn: Callable[[np.ndarray, SamplingParams, np.ndarray | None], Any],
    to_numpy: Callable[[Any], np.ndarray],
    *,
    atol: float = PROB_ATOL,
) -> int:
    """Assert a backend's filters match the float64 references on every case.

    Checks the allowed set (finite logits) exactly and the softmax of the backend's filtered
    logits against `ref_probs` within `atol`; greedy cases compare the argmax. Returns the
    number of cases checked.
    """
    for case in CASES:
        got = np.asarray(to_numpy(filtered_logits_fn(case.logits.copy(), case.params, case.history)), dtype=np.float64)
        assert got.shape == case.logits.shape, f"{case.name}: shape {got.shape} != {case.logits.shape}"
        want_probs = case.expected_probs()
        if case.params.greedy:
            np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(want_probs, -1), err_msg=case.name)
            continue
        allowed = np.isfinite(got)
        np.testing.assert_array_equal(allowed, case.expected_allowed(), err_msg=f"{case.name}: allowed set")
        m = np.max(got, axis=-1, keepdims=True)
        e = np.where(allowed, np.exp(got - m), 0.0)
        probs = e / e.sum(-1, keepdims=True)
        np.testing.assert_allclose(probs, want_probs, rtol=0, atol=atol, err_msg=f"{case.name}: probabilities")
    return len(CASES)
