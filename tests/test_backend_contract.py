"""The backend contract, run against every backend (torch and MLX on CPU).

Each test states one promise of `TrainingBackend` or `GenerationBackend` and checks it
against an independent reference: the float64 numpy forward of the spec
(`reference_model.py`), a float64 autograd gradient with a hand-written AdamW, or the
backend's own full forward pass. Cross-backend agreement lives in tests/parity/; what only
one framework has (devices, dtypes, torch.compile, the CBLAS preload) in
test_backend_specifics.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gptbench.backends.optim import MuonConfig, OptimConfig, muon_blocks
from gptbench.backends.registry import create_backend
from gptbench.backends.spec import rope_tables
from helpers import TORCH_TEST_DEVICE, optim_config, random_tokens, tiny_model_config
from reference_model import (
    perturbed_weights,
    reference_gradients,
    reference_logits,
    reference_loss,
    reference_muon_update,
    reference_newton_schulz,
    reference_rope,
)

BACKENDS = ["torch", "mlx"]
VARIANTS = [
    dict(norm=n, mlp=m, bias=b, tie_embeddings=t)
    for n, m, b, t in itertools.product(["layernorm", "rmsnorm"], ["gelu", "relu2", "swiglu"], [True, False], [True, False])
]
# Today's recipe, each part alone and together, on GPT-2 and llama-style bases. The soft-cap
# of 3 bites on these logits (|z| up to ~2.5: tanh is far from linear there).
MODERN_VARIANTS = [
    dict(pos="rope"),
    dict(qk_norm=True),
    dict(logit_softcap=3.0),
    dict(pos="rope", qk_norm=True, mlp="swiglu", tie_embeddings=True),
    dict(pos="rope", qk_norm=True, logit_softcap=3.0, norm="rmsnorm", mlp="relu2", bias=False, tie_embeddings=False),
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=BACKENDS)
def name(request) -> str:
    return request.param


def make(name, cfg, seed=0, **kw):
    return create_backend(cfg, name, device=TORCH_TEST_DEVICE if name == "torch" else "cpu", seed=seed, **kw)


def to_numpy(x) -> np.ndarray:
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.float64)


# ---- weights and forward ------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS + MODERN_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_logits_match_float64_reference(name, variant):
    cfg = tiny_model_config(**variant)
    be = make(name, cfg)
    w = perturbed_weights(cfg, seed=1)
    be.set_weights(w)
    idx = random_tokens(cfg, batch=2, length=cfg.block_size, seed=2)
    got = be.forward_logits(idx)
    want = reference_logits(cfg, w, idx)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_weights_are_canonical_and_round_trip(name, tied, pos):
    cfg = tiny_model_config(mlp="swiglu", tie_embeddings=tied, pos=pos)
    assert ("wpe.weight" in cfg.canonical_shapes()) == (pos == "learned")  # rope has no position table
    w = make(name, cfg, seed=3).get_weights()
    assert {k: v.shape for k, v in w.items()} == cfg.canonical_shapes()
    assert all(v.dtype == np.float32 for v in w.values())
    be2 = make(name, cfg, seed=4)
    be2.set_weights(w)
    idx = random_tokens(cfg)
    np.testing.assert_array_equal(make(name, cfg, seed=3).forward_logits(idx), be2.forward_logits(idx))


def test_gpt2_init_statistics_and_seeding(name):
    cfg = tiny_model_config(n_layer=4, n_embd=64, n_head=4)
    w = make(name, cfg, seed=0).get_weights()
    assert abs(w["h.0.attn.c_attn.weight"].std() - 0.02) < 0.002
    assert abs(w["h.1.mlp.c_proj.weight"].std() - 0.02 / np.sqrt(2 * 4)) < 0.001
    assert np.all(w["h.0.ln_1.weight"] == 1.0)
    assert np.all(w["h.0.attn.c_attn.bias"] == 0.0)
    same = make(name, cfg, seed=0).get_weights()
    other = make(name, cfg, seed=1).get_weights()
    assert all(np.array_equal(w[k], same[k]) for k in w)
    assert not np.array_equal(w["wte.weight"], other["wte.weight"])
    # every matrix gets its own draw (one shared stream position would repeat values)
    assert not np.array_equal(w["h.0.attn.c_attn.weight"][:8], w["h.1.attn.c_attn.weight"][:8])


def test_zero_init_zeroes_exactly_the_residual_projections(name):
    """zero_init_proj: both c_proj weights are exactly 0 and nothing else changes (the same
    seed gives the same other tensors); after one step their gradients have moved them,
    while the matrices feeding them got exactly zero gradient (so Muon left them alone)."""
    cfg = tiny_model_config(norm="rmsnorm", mlp="relu2", bias=False, tie_embeddings=False)
    plain = make(name, cfg, seed=5).get_weights()
    be = make(name, cfg.replace(zero_init_proj=True), seed=5)
    zeroed = be.get_weights()
    for k in plain:
        if k.endswith("c_proj.weight"):
            assert not zeroed[k].any(), k
            assert plain[k].std() > 0.001, k
        else:
            np.testing.assert_array_equal(zeroed[k], plain[k], err_msg=k)
    be.setup_optimizer(optim_config(muon=MuonConfig(lr_ratio=20.0, momentum=0.95, momentum_warmup=0, weight_decay=0.0)))
    be.train_step([(random_tokens(cfg, seed=1), random_tokens(cfg, seed=2))], 1e-3)
    after = be.get_weights()
    for i in range(cfg.n_layer):
        for k in (f"h.{i}.attn.c_attn.weight", f"h.{i}.mlp.c_fc.weight"):
            np.testing.assert_array_equal(after[k], zeroed[k], err_msg=k)
        for k in (f"h.{i}.attn.c_proj.weight", f"h.{i}.mlp.c_proj.weight"):
            assert np.abs(after[k]).max() > 1e-3, k


def test_eval_loss_matches_reference(name):
    cfg = tiny_model_config(norm="rmsnorm", mlp="swiglu")
    w = perturbed_weights(cfg, seed=3)
    x, y = random_tokens(cfg, seed=4), random_tokens(cfg, seed=5)
    y[0, :5] = -1  # ignored targets
    be = make(name, cfg)
    be.set_weights(w)
    assert be.eval_loss(x, y) == pytest.approx(reference_loss(cfg, w, x, y), rel=1e-5)


def test_dropout_is_off_in_eval_and_generation(name):
    cfg = tiny_model_config(dropout=0.5)
    be = make(name, cfg)
    x = random_tokens(cfg)
    np.testing.assert_array_equal(be.forward_logits(x), be.forward_logits(x))
    assert be.eval_loss(x, x) == be.eval_loss(x, x)
    logits = [to_numpy(be.forward_last(x, None)) for _ in range(2)]
    np.testing.assert_array_equal(logits[0], logits[1])


# ---- training ------------------------------------------------------------------------------
def _adamw_reference(w, g, lr, opt: OptimConfig, step=1):
    """One AdamW step from zero moments, float64, decoupled decay on >=2-D tensors only."""
    out = {}
    for k in w:
        m = (1 - opt.beta1) * g[k]
        v = (1 - opt.beta2) * g[k] ** 2
        mhat = m / (1 - opt.beta1**step)
        vhat = v / (1 - opt.beta2**step)
        p = w[k].astype(np.float64)
        if w[k].ndim >= 2:
            p = p * (1 - lr * opt.weight_decay)
        out[k] = p - lr * mhat / (np.sqrt(vhat) + opt.eps)
    return out


def test_train_step_matches_manual_adamw_with_clipping_and_accumulation(name):
    cfg = tiny_model_config()
    be = make(name, cfg)
    w0 = perturbed_weights(cfg, seed=0)
    be.set_weights(w0)
    opt = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=0.05)
    be.setup_optimizer(opt)
    batches = [(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 10)) for s in range(2)]
    losses, g = reference_gradients(cfg, w0, batches)  # mean of the micro-batch gradients
    norm = np.sqrt(sum((v**2).sum() for v in g.values()))
    assert norm > opt.grad_clip  # the clip must actually engage in this test
    g = {k: v * opt.grad_clip / norm for k, v in g.items()}
    res = be.train_step(batches, lr=1e-2)
    assert res.loss == pytest.approx(np.mean(losses), rel=1e-5)
    assert res.grad_norm == pytest.approx(norm, rel=1e-4)
    want = _adamw_reference(w0, g, 1e-2, opt)
    got = be.get_weights()
    # Step 1 of Adam moves by lr * g / (|g| + eps): where |g| is near eps (1e-8), float32
    # and float64 gradients legitimately disagree, so the bound is 0.2% of the step size;
    # the key part of c_attn.bias has an analytically zero gradient (softmax ignores a
    # shift shared by all keys), so float noise alone decides its step: left out.
    C = cfg.n_embd
    for k in want:
        keep = np.r_[0:C, 2 * C : 3 * C] if k.endswith("c_attn.bias") else slice(None)
        np.testing.assert_allclose(got[k][keep], want[k][keep], rtol=1e-4, atol=2e-5, err_msg=k)


def test_first_adamw_step_decays_only_matrices(name):
    """Step 1 of bias-corrected Adam moves every parameter with a non-zero gradient by
    exactly lr (m_hat / sqrt(v_hat) = sign(g)); AdamW first shrinks >= 2-D tensors by
    (1 - lr * wd). Without bias correction the step would be ~3x smaller (sqrt(1-beta2))."""
    cfg = tiny_model_config(bias=True, tie_embeddings=False)
    be = make(name, cfg)
    w0 = perturbed_weights(cfg, seed=0)
    be.set_weights(w0)
    lr, wd = 1e-2, 0.5
    be.setup_optimizer(OptimConfig(weight_decay=wd, beta1=0.9, beta2=0.95, eps=1e-12, grad_clip=0.0))
    be.train_step([(random_tokens(cfg, seed=1), random_tokens(cfg, seed=2))], lr)
    w1 = be.get_weights()
    C = cfg.n_embd
    for key, p0 in w0.items():
        decayed = p0 * (1 - lr * wd) if p0.ndim >= 2 else p0
        step = np.abs(w1[key] - decayed)
        if key.endswith("c_attn.bias"):
            # the key bias's gradient is analytically zero (softmax ignores a shift shared by
            # all keys), so float noise decides its Adam step; leave it out
            step = np.concatenate([step[:C], step[2 * C :]])
        moved = step > lr / 2
        assert moved.any(), key
        np.testing.assert_allclose(step[moved], lr, rtol=2e-3, err_msg=key)
        # tensors that got no gradient (embedding rows of unseen tokens) only decay
        np.testing.assert_allclose(step[~moved], 0.0, atol=1e-6, err_msg=key)


def test_accumulation_and_clipping_match_the_reference_loss(name):
    cfg = tiny_model_config()
    w = perturbed_weights(cfg, seed=5)
    batches = [(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 50)) for s in range(3)]
    be = make(name, cfg)
    be.set_weights(w)
    be.setup_optimizer(optim_config(grad_clip=0.25))
    res = be.train_step(batches, 1e-3)
    assert res.loss == pytest.approx(np.mean([reference_loss(cfg, w, x, y) for x, y in batches]), rel=1e-5)
    assert res.grad_norm > 0.25  # the clip engaged; the reported norm is before clipping
    assert np.isfinite(res.grad_norm)


def _adamw_step(p, g, m, v, t, lr, opt: OptimConfig):
    """AdamW step `t` (1-based) in float64 from moments m, v: (new p, m, v)."""
    m = opt.beta1 * m + (1 - opt.beta1) * g
    v = opt.beta2 * v + (1 - opt.beta2) * g**2
    decayed = p * (1 - lr * opt.weight_decay) if p.ndim >= 2 else p
    return decayed - lr * (m / (1 - opt.beta1**t)) / (np.sqrt(v / (1 - opt.beta2**t)) + opt.eps), m, v


def test_muon_steps_match_float64_reference(name):
    """Two steps of Muon (hidden matrices; c_attn in three blocks) beside AdamW (the rest),
    momentum warming up, decoupled weight decay, clipping engaged: each step matches the
    float64 Muon and AdamW rules applied to float64 gradients at the backend's weights."""
    cfg = tiny_model_config(pos="rope", qk_norm=True, tie_embeddings=False)
    blocks = muon_blocks(cfg)
    assert blocks["h.0.attn.c_attn.weight"] == 3
    assert blocks["h.1.mlp.c_proj.weight"] == 1
    assert set(blocks) == {n for n, s in cfg.canonical_shapes().items() if n.startswith("h.") and len(s) == 2}
    be = make(name, cfg)
    be.set_weights(perturbed_weights(cfg, seed=0))
    muon = MuonConfig(lr_ratio=10.0, momentum=0.95, momentum_warmup=2, weight_decay=0.2)
    opt = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=0.5, muon=muon)
    be.setup_optimizer(opt)
    lr = 2e-3
    state = {k: (np.zeros(s), np.zeros(s)) for k, s in cfg.canonical_shapes().items()}  # (m, v) or (buf, unused)
    for t in range(2):
        w = be.get_weights()
        batches = [(random_tokens(cfg, seed=10 * t + j), random_tokens(cfg, seed=10 * t + j + 5)) for j in range(2)]
        _, g = reference_gradients(cfg, w, batches)
        norm = np.sqrt(sum((x**2).sum() for x in g.values()))
        assert norm > opt.grad_clip  # clipping engages
        g = {k: x * opt.grad_clip / norm for k, x in g.items()}
        mu = 0.85 + (0.95 - 0.85) * min(t / 2, 1.0)  # the warmup, from its definition
        want = {}
        for k, p in w.items():
            p = p.astype(np.float64)
            if k in blocks:
                want[k], buf = reference_muon_update(p, g[k], state[k][0], lr * 10.0, mu, 0.2, blocks[k])
                state[k] = (buf, state[k][1])
            else:
                want[k], m, v = _adamw_step(p, g[k], *state[k], t + 1, lr, opt)
                state[k] = (m, v)
        be.train_step(batches, lr)
        got = be.get_weights()
        for k in want:
            step = np.abs(want[k] - w[k]).max()
            assert step > (lr * 10.0 * 0.05 if k in blocks else lr * 0.5), k  # the parameter really moved
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=2e-3 * step, err_msg=f"step {t}: {k}")
    tensors, meta = be.get_optimizer_state()
    assert meta == {"step": 2}
    for k in blocks:
        np.testing.assert_allclose(tensors[f"momentum.{k}"], state[k][0], rtol=1e-4, atol=1e-7, err_msg=k)


