"""What only one framework has: devices and dtypes, torch.compile, the torch decode layout,
MLX's CBLAS preload, and the import boundaries between the frameworks. The shared
promises of every backend are in test_backend_contract.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptbench.backends.registry import create_backend
from gptbench.errors import UserError
from helpers import TORCH_TEST_DEVICE, optim_config, random_tokens, tiny_model_config
from reference_model import perturbed_weights


# ---- torch ------------------------------------------------------------------------------------
def test_torch_compile_keeps_canonical_names():
    cfg = tiny_model_config()
    be = create_backend(cfg, "torch", device=TORCH_TEST_DEVICE, compile=True)
    assert set(be.get_weights()) == set(cfg.canonical_shapes())
    assert not any("_orig_mod" in k for k in be.get_weights())


def test_torch_unknown_device_and_dtype_are_user_errors():
    import torch

    if torch.cuda.is_available():  # on a GPU machine (benchmarks/gpu.sh) cuda is simply taken
        assert create_backend(tiny_model_config(), "torch", device="cuda").device.startswith("cuda")
    else:
        with pytest.raises(UserError, match="CUDA is not available"):
            create_backend(tiny_model_config(), "torch", device="cuda")
    with pytest.raises(UserError, match="unknown dtype"):
        create_backend(tiny_model_config(), "torch", device="cpu", dtype="float8")
    with pytest.raises(UserError, match="unknown device"):
        create_backend(tiny_model_config(), "torch", device="tpu")


@pytest.mark.parametrize("onednn", [True, False], ids=["prepacked", "column-major"])
def test_torch_decode_kernels_keep_weights_logits_and_training_intact(onednn, monkeypatch):
    """CPU generation runs the linears on oneDNN-prepacked weights (or, without oneDNN,
    stores them column-major): the logits and greedy tokens are the plain model's, the
    weights are untouched, and a later training step is the one a fresh backend takes."""
    import torch

    from gptbench.backends.generate import generate_tokens
    from gptbench.backends.sampling import SamplingParams

    if not onednn:
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    monkeypatch.setattr("gptbench.backends.torch.decode.DECODE_LAYOUT_MIN_BYTES", 0)  # a tiny model uses it too
    cfg = tiny_model_config()
    a, b = (create_backend(cfg, "torch", device="cpu", seed=3) for _ in range(2))
    w = perturbed_weights(cfg, seed=5)
    a.set_weights(w)
    b.set_weights(w)
    prompt = random_tokens(cfg, 1, 12, seed=3)
    plain = b.forward_logits(prompt)[0, -1]
    before = a.get_weights()
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    fast = [int(t[0]) for t in generate_tokens(a, [list(prompt[0])], greedy)]
    assert a._decode_layout
    if onednn:
        assert "forward" in vars(a.model.h[0].mlp.c_fc)  # the instance runs the prepacked kernel
        assert "head" in vars(a.model)  # the tied head too
    else:
        wt = a.model.h[0].mlp.c_fc.weight
        assert wt.stride() == (1, wt.shape[0])
    np.testing.assert_allclose(np.asarray(a.forward_last(prompt, None)[0]), plain, rtol=1e-5, atol=1e-5)
    b._decode_layout = True  # as if done: `b` keeps the plain kernels, the reference
    slow = [int(t[0]) for t in generate_tokens(b, [list(prompt[0])], greedy)]
    assert "forward" not in vars(b.model.h[0].mlp.c_fc)
    assert fast == slow
    after = a.get_weights()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
        assert after[k].flags.c_contiguous, k
    # new weights after generating: the next decode runs on them (packed copies are redone)
    w2 = perturbed_weights(cfg, seed=6)
    a.set_weights(w2)
    b.set_weights(w2)
    b._decode_layout = True
    np.testing.assert_allclose(np.asarray(a.forward_last(prompt, None)[0]), np.asarray(b.forward_last(prompt, None)[0]),
                               rtol=1e-5, atol=1e-5)
    a.set_weights(w)
    b.set_weights(w)
    x, y = random_tokens(cfg, 2, 16, seed=1), random_tokens(cfg, 2, 16, seed=2)
    for be in (a, b):
        be.setup_optimizer(optim_config())
        be.train_step([(x, y)], 1e-3)
    assert "forward" not in vars(a.model.h[0].mlp.c_fc)  # training uses the plain modules
    wa, wb = a.get_weights(), b.get_weights()
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-6


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_model_that_fits_in_cache_decodes_on_its_plain_weights(backend):
    """Below DECODE_LAYOUT_MIN_BYTES the decode layouts cost more than they save (measured
    in the backends' comments): a small model keeps its row-major weights and plain kernels."""
    from gptbench.backends.generate import generate_tokens
    from gptbench.backends.sampling import SamplingParams

    cfg = tiny_model_config()
    be = create_backend(cfg, backend, device="cpu", seed=3)
    prompt = random_tokens(cfg, 1, 12, seed=3)
    tokens = list(generate_tokens(be, [list(prompt[0])], SamplingParams(temperature=0, max_new_tokens=5)))
    assert len(tokens) == 5
    assert be._decode_layout  # decided
    fc = be.model.h[0].mlp.c_fc
    if backend == "torch":
        assert "forward" not in vars(fc)
        assert fc.weight.stride() == (fc.weight.shape[1], 1)
    else:
        assert memoryview(fc.weight).strides == (4 * fc.weight.shape[1], 4)


# ---- MLX ----------------------------------------------------------------------------------------
def test_mlx_decode_layout_keeps_weights_logits_and_training_intact(monkeypatch):
    """An MLX backend that does not train decodes on column-major weights (mlx[cpu]'s
    one-row matmuls run faster on them): the logits and greedy tokens are the row-major
    model's, get_weights returns the same C-contiguous arrays, new weights are decoded
    correctly, and a later training step is the one a fresh backend takes."""
    from gptbench.backends.generate import generate_tokens
    from gptbench.backends.sampling import SamplingParams

    monkeypatch.setattr("gptbench.backends.mlx.decode.DECODE_LAYOUT_MIN_BYTES", 0)  # a tiny model uses it too
    cfg = tiny_model_config()
    a, b = (create_backend(cfg, "mlx", device="cpu", seed=3) for _ in range(2))
    w = perturbed_weights(cfg, seed=5)
    a.set_weights(w)
    b.set_weights(w)
    prompt = random_tokens(cfg, 1, 12, seed=3)
    before = a.get_weights()
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    fast = [int(t[0]) for t in generate_tokens(a, [list(prompt[0])], greedy)]
    fc = a.model.h[0].mlp.c_fc.weight
    assert memoryview(fc).strides == (4, 4 * fc.shape[0])  # column-major: [in, out] in memory
    assert memoryview(a.model.wte.weight).strides[0] == 4  # the tied head too
    b._decode_layout = True  # as if done: `b` keeps row-major weights, the reference
    slow = [int(t[0]) for t in generate_tokens(b, [list(prompt[0])], greedy)]
    assert memoryview(b.model.h[0].mlp.c_fc.weight).strides == (4 * fc.shape[1], 4)
    assert fast == slow
    np.testing.assert_allclose(np.asarray(a.forward_last(prompt, None)), np.asarray(b.forward_last(prompt, None)),
                               rtol=1e-5, atol=1e-5)
    after = a.get_weights()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
        assert after[k].flags.c_contiguous, k
    w2 = perturbed_weights(cfg, seed=6)  # new weights after generating: decoded as they are
    a.set_weights(w2)
    b.set_weights(w2)
    np.testing.assert_allclose(np.asarray(a.forward_last(prompt, None)), np.asarray(b.forward_last(prompt, None)),
                               rtol=1e-5, atol=1e-5)
    x, y = random_tokens(cfg, 2, 16, seed=1), random_tokens(cfg, 2, 16, seed=2)
    for be in (a, b):
        be.setup_optimizer(optim_config())
        be.train_step([(x, y)], 1e-3)
    assert memoryview(a.model.h[0].mlp.c_fc.weight).strides == (4 * fc.shape[1], 4)  # training runs row-major
    wa, wb = a.get_weights(), b.get_weights()
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-6


def test_mlx_devices_and_dtypes():
    import mlx.core as mx

    be = create_backend(tiny_model_config(), "mlx", device="cpu")
    assert be.device == "cpu"
    assert be.describe() == "mlx on cpu"
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


def test_compile_means_the_same_on_both_and_defaults_per_backend():
    """`compile` compiles the training step and evaluation on every backend; None takes
    the backend's default (MLX compiles, torch does not: torch.compile's warm-up costs more
    than it saves on small CPU runs)."""
    assert create_backend(tiny_model_config(), "mlx", device="cpu").compile is True
    assert create_backend(tiny_model_config(), "mlx", device="cpu", compile=False).compile is False
    assert create_backend(tiny_model_config(), "torch", device="cpu").compile is False
    cfg = tiny_model_config(norm="rmsnorm", mlp="swiglu")
    w = perturbed_weights(cfg, seed=3)
    x, y = random_tokens(cfg, seed=4), random_tokens(cfg, seed=5)
    losses = []
    for compiled in (False, True):
        be = create_backend(cfg, "mlx", device="cpu", compile=compiled)
        be.set_weights(w)
        be.setup_optimizer(optim_config())
        losses.append((be.eval_loss(x, y), be.train_step([(x, y)], 1e-3).loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_auto_backend_picks_mlx_only_on_apple_silicon():
    from gptbench.backends.registry import is_apple_silicon, resolve_backend_name

    assert resolve_backend_name("mlx") == "mlx"
    assert resolve_backend_name("auto") == ("mlx" if is_apple_silicon() else "torch")


def test_mlx_backend_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from gptbench.backends.registry import create_backend\n"
        "from gptbench.backends.spec import GPTConfig\n"
        "be = create_backend(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8), 'mlx', device='cpu')\n"
        "be.forward_logits(np.zeros((1, 4), dtype=np.int64))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("setting", ["auto", "off", "/nonexistent/libcblas.so"])
def test_cblas_preload_keeps_results(setting):
    """GPTBENCH_MLX_BLAS=auto (the default) uses the system OpenBLAS when there is one (else
    nothing); off keeps the reference BLAS; a bad path is ignored. Either way the logits
    still match the float64 reference."""
    code = (
        "import ctypes.util, sys, numpy as np\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from gptbench.backends.mlx import model as mlx_model\n"
        "from gptbench.backends.registry import create_backend\n"
        "from helpers import tiny_model_config, random_tokens\n"
        "from reference_model import perturbed_weights, reference_logits\n"
        "want = ctypes.util.find_library('openblas') if sys.argv[2] == 'auto' else None\n"
        "assert mlx_model.BLAS == want, (mlx_model.BLAS, want)\n"
        "cfg = tiny_model_config(n_embd=64)\n"
        "be = create_backend(cfg, 'mlx', device='cpu'); w = perturbed_weights(cfg); be.set_weights(w)\n"
        "idx = random_tokens(cfg)\n"
        "np.testing.assert_allclose(be.forward_logits(idx), reference_logits(cfg, w, idx), rtol=1e-4, atol=1e-4)\n"
    )
    env = {**os.environ, "GPTBENCH_MLX_BLAS": setting}
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), setting], check=True, timeout=120, env=env)


