"""Sampling: parameter validation, the float64 references against hand-derived values, and
the torch filters against the shared test-vector table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptbench.backends.sampling import (
    SamplingParams,
    ref_filtered_logits,
    ref_min_p,
    ref_probs,
    ref_repetition_penalty,
    ref_temperature,
    ref_top_k,
    ref_top_p,
)
from gptbench.backends.torch.backend import TorchBackend
from gptbench.backends.torch.sampling import filtered_logits
from gptbench.errors import UserError
from sampling_vectors import CASES, MIN_MARGIN, check_backend_filters, decision_margin

from helpers import tiny_model_config

LOG_P = np.log([[0.5, 0.3, 0.15, 0.05]])


def allowed(x: np.ndarray) -> list[int]:
    return np.flatnonzero(np.isfinite(x[0])).tolist()


# ---- validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p must be in (0, 1]"),
        (dict(top_p=1.5), "top_p must be in (0, 1]"),
        (dict(min_p=1.0), "min_p must be in [0, 1)"),
        (dict(min_p=-0.1), "min_p must be in [0, 1)"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(repetition_penalty=-1.0), "repetition_penalty must be > 0"),
        (dict(repetition_penalty=float("nan")), "repetition_penalty"),
        (dict(repetition_window=-1), "repetition_window must be >= 0"),
        (dict(max_new_tokens=-5), "max_new_tokens must be >= 0"),
        (dict(stop_token_ids=(-3,)), "stop token ids"),
    ],
)
def test_invalid_params_raise_one_line_user_error(kwargs, fragment):
    with pytest.raises(UserError) as info:
        SamplingParams(**kwargs)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_valid_edges_are_accepted():
    p = SamplingParams(temperature=0, top_p=1.0, min_p=0.0, top_k=0, repetition_penalty=1e-3, stop=("", "x"))
    assert p.greedy
    assert p.stop == ("x",)


# ---- the references against hand-derived values ------------------------------------------
def test_ref_repetition_penalty_by_hand():
    out = ref_repetition_penalty(np.array([[2.0, -2.0, 1.0, 0.5]]), np.array([[0, 1, -1, 1]]), 2.0)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 1.0, 0.5]])


def test_ref_temperature_by_hand():
    np.testing.assert_array_equal(ref_temperature(np.array([[2.0, 4.0]]), 2.0), [[1.0, 2.0]])


def test_ref_top_k_by_hand_keeps_ties():
    x = np.array([[1.0, 4.0, 2.0, 4.0, 3.0]])
    assert allowed(ref_top_k(x, 1)) == [1, 3]
    assert allowed(ref_top_k(x, 2)) == [1, 3]
    assert allowed(ref_top_k(x, 3)) == [1, 3, 4]
    assert allowed(ref_top_k(x, 0)) == [0, 1, 2, 3, 4]


def test_ref_top_p_by_hand():
    # probabilities .5 .3 .15 .05: mass before each token is 0, .5, .8, .95
    assert allowed(ref_top_p(LOG_P, 0.6)) == [0, 1]
    assert allowed(ref_top_p(LOG_P, 0.85)) == [0, 1, 2]
    assert allowed(ref_top_p(LOG_P, 0.01)) == [0]
    assert allowed(ref_top_p(LOG_P[:, ::-1], 0.6)) == [2, 3]  # order-independent


def test_ref_min_p_by_hand():
    assert allowed(ref_min_p(LOG_P, 0.25)) == [0, 1, 2]  # threshold .125
    assert allowed(ref_min_p(LOG_P, 0.5)) == [0, 1]  # threshold .25
    assert allowed(ref_min_p(LOG_P, 0.0)) == [0, 1, 2, 3]


def test_ref_probs_by_hand():
    np.testing.assert_allclose(ref_probs(np.array([[0.0, np.log(2.0)]]), SamplingParams(temperature=1.0)), [[1 / 3, 2 / 3]])
    # temperature 0.5 squares the ratio: 1 : 4
    np.testing.assert_allclose(ref_probs(np.array([[0.0, np.log(2.0)]]), SamplingParams(temperature=0.5)), [[0.2, 0.8]])
    np.testing.assert_array_equal(ref_probs(np.array([[0.1, 0.3, 0.2]]), SamplingParams(temperature=0)), [[0, 1, 0]])


def test_ref_filter_order_penalty_then_temperature_then_top_k():
    # penalty 1.5 on token 0: 4 -> 2.667; temperature .5 doubles; top-2 keeps tokens 1, 2
    x = np.array([[4.0, 3.5, 3.0, -1.0, 0.0]])
    out = ref_filtered_logits(x, SamplingParams(temperature=0.5, top_k=2, repetition_penalty=1.5), np.array([[0, 4]]))
    assert allowed(out) == [1, 2]
    np.testing.assert_allclose(out[0, [1, 2]], [7.0, 6.0])


def test_ref_greedy_applies_only_the_penalty():
    out = ref_filtered_logits(np.array([[3.0, 2.0]]), SamplingParams(temperature=0, top_k=1, repetition_penalty=2.0), np.array([[0]]))
    np.testing.assert_array_equal(out, [[1.5, 2.0]])


# ---- the shared table ---------------------------------------------------------------------
def test_table_cases_are_well_posed():
    assert len(CASES) >= 30
    for case in CASES:
        assert np.array_equal(case.logits, case.logits.astype(np.float32)), case.name
        assert decision_margin(case) >= MIN_MARGIN, case.name
        assert case.expected_allowed().any(axis=-1).all(), case.name


def test_table_catches_a_wrong_filter():
    """The checker fails a backend whose top-p drops the boundary token."""

    def off_by_one(logits, params, history):
        x = ref_filtered_logits(logits, params, history)
        if params.top_p < 1.0 and not params.greedy:
            x = ref_top_p(x, params.top_p * 0.7)
        return x

    with pytest.raises(AssertionError):
        check_backend_filters(off_by_one, np.asarray)


def test_torch_filters_match_the_shared_table():
    n = check_backend_filters(
        lambda logits, params, history: filtered_logits(torch.from_numpy(logits), params, history),
        lambda t: t.numpy(),
    )
    assert n == len(CASES)


def test_mlx_filters_match_the_shared_table():
    import mlx.core as mx

    from gptbench.backends.mlx.sampling import filtered_logits as mlx_filtered_logits

    n = check_backend_filters(
        lambda logits, params, history: mlx_filtered_logits(mx.array(logits), params, history),
        lambda a: np.array(a),
    )
    assert n == len(CASES)


# ---- the torch sampler ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_backend():
    return TorchBackend(tiny_model_config(), device="cpu")


def test_torch_sample_frequencies_follow_ref_probs(torch_backend):
    logits = np.log(np.array([[0.4, 0.25, 0.2, 0.1, 0.05]], dtype=np.float32))
    params = SamplingParams(temperature=1.3, top_k=4, min_p=0.1)
    want = ref_probs(logits, params)[0]
    n = 20000
    batch = torch.from_numpy(np.repeat(logits, n, axis=0))
    draws = torch_backend.sample(batch, params, None, torch_backend.make_generator(0))
    freq = np.bincount(draws, minlength=5) / n
    assert freq[want == 0].sum() == 0  # filtered tokens are never drawn
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_torch_sample_is_deterministic_per_seed(torch_backend):
    logits = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 67)).astype(np.float32))
    params = SamplingParams(temperature=1.0, seed=5)
    draws = [np.concatenate([torch_backend.sample(logits, params, None, g) for _ in range(8)])
             for g in (torch_backend.make_generator(5), torch_backend.make_generator(5), torch_backend.make_generator(6))]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_torch_greedy_sample_is_argmax_after_penalty(torch_backend):
    logits = torch.tensor([[3.0, 2.0, -1.0], [0.5, 0.4, 0.3]])
    history = np.array([[0, -1], [2, 2]])
    got = torch_backend.sample(logits, SamplingParams(temperature=0, repetition_penalty=2.0), history, None)
    np.testing.assert_array_equal(got, [1, 0])