def test_train_step_needs_an_optimizer(name):
    be = make(name, tiny_model_config())
    cfg = be.config
    with pytest.raises(RuntimeError, match="setup_optimizer"):
        be.train_step([(random_tokens(cfg), random_tokens(cfg))], 1e-3)


# ---- state for an exact resume ----------------------------------------------------------------
MUON = MuonConfig(lr_ratio=20.0, momentum=0.95, momentum_warmup=3, weight_decay=0.1)


@pytest.mark.parametrize("muon", [None, MUON], ids=["adamw", "muon"])
def test_state_shapes_describe_the_state(name, muon):
    cfg = tiny_model_config(tie_embeddings=False)
    be = make(name, cfg)
    be.setup_optimizer(optim_config(muon=muon))
    tensors, meta = be.get_optimizer_state()  # before any step: zeros, step 0
    assert {k: v.shape for k, v in tensors.items()} == be.optimizer_state_shapes()
    hidden = set(muon_blocks(cfg)) if muon else set()
    assert set(be.optimizer_state_shapes()) == (
        {f"{m}.{n}" for m in ("exp_avg", "exp_avg_sq") for n in cfg.canonical_shapes() if n not in hidden}
        | {f"momentum.{n}" for n in hidden}
    )
    assert all(not v.any() for v in tensors.values())
    assert meta == {"step": 0}
    be.train_step([(random_tokens(cfg), random_tokens(cfg, seed=1))], 1e-3)
    tensors, meta = be.get_optimizer_state()
    assert {k: v.shape for k, v in tensors.items()} == be.optimizer_state_shapes()
    assert meta == {"step": 1}
    assert all(v.any() for k, v in tensors.items() if not k.endswith("c_attn.bias")), "a state tensor did not move"
    rng = be.get_rng_state()
    assert {k: (v.dtype.name, v.shape) for k, v in rng.items()} == be.rng_state_shapes()


