"""Torch and MLX compute the same model: logits and training steps, every variant.

Shapes: the `tiny` preset (4 layers, 4 heads, 128 wide, context 64, char vocab 65) for all
24 variants (norm x mlp x bias x tied) and today's recipe (rope, QK-norm, soft-cap, alone
and together), plus the `small` preset's shape for logits. Muon's step (float32 on both,
the same update) is compared on every recipe variant. The
weights are perturbed random tensors (non-trivial gains and biases), written to one
safetensors file that both backends load.

Adam's eps. Adam divides every gradient element by its own magnitude, so an element whose
true gradient is zero (the key part of `c_attn.bias`: softmax ignores a shift shared by all
keys; MLP units that are dead for the whole batch) turns float round-off into an update of
size ~lr, different on each backend. Such elements only agree once |g| is well below eps,
so the training tests use eps=1e-6 (both backends, same value); a larger eps also makes
the tests more sensitive to where eps is added (after the bias-corrected sqrt, as torch).

Intentional differences, not exercised here: dropout masks come from
different RNGs (parity steps use dropout 0), and torch on CUDA/MPS may autocast to bf16
while MLX always computes in float32.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helpers import random_tokens
from reference_model import perturbed_weights
from gptbench.backends.optim import MuonConfig, OptimConfig
from gptbench.backends.registry import create_backend
from gptbench.backends.spec import GPTConfig
from gptbench.backends.weights import load_weights, save_weights
from gptbench.spec import PRESETS

VOCAB = 65
VARIANTS = [
    dict(norm=n, mlp=m, bias=b, tie_embeddings=t)
    for n, m, b, t in itertools.product(["layernorm", "rmsnorm"], ["gelu", "relu2", "swiglu"], [True, False], [True, False])
]

_GPT2 = dict(norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
_MODERN_BASE = dict(norm="rmsnorm", mlp="relu2", bias=False, tie_embeddings=False)
MODERN_VARIANTS = [
    dict(_GPT2, pos="rope"),
    dict(_GPT2, qk_norm=True),
    dict(_GPT2, logit_softcap=3.0),  # a cap that bites on these logits
    dict(_MODERN_BASE, pos="rope", qk_norm=True),
    dict(_MODERN_BASE, pos="rope", qk_norm=True, logit_softcap=15.0, zero_init_proj=True),
    dict(_MODERN_BASE, mlp="swiglu", pos="rope", qk_norm=True, logit_softcap=3.0, tie_embeddings=True),
]


def vid(v: dict) -> str:
    name = f"{v['norm']}-{v['mlp']}-{'bias' if v['bias'] else 'nobias'}-{'tied' if v['tie_embeddings'] else 'untied'}"
    extras = [f"{k}={v[k]}" for k in ("pos", "qk_norm", "logit_softcap", "zero_init_proj") if k in v]
    return "-".join([name, *extras])


def preset_config(preset: str, **variant) -> GPTConfig:
    model = {k: v for k, v in PRESETS[preset].model.to_dict().items() if k != "vocab_size"}
    model.update(dropout=0.0, **variant)
    return GPTConfig(vocab_size=VOCAB, **model)


def both_from_one_file(cfg: GPTConfig, tmp_path, seed: int = 0):
    path = tmp_path / "w.safetensors"
    save_weights(path, cfg, perturbed_weights(cfg, seed=seed, scale=1.0))
    loaded_cfg, tensors = load_weights(path)
    assert loaded_cfg == cfg
    out = []
    for name in ("torch", "mlx"):
        be = create_backend(loaded_cfg, name, device="cpu", seed=123)  # a different init, then overwritten
        be.set_weights(tensors)
        out.append(be)
    return out


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("variant", VARIANTS + MODERN_VARIANTS, ids=vid)
def test_same_file_same_logits(variant, tmp_path):
    cfg = preset_config("tiny", **variant)
    torch_be, mlx_be = both_from_one_file(cfg, tmp_path)
    idx = random_tokens(cfg, batch=3, length=cfg.block_size, seed=1)
    a, b = mlx_be.forward_logits(idx), torch_be.forward_logits(idx)
    assert a.shape == b.shape == (3, cfg.block_size, VOCAB)
    assert np.std(b) > 0.3  # logits with real spread, so a relative check means something
    assert max_rel(a, b) < 1e-4


def test_small_preset_shape_same_logits(tmp_path):
    cfg = preset_config("small")
    torch_be, mlx_be = both_from_one_file(cfg, tmp_path, seed=2)
    idx = random_tokens(cfg, batch=1, length=cfg.block_size, seed=3)
    assert max_rel(mlx_be.forward_logits(idx), torch_be.forward_logits(idx)) < 1e-4


TINY_OWN_VARIANT = dict(norm="layernorm", mlp="gelu", bias=PRESETS["tiny"].model.bias, tie_embeddings=True)
TRAIN_CASES = [("tiny-2x64", v) for v in VARIANTS + MODERN_VARIANTS] + [("tiny", TINY_OWN_VARIANT)]


@pytest.mark.parametrize("shape,variant", TRAIN_CASES, ids=lambda c: c if isinstance(c, str) else vid(c))
def test_same_training_steps(shape, variant, tmp_path):
    """Two AdamW steps (accumulating 2 micro-batches each, clipping engaged on odd
    cases, off on even ones): same losses, norms, parameters and moments.

    Every variant runs on a half-depth, half-width `tiny` (2 layers x 64, context 32) to
    keep CI fast; the `tiny` preset itself runs once with its own variant."""
    if shape == "tiny":
        cfg = preset_config("tiny", **variant)
    else:
        cfg = GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=64, block_size=32, **variant)
    torch_be, mlx_be = both_from_one_file(cfg, tmp_path, seed=4)
    clip = 0.5 if TRAIN_CASES.index((shape, variant)) % 2 else 0.0
    # eps 1e-6 rather than 1e-8: see the module docstring.
    opt = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-6, grad_clip=clip)
    for be in (torch_be, mlx_be):
        be.setup_optimizer(opt)
    for step in range(2):
        batches = [(random_tokens(cfg, 2, 32, seed=10 * step + j), random_tokens(cfg, 2, 32, seed=10 * step + j + 5)) for j in range(2)]
        rt = torch_be.train_step(batches, lr=1e-3)
        rm = mlx_be.train_step(batches, lr=1e-3)
        assert abs(rm.loss - rt.loss) < 1e-5, (step, rm.loss, rt.loss)
        assert rm.grad_norm == pytest.approx(rt.grad_norm, rel=1e-4)
        if clip:
            assert rt.grad_norm > clip  # clipping really happened
    wt, wm = torch_be.get_weights(), mlx_be.get_weights()
    assert set(wt) == set(wm)
    for name in wt:
        np.testing.assert_allclose(wm[name], wt[name], rtol=0, atol=1e-4, err_msg=name)
    # the weights really moved (so equality is not just "nothing happened")
    start = perturbed_weights(cfg, seed=4, scale=1.0)
    assert np.max(np.abs(wt["h.0.attn.c_attn.weight"] - start["h.0.attn.c_attn.weight"])) > 1e-3
    # and the exported optimizer moments agree name by name
    (st, mt), (sm, mm) = torch_be.get_optimizer_state(), mlx_be.get_optimizer_state()
    assert mt == mm == {"step": 2}
    assert set(st) == set(sm)
    for name in st:
        np.testing.assert_allclose(sm[name], st[name], rtol=1e-3, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("variant", MODERN_VARIANTS, ids=vid)
def test_same_muon_steps(variant, tmp_path):
    """Three Muon steps (hidden matrices) beside AdamW (the rest), momentum warming up,
    decoupled weight decay on both optimizers, clipping engaged: same losses, norms,
    parameters, Muon buffers and AdamW moments on both backends."""
    cfg = GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=64, block_size=32, **variant)
    torch_be, mlx_be = both_from_one_file(cfg, tmp_path, seed=6)
    muon = MuonConfig(lr_ratio=20.0, momentum=0.95, momentum_warmup=2, weight_decay=0.1)
    opt = OptimConfig(weight_decay=0.1, beta1=0.8, beta2=0.95, eps=1e-6, grad_clip=0.5, muon=muon)
    for be in (torch_be, mlx_be):
        be.setup_optimizer(opt)
    for step in range(3):
        batches = [(random_tokens(cfg, 2, 32, seed=10 * step + j), random_tokens(cfg, 2, 32, seed=10 * step + j + 5)) for j in range(2)]
        rt = torch_be.train_step(batches, lr=1e-3)
        rm = mlx_be.train_step(batches, lr=1e-3)
        assert abs(rm.loss - rt.loss) < 1e-5, (step, rm.loss, rt.loss)
        assert rm.grad_norm == pytest.approx(rt.grad_norm, rel=1e-4)
    start = perturbed_weights(cfg, seed=6, scale=1.0)
    wt, wm = torch_be.get_weights(), mlx_be.get_weights()
    for name in wt:
        moved = np.max(np.abs(wt[name] - start[name]))
        if name.endswith(".weight") and len(start[name].shape) == 2:
            assert moved > 1e-3, name  # every matrix really moved
        np.testing.assert_allclose(wm[name], wt[name], rtol=0, atol=1e-5, err_msg=name)
    (st, mt), (sm, mm) = torch_be.get_optimizer_state(), mlx_be.get_optimizer_state()
    assert mt == mm == {"step": 3}
    assert set(st) == set(sm)
    assert any(k.startswith("momentum.") for k in st)
    for name in st:
        np.testing.assert_allclose(sm[name], st[name], rtol=1e-3, atol=1e-7, err_msg=name)
