"""The safetensors weights format: round trips, self-description, and every failure."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from helpers import tiny_model_config
from reference_model import perturbed_weights
from gptbench.backends.weights import WeightsError, load_weights, read_config, save_tensors, save_weights


def test_round_trip_is_exact_and_self_describing(tmp_path):
    cfg = tiny_model_config(mlp="swiglu", norm="rmsnorm", tie_embeddings=False)
    w = perturbed_weights(cfg)
    p = tmp_path / "m.safetensors"
    save_weights(p, cfg, w)
    assert read_config(p) == cfg
    cfg2, w2 = load_weights(p)
    assert cfg2 == cfg
    assert all(np.array_equal(w[k], w2[k]) for k in w)
    # the file is plain safetensors: the reference library reads it
    ref = safetensors.numpy.load_file(str(p))
    assert set(ref) == set(w)
    assert np.array_equal(ref["wte.weight"], w["wte.weight"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_bf16_tensors_widen_to_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    t = torch.tensor([1.5, -2.25, 3.0e-3], dtype=torch.bfloat16)
    p = tmp_path / "b.safetensors"
    save_file({"x": t}, str(p))
    from gptbench.backends.weights import load_tensors

    got, _ = load_tensors(p)
    np.testing.assert_array_equal(got["x"], t.float().numpy())


def test_mismatched_tensors_are_listed(tmp_path):
    cfg = tiny_model_config()
    w = perturbed_weights(cfg)
    w["h.0.attn.c_attn.weight"] = w["h.0.attn.c_attn.weight"][:, :16]
    del w["ln_f.weight"]
    w["extra.weight"] = np.zeros(3, np.float32)
    p = tmp_path / "bad.safetensors"
    save_tensors(p, w, {"format": "gptbench", "format_version": "1", "config": cfg.to_json()})
    with pytest.raises(WeightsError) as exc:
        load_weights(p)
    msg = str(exc.value)
    assert "missing ln_f.weight" in msg
    assert "unexpected extra.weight" in msg
    assert "h.0.attn.c_attn.weight has shape [96, 16], config needs [96, 32]" in msg


def test_truncated_file(tmp_path):
    cfg = tiny_model_config()
    p = tmp_path / "t.safetensors"
    save_weights(p, cfg, perturbed_weights(cfg))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="is truncated"):
        load_weights(p)
    p.write_bytes(data[:5])
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_weights(p)


def test_foreign_safetensors_file(tmp_path):
    p = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(p))
    with pytest.raises(WeightsError, match="not a gptbench weights file"):
        load_weights(p)


def test_garbage_and_missing(tmp_path):
    p = tmp_path / "g.safetensors"
    p.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 10)
    with pytest.raises(WeightsError, match="unreadable header"):
        load_weights(p)
    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights(tmp_path / "nope.safetensors")


def test_save_is_atomic_on_failure(tmp_path):
    cfg = tiny_model_config()
    p = tmp_path / "keep.safetensors"
    save_weights(p, cfg, perturbed_weights(cfg))
    before = p.read_bytes()
    bad = perturbed_weights(cfg)
    bad["wte.weight"] = bad["wte.weight"].astype(np.complex64)  # unsaveable
    with pytest.raises(WeightsError):
        save_tensors(p, bad, {"config": json.dumps({})})
    assert p.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


# ---- against the reference implementation (the `safetensors` package, test-only) ------------
def test_files_interoperate_with_the_safetensors_package(tmp_path):
    """gptbench's own reader and writer (weights.py) agree with Hugging Face's `safetensors`
    both ways, metadata and bfloat16 included."""
    import torch
    from safetensors.numpy import load_file, save_file
    from safetensors.torch import save_file as save_torch

    from gptbench.backends.weights import load_tensors, save_tensors

    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float16),
               "ids": np.arange(4, dtype=np.int64)}
    save_tensors(tmp_path / "ours.safetensors", tensors, {"k": "v"})
    theirs = load_file(tmp_path / "ours.safetensors")
    assert set(theirs) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(theirs[k], tensors[k])
        assert theirs[k].dtype == tensors[k].dtype
    save_file(tensors, tmp_path / "theirs.safetensors", metadata={"k": "v"})
    back, meta = load_tensors(tmp_path / "theirs.safetensors")
    assert meta == {"k": "v"}
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])
    bf = torch.randn(4, 6).to(torch.bfloat16)
    save_torch({"w": bf}, tmp_path / "bf16.safetensors")
    np.testing.assert_array_equal(load_tensors(tmp_path / "bf16.safetensors")[0]["w"], bf.float().numpy())
    save_tensors(tmp_path / "ours-bf16.safetensors", {"w": bf.float().numpy()}, dtype="bfloat16")
    from safetensors.torch import load_file as load_torch

    assert torch.equal(load_torch(tmp_path / "ours-bf16.safetensors")["w"], bf)