@pytest.mark.parametrize("muon", [None, MUON], ids=["adamw", "muon"])
def test_optimizer_and_rng_state_round_trip_continue_identically(name, muon):
    """Resume exactness: a backend given the weights, optimizer state (Muon's buffers and
    step, so its momentum warmup resumes where it was) and RNG state of another continues
    with bit-identical losses."""
    cfg = tiny_model_config(dropout=0.1, pos="rope" if muon else "learned")
    batches = [[(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 100))] for s in range(6)]
    a = make(name, cfg, seed=0)
    a.setup_optimizer(optim_config(muon=muon))
    for b in batches[:3]:
        a.train_step(b, 1e-3)
    weights, (opt, meta), rng = a.get_weights(), a.get_optimizer_state(), a.get_rng_state()
    assert meta == {"step": 3}
    assert set(opt) == set(a.optimizer_state_shapes())
    tail_a = [a.train_step(b, 1e-3).loss for b in batches[3:]]
    b_ = make(name, cfg, seed=99)
    b_.setup_optimizer(optim_config(muon=muon))
    b_.set_weights(weights)
    b_.set_optimizer_state(opt, meta)
    b_.set_rng_state(rng)
    tail_b = [b_.train_step(b, 1e-3).loss for b in batches[3:]]
    assert tail_a == tail_b
    if muon:  # without the buffers (a fresh Muon at step 3) the losses differ: they matter
        d = make(name, cfg, seed=99)
        d.setup_optimizer(optim_config(muon=muon))
        d.set_weights(weights)
        d.set_optimizer_state({k: np.zeros_like(v) for k, v in opt.items()}, meta)
        d.set_rng_state(rng)
        assert [d.train_step(b, 1e-3).loss for b in batches[3:]][1:] != tail_a[1:]
    # a different dropout RNG gives different losses: the state really drives dropout
    c = make(name, cfg, seed=99)
    c.setup_optimizer(optim_config(muon=muon))
    c.set_weights(weights)
    c.set_optimizer_state(opt, meta)
    assert [c.train_step(b, 1e-3).loss for b in batches[3:]] != tail_a


