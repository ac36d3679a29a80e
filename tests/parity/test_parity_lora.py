"""Torch and MLX compute the same LoRA model and the same adapter steps.

The adapters are initialised in numpy from the seed (`backends/lora.py`), so both backends
start from the same A (and B = 0); two AdamW steps over two micro-batches must then give
the same losses, gradient norms, adapters and moments within the parity suite's
tolerances, with the base weights untouched on both. Variants: GELU with biases (GPT-2)
and SwiGLU without biases (a target list including c_gate); eps 1e-6 as in
test_parity_model.py (see its docstring).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import random_tokens
from reference_model import perturbed_weights
from gptbench.backends.optim import OptimConfig
from gptbench.backends.registry import create_backend
from gptbench.backends.lora import LoRAConfig, init_adapters
from gptbench.backends.spec import GPTConfig

CASES = [
    (dict(mlp="gelu", bias=True, tie_embeddings=True), LoRAConfig(4, 8.0, ("attn", "mlp"))),
    (dict(mlp="swiglu", bias=False, norm="rmsnorm", tie_embeddings=False), LoRAConfig(2, 1.0, ("c_attn", "mlp.c_gate", "mlp.c_proj"))),
]


@pytest.mark.parametrize("variant,lora", CASES, ids=["gpt2", "swiglu"])
def test_same_adapter_steps(variant, lora):
    cfg = GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=64, block_size=32, **variant)
    base = perturbed_weights(cfg, seed=4, scale=1.0)
    opt = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-6, grad_clip=1.0)
    backends = []
    for name in ("torch", "mlx"):
        be = create_backend(cfg, name, device="cpu", seed=7)
        be.set_weights(base)
        be.apply_lora(lora)
        be.setup_optimizer(opt)
        backends.append(be)
    torch_be, mlx_be = backends
    start = init_adapters(cfg, lora, 7)
    for be in backends:  # the same numbers from the same seed, on both
        got = be.get_adapters()
        assert set(got) == set(lora.adapter_shapes(cfg))
        for name in got:
            np.testing.assert_array_equal(got[name], start[name], err_msg=name)
    idx = random_tokens(cfg, 2, 32, seed=1)
    np.testing.assert_allclose(mlx_be.forward_logits(idx), torch_be.forward_logits(idx), rtol=0, atol=1e-4)
    for step in range(2):
        batches = [(random_tokens(cfg, 2, 32, seed=10 * step + j), random_tokens(cfg, 2, 32, seed=10 * step + j + 5)) for j in range(2)]
        rt = torch_be.train_step(batches, lr=1e-2)
        rm = mlx_be.train_step(batches, lr=1e-2)
        assert abs(rm.loss - rt.loss) < 1e-5, (step, rm.loss, rt.loss)
        assert rm.grad_norm == pytest.approx(rt.grad_norm, rel=1e-4)
    at, am = torch_be.get_adapters(), mlx_be.get_adapters()
    for name in at:
        np.testing.assert_allclose(am[name], at[name], rtol=0, atol=1e-4, err_msg=name)
    assert max(np.abs(at[n]).max() for n in at if n.endswith("lora_b")) > 1e-3  # B moved off zero
    for be in backends:  # the base never moves
        w = be.get_weights()
        for name in base:
            np.testing.assert_array_equal(w[name], base[name], err_msg=name)
    (st, mt), (sm, mm) = torch_be.get_optimizer_state(), mlx_be.get_optimizer_state()
    assert mt == mm == {"step": 2}
    assert set(st) == set(sm) == set(torch_be.optimizer_state_shapes()) == set(mlx_be.optimizer_state_shapes())
    for name in st:
        np.testing.assert_allclose(sm[name], st[name], rtol=1e-3, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(mlx_be.forward_logits(idx), torch_be.forward_logits(idx), rtol=0, atol=1e-4)
