"""The MLX backend on its own: the float64 spec reference, training mechanics, caches,
devices and laziness. Parity with torch lives in tests/parity/."""

from __future__ import annotations

import itertools
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from conftest import random_tokens, tiny_model_config
from reference_model import perturbed_weights, reference_logits, reference_loss
from gptbench.backends.base import OptimConfig, create_backend
from gptbench.backends.mlx_model import CACHE_STEP, KVCache
from gptbench.errors import UserError

VARIANTS = [
    dict(norm=n, mlp=m, bias=b, tie_embeddings=t)
    for n, m, b, t in itertools.product(["layernorm", "rmsnorm"], ["gelu", "relu2", "swiglu"], [True, False], [True, False])
]


def _mlx(cfg, seed=0, **kw):
    return create_backend(cfg, "mlx", device="cpu", seed=seed, **kw)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_logits_match_float64_reference(variant):
    cfg = tiny_model_config(**variant)
    be = _mlx(cfg)
    w = perturbed_weights(cfg, seed=1)
    be.set_weights(w)
    idx = random_tokens(cfg, batch=2, length=cfg.block_size, seed=2)
    np.testing.assert_allclose(be.forward_logits(idx), reference_logits(cfg, w, idx), rtol=1e-4, atol=1e-4)


def test_eval_loss_matches_reference_and_compiled_eval_agrees():
    cfg = tiny_model_config(norm="rmsnorm", mlp="swiglu")
    w = perturbed_weights(cfg, seed=3)
    x, y = random_tokens(cfg, seed=4), random_tokens(cfg, seed=5)
    want = reference_loss(cfg, w, x, y)
    for compiled in (False, True):
        be = _mlx(cfg, compile=compiled)
        be.set_weights(w)
        assert be.eval_loss(x, y) == pytest.approx(want, rel=1e-5)


def test_weights_are_canonical_and_round_trip():
    for tied in (True, False):
        cfg = tiny_model_config(mlp="swiglu", tie_embeddings=tied)
        w = _mlx(cfg, seed=3).get_weights()
        assert {k: v.shape for k, v in w.items()} == cfg.canonical_shapes()
        assert all(v.dtype == np.float32 for v in w.values())
        be2 = _mlx(cfg, seed=4)
        be2.set_weights(w)
        idx = random_tokens(cfg)
        np.testing.assert_array_equal(_mlx(cfg, seed=3).forward_logits(idx), be2.forward_logits(idx))


def test_gpt2_init_statistics_and_seeding():
    cfg = tiny_model_config(n_layer=4, n_embd=64, n_head=4)
    w = _mlx(cfg, seed=0).get_weights()
    assert abs(w["h.0.attn.c_attn.weight"].std() - 0.02) < 0.002
    assert abs(w["h.1.mlp.c_proj.weight"].std() - 0.02 / np.sqrt(2 * 4)) < 0.001
    assert np.all(w["h.0.ln_1.weight"] == 1.0) and np.all(w["h.0.attn.c_attn.bias"] == 0.0)
    same = _mlx(cfg, seed=0).get_weights()
    other = _mlx(cfg, seed=1).get_weights()
    assert all(np.array_equal(w[k], same[k]) for k in w)
    assert not np.array_equal(w["wte.weight"], other["wte.weight"])
    # every matrix gets its own draw (one shared key would repeat values across tensors)
    assert not np.array_equal(w["h.0.attn.c_attn.weight"][:8], w["h.1.attn.c_attn.weight"][:8])