def test_reference_logits_helper_is_independent_of_the_backends():
    """The float64 reference never imports a framework (it is numpy only)."""
    code = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import reference_model\n"
        "assert 'torch' not in sys.modules and 'mlx' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], check=True, timeout=60)


def test_mlx_compiled_muon_sees_its_schedules():
    """MLX bakes Python numbers into a compiled step, so Muon's learning rate and warming-up
    momentum must reach it as arrays: compiled and eager steps agree step by step while
    both change (a frozen momentum differs by ~1e-3 after a few steps)."""
    from gptbench.backends.optim import MuonConfig

    cfg = tiny_model_config(pos="rope", qk_norm=True, mlp="relu2")
    w = perturbed_weights(cfg, seed=3)
    muon = MuonConfig(lr_ratio=20.0, momentum=0.95, momentum_warmup=4, weight_decay=0.1)
    runs = []
    for compiled in (False, True):
        be = create_backend(cfg, "mlx", device="cpu", compile=compiled)
        be.set_weights(w)
        be.setup_optimizer(optim_config(muon=muon))
        losses = [be.train_step([(random_tokens(cfg, seed=s), random_tokens(cfg, seed=s + 9))], lr).loss
                  for s, lr in enumerate([1e-3, 2e-3, 1.5e-3, 5e-4, 1e-3])]
        runs.append((losses, be.get_weights()))
    (la, wa), (lb, wb) = runs
    assert la == pytest.approx(lb, rel=1e-5)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=1e-5, err_msg=k)