# ---- LoRA --------------------------------------------------------------------------------------
def _lora_backend(name, cfg, lora, seed=0):
    """A backend with perturbed base weights, LoRA applied, and B moved off zero (so both
    adapters get gradients); returns (backend, base, adapters)."""
    be = make(name, cfg, seed=seed)
    base = perturbed_weights(cfg, seed=1)
    be.set_weights(base)
    be.apply_lora(lora)
    rng = np.random.default_rng(3)
    adapters = {k: (v if k.endswith("lora_a") else rng.normal(0, 0.1, v.shape).astype(np.float32)) for k, v in be.get_adapters().items()}
    be.set_adapters(adapters)
    return be, base, adapters


def test_lora_decodes_on_the_decode_layout_with_live_adapters(name, monkeypatch):
    """Generation on the CPU decode layouts (forced on for this tiny model) reads the
    adapters live: forward_last equals the merged reference, before and after the adapters
    change."""
    from gptbench.backends.lora import LoRAConfig, merge

    monkeypatch.setattr(f"gptbench.backends.{name}.decode.DECODE_LAYOUT_MIN_BYTES", 0)
    cfg = tiny_model_config()
    lora = LoRAConfig(4, 8.0, ("attn", "mlp"))
    be, base, adapters = _lora_backend(name, cfg, lora)
    idx = random_tokens(cfg, 1, 12, seed=2)
    for step in range(2):
        got = np.asarray(be.forward_last(idx, None))[0]
        want = reference_logits(cfg, merge(cfg, lora, base, adapters), idx)[0, -1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"adapters {step}")
        assert be._decode_layout
        adapters = {k: v + np.float32(0.05) for k, v in adapters.items()}
        be.set_adapters(adapters)