def test_first_adamw_step_decays_only_matrices():
    """Step 1 of bias-corrected Adam moves every parameter with a non-zero gradient by
    exactly lr (m_hat / sqrt(v_hat) = sign(g)); AdamW first shrinks >= 2-D tensors by
    (1 - lr * wd). Without bias correction the step would be ~3x smaller (sqrt(1-beta2))."""
    cfg = tiny_model_config(bias=True, tie_embeddings=False)
    be = _mlx(cfg)
    w0 = perturbed_weights(cfg, seed=0)
    be.set_weights(w0)
    lr, wd = 1e-2, 0.5
    be.setup_optimizer(OptimConfig(weight_decay=wd, beta1=0.9, beta2=0.95, eps=1e-12, grad_clip=0.0))
    be.train_step([(random_tokens(cfg, seed=1), random_tokens(cfg, seed=2))], lr)
    w1 = be.get_weights()
    C = cfg.n_embd
    for name, p0 in w0.items():
        decayed = p0 * (1 - lr * wd) if p0.ndim >= 2 else p0
        step = np.abs(w1[name] - decayed)
        if name.endswith("c_attn.bias"):
            # the key bias's gradient is analytically zero (softmax ignores a shift shared by
            # all keys), so float noise decides its Adam step; leave it out
            step = np.concatenate([step[:C], step[2 * C :]])
        moved = step > lr / 2
        assert moved.any(), name
        np.testing.assert_allclose(step[moved], lr, rtol=2e-3, err_msg=name)
        # tensors that got no gradient (embedding rows of unseen tokens) only decay
        np.testing.assert_allclose(step[~moved], 0.0, atol=1e-6, err_msg=name)


def test_accumulation_and_clipping_match_the_reference_loss():
    cfg = tiny_model_config()
    w = perturbed_weights(cfg, seed=5)
    batches = [(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 50)) for s in range(3)]
    be = _mlx(cfg)
    be.set_weights(w)
    be.setup_optimizer(OptimConfig(grad_clip=0.25))
    res = be.train_step(batches, 1e-3)
    assert res.loss == pytest.approx(np.mean([reference_loss(cfg, w, x, y) for x, y in batches]), rel=1e-5)
    assert res.grad_norm > 0.25  # the clip engaged; the reported norm is before clipping
    assert np.isfinite(res.grad_norm)


def test_optimizer_and_rng_state_round_trip_continue_identically():
    cfg = tiny_model_config(dropout=0.1)
    batches = [[(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 100))] for s in range(6)]
    a = _mlx(cfg, seed=0)
    a.setup_optimizer(OptimConfig())
    for b in batches[:3]:
        a.train_step(b, 1e-3)
    weights, (opt, meta), rng = a.get_weights(), a.get_optimizer_state(), a.get_rng_state()
    assert meta == {"step": 3}
    assert set(opt) == {f"{m}.{n}" for m in ("exp_avg", "exp_avg_sq") for n in cfg.canonical_shapes()}
    tail_a = [a.train_step(b, 1e-3).loss for b in batches[3:]]
    b_ = _mlx(cfg, seed=99)
    b_.setup_optimizer(OptimConfig())
    b_.set_weights(weights)
    b_.set_optimizer_state(opt, meta)
    b_.set_rng_state(rng)
    tail_b = [b_.train_step(b, 1e-3).loss for b in batches[3:]]
    assert tail_a == tail_b
    # a different dropout key gives different losses: the key really drives dropout
    c = _mlx(cfg, seed=99)
    c.setup_optimizer(OptimConfig())
    c.set_weights(weights)
    c.set_optimizer_state(opt, meta)
    assert [c.train_step(b, 1e-3).loss for b in batches[3:]] != tail_a


def test_dropout_is_off_in_eval_and_generation():
    cfg = tiny_model_config(dropout=0.5)
    be = _mlx(cfg)
    x = random_tokens(cfg)
    np.testing.assert_array_equal(be.forward_logits(x), be.forward_logits(x))
    assert be.eval_loss(x, x) == be.eval_loss(x, x)


