"""The torch model's CPU dropout (`backends/torch/model.py`: `keep_mask`, `Dropout`,
`causal_attention_with_dropout`): masks with the asked-for rate that follow torch's seed,
gradients through the kept elements only, and attention equal to a float64 reference
built on the same mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptbench.backends.torch.model import Dropout, causal_attention_with_dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size((64, 1000, 16)), p)  # an odd count of draws would leave a half
    assert keep.dtype == torch.bool and keep.shape == (64, 1000, 16)
    n = keep.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(float(keep.float().mean()) - (1 - p)) < 6 * sigma  # a fixed seed: the same figure every run


def test_keep_mask_follows_torch_seed_and_rng_state():
    shape = torch.Size((7, 9, 11))  # 693 elements: an odd count
    torch.manual_seed(3)
    a = keep_mask(shape, 0.3)
    state = torch.get_rng_state()
    b = keep_mask(shape, 0.3)
    torch.set_rng_state(state)
    b_again = keep_mask(shape, 0.3)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(shape, 0.3), a)
    assert torch.equal(b, b_again)
    assert not torch.equal(a, b)  # the generator moved on: a new mask


def test_dropout_scales_kept_elements_and_backprops_through_them_only():
    drop = Dropout(0.25).train()
    x = torch.randn(4, 33, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    out = drop(x)
    torch.manual_seed(1)
    keep = keep_mask(x.shape, 0.25)
    np.testing.assert_array_equal(out.detach().numpy(), (torch.where(keep, x.detach(), 0.0) * (1 / 0.75)).numpy())
    grad = torch.randn_like(x)
    out.backward(grad)
    np.testing.assert_array_equal(x.grad.numpy(), (torch.where(keep, grad, 0.0) * (1 / 0.75)).numpy())


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(3, 5, 4)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_attention_with_dropout_matches_a_float64_reference_on_the_same_mask():
    B, H, T, D = 2, 3, 17, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    drop = Dropout(0.2).train()
    torch.manual_seed(5)
    y = causal_attention_with_dropout(q, k, v, drop)
    torch.manual_seed(5)
    keep = keep_mask(torch.Size((B, H, T, T)), 0.2)
    q64, k64, v64 = q.double(), k.double(), v.double()
    scores = q64 @ k64.transpose(-2, -1) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    ref = torch.where(keep, scores.softmax(-1) / 0.8, 0.0) @ v64
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_attention_with_dropout_is_sdpa_in_expectation_and_without_dropout():
    """With every element kept (p -> 0 the mask is all ones) it is exactly causal SDPA."""
    B, H, T, D = 1, 2, 9, 4
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    keep_all = Dropout(1e-12).train()  # a mask threshold of 0: nothing dropped, scale 1
    y = causal_attention_with_dropout(q, k, v, keep_all)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
