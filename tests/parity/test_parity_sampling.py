"""MLX's sampling filters pass the shared test-vector table (as torch's do, in
tests/test_sampling.py), and its sampler draws from the reference distribution."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from helpers import tiny_model_config
from sampling_vectors import CASES, check_backend_filters
from gptbench.backends.mlx import sampling as mlx_sampling
from gptbench.backends.mlx.backend import MLXBackend
from gptbench.backends.mlx.sampling import filtered_logits
from gptbench.backends.torch import sampling as torch_sampling
from gptbench.backends.sampling import SamplingParams, ref_min_p, ref_probs, ref_repetition_penalty, ref_top_k, ref_top_p


def test_mlx_filters_match_the_shared_table():
    n = check_backend_filters(
        lambda logits, params, history: filtered_logits(mx.array(logits), params, history),
        lambda a: np.array(a),
    )
    assert n == len(CASES)


@pytest.mark.parametrize(
    "name,args,ref",
    [
        ("top_k_filter", (5,), ref_top_k),
        ("top_p_filter", (0.7,), ref_top_p),
        ("min_p_filter", (0.05,), ref_min_p),
    ],
)
def test_each_filter_agrees_with_torch_and_reference(name, args, ref):
    logits = (np.random.default_rng(3).standard_normal((4, 97)) * 3).astype(np.float32)
    logits[0, :6] = logits[0, 6]  # exact ties, including at the boundaries
    want = np.isfinite(ref(logits, *args))
    got_mlx = np.isfinite(np.array(getattr(mlx_sampling, name)(mx.array(logits), *args)))
    got_torch = np.isfinite(getattr(torch_sampling, name)(torch.from_numpy(logits), *args).numpy())
    np.testing.assert_array_equal(got_mlx, want)
    np.testing.assert_array_equal(got_torch, want)


def test_repetition_penalty_agrees_with_torch_and_reference():
    logits = (np.random.default_rng(4).standard_normal((3, 50)) * 2).astype(np.float32)
    history = np.random.default_rng(5).integers(-1, 50, size=(3, 20))
    want = ref_repetition_penalty(logits, history, 1.7)
    np.testing.assert_allclose(np.array(mlx_sampling.repetition_penalty(mx.array(logits), history, 1.7)), want, rtol=1e-6)
    np.testing.assert_allclose(torch_sampling.repetition_penalty(torch.from_numpy(logits), history, 1.7).numpy(), want, rtol=1e-6)


@pytest.fixture(scope="module")
def mlx_be():
    return MLXBackend(tiny_model_config(), device="cpu")


def test_mlx_sample_frequencies_follow_ref_probs(mlx_be):
    logits = np.log(np.array([[0.4, 0.25, 0.2, 0.1, 0.05]], dtype=np.float32))
    params = SamplingParams(temperature=1.3, top_k=4, min_p=0.1)
    want = ref_probs(logits, params)[0]
    n = 20000
    draws = mlx_be.sample(mx.array(np.repeat(logits, n, axis=0)), params, None, mlx_be.make_generator(0))
    freq = np.bincount(draws, minlength=5) / n
    assert freq[want == 0].sum() == 0  # filtered tokens are never drawn
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_mlx_sample_is_deterministic_per_seed(mlx_be):
    logits = mx.array(np.random.default_rng(0).standard_normal((4, 67)).astype(np.float32))
    params = SamplingParams(temperature=1.0)
    draws = [np.concatenate([mlx_be.sample(logits, params, None, g) for _ in range(8)])
             for g in (mlx_be.make_generator(5), mlx_be.make_generator(5), mlx_be.make_generator(6))]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    assert draws[0].dtype == np.int64


def test_mlx_greedy_sample_is_argmax_after_penalty(mlx_be):
    logits = mx.array([[3.0, 2.0, -1.0], [0.5, 0.4, 0.3]])
    history = np.array([[0, -1], [2, 2]])
    got = mlx_be.sample(logits, SamplingParams(temperature=0, repetition_penalty=2.0), history, None)
    np.testing.assert_array_equal(got, [1, 0])