@pytest.mark.parametrize("recipe", [{}, dict(norm="rmsnorm", mlp="relu2", bias=False, pos="rope", qk_norm=True, logit_softcap=15.0)],
                         ids=["gpt2", "modern"])
def test_lora_forward_and_step_match_the_merged_reference(name, recipe):
    """Logits equal the float64 reference of the merged weights W + (alpha/r)·B@A, and one
    step moves only the adapters, by AdamW on dL/dA = s·Bᵀ·dL/dW and dL/dB = s·dL/dW·Aᵀ
    (GPT-2's architecture and today's recipe alike: LoRA only touches the Linears)."""
    from gptbench.backends.lora import LoRAConfig, merge

    cfg = tiny_model_config(**recipe)
    lora = LoRAConfig(4, 8.0, ("attn", "mlp"))
    be, base, adapters = _lora_backend(name, cfg, lora)
    merged = merge(cfg, lora, base, adapters)
    idx = random_tokens(cfg, seed=2)
    np.testing.assert_allclose(be.forward_logits(idx), reference_logits(cfg, merged, idx), rtol=1e-4, atol=1e-4)
    opt = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=0.0)
    be.setup_optimizer(opt)
    batches = [(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 10)) for s in range(2)]
    losses, g = reference_gradients(cfg, merged, batches)
    ga = {}
    for module in lora.modules(cfg):
        a, b, gw = adapters[f"{module}.lora_a"], adapters[f"{module}.lora_b"], g[f"{module}.weight"]
        ga[f"{module}.lora_a"] = lora.scale * b.astype(np.float64).T @ gw
        ga[f"{module}.lora_b"] = lora.scale * gw @ a.astype(np.float64).T
    res = be.train_step(batches, lr=1e-2)
    assert res.loss == pytest.approx(np.mean(losses), rel=1e-5)
    assert res.grad_norm == pytest.approx(np.sqrt(sum((v**2).sum() for v in ga.values())), rel=1e-4)
    want = _adamw_reference(adapters, ga, 1e-2, opt)
    got = be.get_adapters()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-5, err_msg=k)
    after = be.get_weights()
    assert set(after) == set(cfg.canonical_shapes())  # get_weights: the base, never the adapters
    for k in base:
        np.testing.assert_array_equal(after[k], base[k], err_msg=k)