def test_kv_cache_grows_in_chunks_and_keeps_history():
    cache = KVCache()
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((1, 2, n, 4)).astype(np.float32) for n in (5, 1, CACHE_STEP - 6, 3)]
    for i, c in enumerate(chunks):
        k, v = cache.update_and_fetch(mx.array(c), mx.array(-c))
        total = sum(x.shape[2] for x in chunks[: i + 1])
        assert k.shape == (1, 2, total, 4) and cache.offset == total
        assert cache.keys.shape[2] == ((total + CACHE_STEP - 1) // CACHE_STEP) * CACHE_STEP
    want = np.concatenate(chunks, axis=2)
    np.testing.assert_array_equal(np.array(k), want)
    np.testing.assert_array_equal(np.array(v), -want)


def test_cached_decoding_and_left_padding_match_full_forward():
    cfg = tiny_model_config(norm="rmsnorm", mlp="relu2", tie_embeddings=False)
    be = _mlx(cfg)
    be.set_weights(perturbed_weights(cfg, seed=7))
    seq = random_tokens(cfg, batch=1, length=20, seed=8)
    cache = be.new_cache(1)
    got = [np.array(be.forward_last(seq[:, :12], cache))]
    for t in range(12, 20):
        got.append(np.array(be.forward_last(seq[:, t : t + 1], cache)))
    want = be.forward_logits(seq)[0, 11:]
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-5)
    # a left-padded row in a batch gives the logits it has alone
    short = random_tokens(cfg, batch=1, length=6, seed=9)
    batch = np.concatenate([seq[:, :10], np.concatenate([np.zeros((1, 4), np.int64), short], axis=1)])
    pad = np.array([0, 4])
    for c in (be.new_cache(2), None):
        out = np.array(be.forward_last(batch, c, pad))
        np.testing.assert_allclose(out[1], be.forward_logits(short)[0, -1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[0], be.forward_logits(seq[:, :10])[0, -1], rtol=1e-5, atol=1e-5)


def test_devices_and_dtypes():
    be = _mlx(tiny_model_config())
    assert be.device == "cpu" and be.describe() == "mlx on cpu"
    auto = create_backend(tiny_model_config(), "mlx", device="auto")
    assert auto.device == ("gpu" if mx.is_available(mx.gpu) else "cpu")
    with pytest.raises(UserError, match="torch device"):
        create_backend(tiny_model_config(), "mlx", device="cuda")
    with pytest.raises(UserError, match="torch device"):
        create_backend(tiny_model_config(), "mlx", device="mps")
    with pytest.raises(UserError, match="unknown device"):
        create_backend(tiny_model_config(), "mlx", device="tpu")
    if not mx.is_available(mx.gpu):
        with pytest.raises(UserError, match="no GPU"):
            create_backend(tiny_model_config(), "mlx", device="gpu")
    with pytest.raises(UserError, match="float32 only"):
        create_backend(tiny_model_config(), "mlx", device="cpu", dtype="bfloat16")
    with pytest.raises(UserError, match="unknown dtype"):
        create_backend(tiny_model_config(), "mlx", device="cpu", dtype="float8")
    assert create_backend(tiny_model_config(), "mlx", device="cpu", dtype="auto").dtype == "float32"


def test_auto_backend_picks_mlx_only_on_apple_silicon():
    from gptbench.backends.base import is_apple_silicon, resolve_backend_name

    assert resolve_backend_name("mlx") == "mlx"
    assert resolve_backend_name("auto") == ("mlx" if is_apple_silicon() else "torch")


def test_mlx_backend_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from gptbench.backends.base import create_backend\n"
        "from gptbench.backends.config import GPTConfig\n"
        "be = create_backend(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8), 'mlx', device='cpu')\n"
        "be.forward_logits(np.zeros((1, 4), dtype=np.int64))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("setting", ["auto", "/nonexistent/libcblas.so"])
def test_optional_cblas_preload_keeps_results(setting):
    """GPTBENCH_MLX_BLAS=auto uses the system OpenBLAS when there is one (else nothing);
    a bad path is ignored. Either way the logits still match the float64 reference."""
    code = (
        "import ctypes.util, sys, numpy as np\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from gptbench.backends import mlx_model\n"
        "from gptbench.backends.base import create_backend\n"
        "from conftest import tiny_model_config, random_tokens\n"
        "from reference_model import perturbed_weights, reference_logits\n"
        "want = ctypes.util.find_library('openblas') if sys.argv[2] == 'auto' else None\n"
        "assert mlx_model.BLAS == want, (mlx_model.BLAS, want)\n"
        "cfg = tiny_model_config(n_embd=64)\n"
        "be = create_backend(cfg, 'mlx', device='cpu'); w = perturbed_weights(cfg); be.set_weights(w)\n"
        "idx = random_tokens(cfg)\n"
        "np.testing.assert_allclose(be.forward_logits(idx), reference_logits(cfg, w, idx), rtol=1e-4, atol=1e-4)\n"
    )
    import os
    from pathlib import Path

    env = {**os.environ, "GPTBENCH_MLX_BLAS": setting}
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), setting], check=True, timeout=120, env=env)