def test_lora_optimizer_state_is_the_adapters_only(name):
    from gptbench.backends.lora import LoRAConfig

    cfg = tiny_model_config(tie_embeddings=False)
    lora = LoRAConfig(2, 2.0, ("c_attn",))
    be = make(name, cfg)
    be.apply_lora(lora)
    be.setup_optimizer(optim_config())
    tensors, meta = be.get_optimizer_state()
    want = {f"{m}.{n}" for m in ("exp_avg", "exp_avg_sq") for n in lora.adapter_shapes(cfg)}
    assert set(be.optimizer_state_shapes()) == want
    assert {k: v.shape for k, v in tensors.items()} == be.optimizer_state_shapes()
    late = make(name, cfg)
    late.setup_optimizer(optim_config())
    with pytest.raises(RuntimeError, match="before setup_optimizer"):
        late.apply_lora(lora)


def test_lora_dropout_is_seeded_off_in_eval_and_resumes_exactly(name):
    from gptbench.backends.lora import LoRAConfig

    cfg = tiny_model_config()
    batches = [[(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 100))] for s in range(5)]
    idx = random_tokens(cfg, seed=7)

    def run(dropout, seed=0):
        be, _, _ = _lora_backend(name, cfg, LoRAConfig(4, 8.0, dropout=dropout), seed=seed)
        be.setup_optimizer(optim_config())
        return be

    a, plain = run(0.5), run(0.0)
    np.testing.assert_array_equal(a.forward_logits(idx), plain.forward_logits(idx))  # eval: no dropout
    head = [a.train_step(b, 1e-3).loss for b in batches[:2]]
    assert head != [plain.train_step(b, 1e-3).loss for b in batches[:2]]  # dropout is on in training
    adapters, (opt, meta), rng = a.get_adapters(), a.get_optimizer_state(), a.get_rng_state()
    tail = [a.train_step(b, 1e-3).loss for b in batches[2:]]
    b_ = run(0.5, seed=99)
    b_.set_adapters(adapters)
    b_.set_optimizer_state(opt, meta)
    b_.set_rng_state(rng)
    assert [b_.train_step(b, 1e-3).loss for b in batches[2:]] == tail


# ---- generation ------------------------------------------------------------------------------
def test_kv_cache_grows_in_chunks_and_keeps_history(name):
    import importlib

    model = importlib.import_module(f"gptbench.backends.{name}.model")
    array = (lambda a: __import__("torch").from_numpy(a)) if name == "torch" else (lambda a: __import__("mlx.core").core.array(a))
    cache = model.KVCache()
    rng = np.random.default_rng(0)
    step = model.CACHE_STEP
    chunks = [rng.standard_normal((1, 2, n, 4)).astype(np.float32) for n in (5, 1, step - 6, 3)]
    storage = []
    for i, c in enumerate(chunks):
        k, v = cache.update_and_fetch(array(c), array(-c))
        total = sum(x.shape[2] for x in chunks[: i + 1])
        assert tuple(k.shape) == (1, 2, total, 4)
        assert cache.offset == total
        assert cache.keys.shape[2] == ((total + step - 1) // step) * step
        storage.append(cache.keys)
    if name == "torch":  # within a chunk the buffer is written in place, never reallocated
        assert storage[0] is storage[1] is storage[2]
        assert storage[3] is not storage[2]
    want = np.concatenate(chunks, axis=2)
    np.testing.assert_array_equal(to_numpy(k), want)
    np.testing.assert_array_equal(to_numpy(v), -want)


@pytest.mark.parametrize("modern", [{}, dict(pos="rope", qk_norm=True, logit_softcap=5.0)], ids=["learned", "rope"])
def test_cached_decoding_and_left_padding_match_full_forward(name, modern):
    """Positions continue in the cache (rope rotates each new key by its true position) and
    restart after a row's left padding."""
    cfg = tiny_model_config(norm="rmsnorm", mlp="relu2", tie_embeddings=False, **modern)
    be = make(name, cfg)
    be.set_weights(perturbed_weights(cfg, seed=7))
    seq = random_tokens(cfg, batch=1, length=20, seed=8)
    cache = be.new_cache()
    got = [to_numpy(be.forward_last(seq[:, :12], cache))]
    for t in range(12, 20):
        got.append(to_numpy(be.forward_last(seq[:, t : t + 1], cache)))
    want = be.forward_logits(seq)[0, 11:]
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-5)
    # a left-padded row in a batch gives the logits it has alone, then decodes like it
    short = random_tokens(cfg, batch=1, length=6, seed=9)
    batch = np.concatenate([seq[:, :10], np.concatenate([np.zeros((1, 4), np.int64), short], axis=1)])
    cache = be.new_cache(np.array([0, 4]))
    out = to_numpy(be.forward_last(batch, cache))
    np.testing.assert_allclose(out[1], be.forward_logits(short)[0, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0], be.forward_logits(seq[:, :10])[0, -1], rtol=1e-5, atol=1e-5)
    nxt = np.array([[seq[0, 10]], [seq[0, 0]]])
    out = to_numpy(be.forward_last(nxt, cache))
    np.testing.assert_allclose(out[0], be.forward_logits(seq[:, :11])[0, -1], rtol=1e-5, atol=1e-5)
    grown = np.concatenate([short, seq[:, :1]], axis=1)
    np.testing.assert_allclose(out[1], be.forward_logits(grown)[0, -1], rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_and_greedy_is_argmax(name):
    from gptbench.backends.sampling import SamplingParams

    cfg = tiny_model_config()
    be = make(name, cfg)
    logits = be.forward_last(random_tokens(cfg, batch=3, length=8), None)
    params = SamplingParams(temperature=1.0, top_k=20)
    draws = [np.concatenate([be.sample(logits, params, None, g) for _ in range(5)]) for g in (be.make_generator(5), be.make_generator(5))]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert draws[0].dtype == np.int64
    greedy = be.sample(logits, SamplingParams(temperature=0), None, None)
    np.testing.assert_array_equal(greedy, np.argmax(to_numpy(logits), -1))
    # a vanishing temperature is greedy too, not NaN
    tiny = be.sample(logits, SamplingParams(temperature=1e-40), None, be.make_generator(0))
    np.testing.assert_array_equal(tiny, greedy)


# ---- rotary embeddings and Newton-Schulz against float64 definitions ---------------------------
def test_rope_tables_are_the_float64_angles_rounded_once():
    cfg = tiny_model_config(pos="rope", block_size=1024, n_embd=64, n_head=2, rope_theta=500.0)
    cos, sin = rope_tables(cfg)
    assert cos.shape == sin.shape == (1024, 16)
    assert cos.dtype == np.float32
    D = cfg.head_dim
    angles = np.arange(1024)[:, None] * 500.0 ** (-2.0 * np.arange(D // 2)[None, :] / D)
    np.testing.assert_allclose(cos, np.cos(angles), rtol=0, atol=6e-8)  # float32 rounding only
    np.testing.assert_allclose(sin, np.sin(angles), rtol=0, atol=6e-8)


def _framework(name):
    import importlib

    model = importlib.import_module(f"gptbench.backends.{name}.model")
    optim = importlib.import_module(f"gptbench.backends.{name}.optim")
    array = (lambda a: __import__("torch").from_numpy(a)) if name == "torch" else (lambda a: __import__("mlx.core").core.array(a))
    return model, optim, array


def test_apply_rope_matches_the_float64_rotation(name):
    """The backend's rotation with the shared tables, at positions up to 1023 (where float32
    angles would drift), against the definition; and it preserves each head's norm."""
    model, _, array = _framework(name)
    cfg = tiny_model_config(pos="rope", block_size=1024)
    cos, sin = rope_tables(cfg)
    pos = np.array([0, 1, 2, 17, 511, 1023])
    x = np.random.default_rng(0).standard_normal((2, 3, len(pos), cfg.head_dim)).astype(np.float32)
    got = to_numpy(model.apply_rope(array(x), array(cos[pos][None, None]), array(sin[pos][None, None])))
    want = reference_rope(x.astype(np.float64), pos, cfg.rope_theta)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert np.abs(got[:, :, 1:] - x[:, :, 1:]).max() > 0.1  # it rotated (position 0 does not)


def test_rope_attention_depends_on_relative_position_only(name):
    """With the backend's rotation, q at position m and k at position n score q.k by m - n
    alone (what lets a cache keep rotated keys, and a window restart at position 0)."""
    model, _, array = _framework(name)
    cfg = tiny_model_config(pos="rope", block_size=256)
    cos, sin = rope_tables(cfg)
    q, k = np.random.default_rng(1).standard_normal((2, 1, 1, 1, cfg.head_dim)).astype(np.float32)

    def score(m: int, n: int) -> float:
        rq = to_numpy(model.apply_rope(array(q), array(cos[[m]][None, None]), array(sin[[m]][None, None])))
        rk = to_numpy(model.apply_rope(array(k), array(cos[[n]][None, None]), array(sin[[n]][None, None])))
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), abs=2e-5)
    assert score(5, 2) == pytest.approx(score(203, 200), abs=2e-5)
    assert abs(score(5, 2) - score(5, 3)) > 1e-2


def test_newton_schulz_matches_float64_reference(name):
    """The backend's batched orthogonalisation (square, tall, wide and split blocks in one
    call, as a GPT step hands it) against one float64 iteration per block."""
    _, optim, array = _framework(name)
    rng = np.random.default_rng(2)
    shapes = [(3, 32, 32), (1, 32, 32), (1, 128, 32), (1, 32, 128), (1, 48, 32)]
    mats = [rng.standard_normal(s).astype(np.float32) * 0.01 for s in shapes]
    got = [to_numpy(o) for o in optim.orthogonalize([array(m) for m in mats])]
    for m, o in zip(mats, got):
        want = np.stack([reference_newton_schulz(block) for block in m])
        assert o.shape == m.shape
        np.testing.assert_allclose(o, want, rtol=0, atol=2e-5 * np.abs(want).max())
        sv = np.linalg.svd(want[0], compute_uv=False)
        assert sv.min() > 0.6  # approximately orthogonal, whatever the input scale
        assert sv.max() < 1.25
