"""`gptbench convert` through the CLI: runs, weights files and Hugging Face GPT-2 folders,
checked against transformers' own GPT2LMHeadModel on identical weights. Nothing is
downloaded: Hugging Face models are built locally and saved with save_pretrained."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from helpers import GPT2_RANKS, random_tokens, tiny_model_config
from reference_model import perturbed_weights
from gptbench.backends.registry import create_backend
from gptbench.backends.weights import load_weights, read_header, save_tensors, save_weights
from gptbench.cli import main
from gptbench.backends.weights import bf16_bits


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["convert", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def logits_on(backend: str, path, idx) -> np.ndarray:
    cfg, tensors = load_weights(path)
    be = create_backend(cfg, backend, device="cpu")
    be.set_weights(tensors)
    return be.forward_logits(idx)


def gpt2_weights_file(tmp_path, tied=True, name="src.safetensors", vocab_size=67):
    """A GPT-2-variant model (layernorm, gelu, bias) with varied random weights."""
    cfg = tiny_model_config(bias=True, tie_embeddings=tied, block_size=64, vocab_size=vocab_size)
    path = tmp_path / name
    save_weights(path, cfg, perturbed_weights(cfg, seed=1, scale=1.0))
    return cfg, path


def leftovers(folder) -> list[str]:
    """Staging files or folders a failed conversion might have left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---- gptbench -> gptbench -----------------------------------------------------------------
def test_run_to_weights_file_loads_identically_on_both_backends(trained_run, tmp_path, capsys):
    dst = tmp_path / "out.safetensors"
    rc, out, err = cli(capsys, trained_run.name, str(dst), "--to", "mlx", "--checkpoint", "last", "--runs-dir", str(trained_run.path.parent))
    assert rc == 0, err
    assert "verified on mlx on cpu: max |logit difference| vs source = 0 " in out
    src_cfg, src = load_weights(trained_run.checkpoint("last").path)
    cfg, got = load_weights(dst)
    assert cfg == src_cfg
    assert set(got) == set(src)
    assert all(np.array_equal(got[k], src[k]) for k in src)
    idx = random_tokens(cfg, seed=3)
    np.testing.assert_allclose(logits_on("mlx", dst, idx), logits_on("torch", trained_run.checkpoint("last").path, idx), atol=1e-4)
    assert read_header(dst)[1]["converted_from"] == f"{trained_run.name}@step-{trained_run.checkpoint('last').step}"


@pytest.mark.parametrize("dtype,st,itemsize", [("float16", "F16", 2), ("bfloat16", "BF16", 2), ("float32", "F32", 4)])
def test_dtype_is_written_and_widened_on_load(dtype, st, itemsize, tmp_path, capsys):
    cfg, src = gpt2_weights_file(tmp_path)
    dst = tmp_path / f"{dtype}.safetensors"
    rc, out, err = cli(capsys, str(src), str(dst), "--dtype", dtype, "--to", "torch")
    assert rc == 0, err
    header, meta, _ = read_header(dst)
    assert {e["dtype"] for e in header.values()} == {st}
    assert meta["format"] == "gptbench"
    assert meta["dtype"] == dtype
    _, w = load_weights(src)
    _, got = load_weights(dst)
    import torch

    tdtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    for name, arr in w.items():  # exactly torch's own rounding, then widened back to float32
        want = torch.from_numpy(arr).to(tdtype).float().numpy()
        np.testing.assert_array_equal(np.asarray(got[name], dtype=np.float32), want, err_msg=name)
    n_values = sum(a.size for a in w.values())
    assert dst.stat().st_size == pytest.approx(n_values * itemsize, rel=0.05)
    diff = float(out.split("vs source = ")[1].split()[0])
    assert (diff == 0) == (dtype == "float32")


def test_bf16_rounding_matches_torch_bit_for_bit():
    import torch

    x = np.concatenate([
        np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 10,
        np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38, 1e-40, np.inf, -np.inf], dtype=np.float32),
    ])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), want)
    assert np.isnan((bf16_bits(np.array([np.nan], np.float32)).astype(np.uint32) << 16).view(np.float32)).all()


def test_run_to_run_keeps_the_tokenizer_and_samples(trained_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    import shutil

    shutil.copytree(trained_run.path, runs / "orig")
    rc, out, err = cli(capsys, "orig", "copy", "--runs-dir", str(runs), "--dtype", "bfloat16")
    assert rc == 0, err
    assert "try: gptbench sample --run copy" in out
    from gptbench.runstore import RunStore

    run = RunStore(runs).existing("copy")
    assert run.status()["state"] == "finished"
    assert run.config()["converted_from"]["source"].startswith("orig@step-")
    assert main(["sample", "--run", "copy", "--runs-dir", str(runs), "--temperature", "0", "--max-new-tokens", "20", "--prompt", "ROMEO:"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:")
    assert len(text.strip()) > len("ROMEO:")


def test_json_output(tmp_path, capsys):
    _, src = gpt2_weights_file(tmp_path)
    rc, out, _ = cli(capsys, str(src), str(tmp_path / "o.safetensors"), "--json", "--to", "mlx")
    assert rc == 0
    rec = json.loads(out)
    assert rec["source_kind"] == "weights"
    assert rec["to"] == "mlx"
    assert rec["max_logit_diff"] == 0.0
    assert rec["verified_on"] == "mlx on cpu"
    assert rec["tensors"] == len(load_weights(src)[1])


# ---- Hugging Face ----------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_hf_export_loads_in_transformers_with_matching_logits(tied, tmp_path, capsys):
    import torch
    from transformers import GPT2LMHeadModel

    cfg, src = gpt2_weights_file(tmp_path, tied=tied)
    folder = tmp_path / "hf"
    rc, out, err = cli(capsys, str(src), str(folder), "--to", "hf")
    assert rc == 0, err
    # a weights file has no tokenizer: the model files only, and a note saying so
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert "note: no tokenizer files written" in out
    header, meta, _ = read_header(folder / "model.safetensors")
    assert meta == {"format": "pt"}
    assert ("lm_head.weight" in header) == (not tied)
    assert not any(k.startswith("transformer.") for k in header)  # the hub's GPT2Model layout
    assert header["h.0.mlp.c_fc.weight"]["shape"] == [cfg.n_embd, cfg.mlp_hidden]  # Conv1D [in, out]
    hf_config = json.loads((folder / "config.json").read_text())
    assert hf_config["n_ctx"] == hf_config["n_positions"] == cfg.block_size
    assert hf_config["eos_token_id"] is None  # no tokenizer, no end-of-text
    model, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    model.eval()
    assert {k: v for k, v in info.items() if v} == {}  # nothing missing, unexpected or mismatched
    assert model.config.tie_word_embeddings == tied
    idx = random_tokens(cfg, batch=2, length=cfg.block_size, seed=4)
    with torch.no_grad():
        want = model(torch.from_numpy(idx)).logits.numpy()
    got = logits_on("torch", src, idx)
    assert np.std(want) > 0.3
    np.testing.assert_allclose(want, got, rtol=1e-4, atol=1e-4 * np.abs(got).max())


def _hf_model(vocab_size=50257, seed=0):
    """A locally built GPT-2 with weights scaled up so its output is far from uniform."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_hf_import_to_run_matches_transformers_and_samples(tmp_path, capsys):
    import torch

    assert GPT2_RANKS.is_file()
    model = _hf_model()
    model.save_pretrained(tmp_path / "hf")
    runs = tmp_path / "runs"
    rc, out, err = cli(capsys, str(tmp_path / "hf"), "gpt2-tiny", "--runs-dir", str(runs))
    assert rc == 0, err
    assert "(hf)" in out
    assert "wrote" in out
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    loaded = load_model(RunStore(runs), run="gpt2-tiny", backend="torch", device="cpu")
    assert loaded.tokenizer.spec == "gpt2"
    idx = random_tokens(loaded.backend.config, batch=2, length=64, seed=5)
    with torch.no_grad():
        want = model(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(loaded.backend.forward_logits(idx), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # greedy continuation equals transformers' generate on both backends
    prompt = loaded.tokenizer.encode("Hello world")
    with torch.no_grad():
        hf_out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=50256)[0, len(prompt):].tolist()
    assert len(set(hf_out)) > 3
    for backend in ("torch", "mlx"):
        lm = load_model(RunStore(runs), run="gpt2-tiny", backend=backend, device="cpu")
        res = generate(lm.backend, lm.tokenizer, prompt, SamplingParams(temperature=0, max_new_tokens=20))
        assert res.tokens == hf_out, backend
    assert main(["sample", "--run", "gpt2-tiny", "--runs-dir", str(runs), "--backend", "mlx", "--temperature", "0", "--max-new-tokens", "5", "--prompt", "Hello"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_hf_import_handles_legacy_names_buffers_and_shards(tmp_path, capsys):
    """The hub's original gpt2 checkpoint has unprefixed names and attention buffers
    (h.N.attn.bias, h.N.attn.masked_bias); big models come sharded with an index."""
    model = _hf_model(vocab_size=97, seed=1)
    model.save_pretrained(tmp_path / "modern")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    from gptbench.backends.weights import load_tensors

    modern, _ = load_tensors(tmp_path / "modern" / "model.safetensors")
    legacy = {k.removeprefix("transformer."): v for k, v in modern.items()}
    for i in range(2):
        legacy[f"h.{i}.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
        legacy[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    legacy["lm_head.weight"] = legacy["wte.weight"]
    (tmp_path / "legacy").mkdir()
    save_tensors(tmp_path / "legacy" / "model.safetensors", legacy, {"format": "pt"})
    (tmp_path / "legacy" / "config.json").write_text((tmp_path / "modern" / "config.json").read_text())
    outs = {}
    for name in ("modern", "sharded", "legacy"):
        rc, _, err = cli(capsys, str(tmp_path / name), str(tmp_path / f"{name}.safetensors"))
        assert rc == 0, (name, err)
        outs[name] = load_weights(tmp_path / f"{name}.safetensors")[1]
    for name in ("sharded", "legacy"):
        assert set(outs[name]) == set(outs["modern"])
        assert all(np.array_equal(outs[name][k], outs["modern"][k]) for k in outs["modern"])


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------
def _mismatched(tmp_path):
    cfg = tiny_model_config()
    w = perturbed_weights(cfg)
    w["h.0.attn.c_attn.weight"] = w["h.0.attn.c_attn.weight"][:, :16]
    from gptbench.backends.weights import weights_metadata

    p = tmp_path / "bad.safetensors"
    save_tensors(p, w, weights_metadata(cfg))
    return p


def _foreign(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_tensors(p, {"encoder.layer.0.weight": np.zeros((4, 4), np.float32)})
    return p


def _truncated(tmp_path):
    cfg, p = gpt2_weights_file(tmp_path, name="full.safetensors")
    out = tmp_path / "truncated.safetensors"
    out.write_bytes(p.read_bytes()[:-1000])
    return out


def _fp8(tmp_path):
    header = {"x": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]},
              "__metadata__": {"format": "gptbench", "format_version": "1", "config": tiny_model_config().to_json()}}
    raw = json.dumps(header).encode()
    p = tmp_path / "fp8.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    return p


def _llama(tmp_path):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    save_tensors(d / "model.safetensors", {"model.embed_tokens.weight": np.zeros((8, 4), np.float32)})
    return d


def _hf_bare_file(tmp_path):
    p = tmp_path / "model.safetensors"
    save_tensors(p, {"wte.weight": np.zeros((8, 4), np.float32), "h.0.attn.c_attn.weight": np.zeros((4, 12), np.float32)}, {"format": "pt"})
    return p


def _hf_bin_only(tmp_path):
    d = tmp_path / "binonly"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 8, "vocab_size": 10}))
    (d / "pytorch_model.bin").write_bytes(b"not really")
    return d


def _rmsnorm_run_weights(tmp_path):
    cfg = tiny_model_config(norm="rmsnorm", mlp="swiglu", bias=False)
    p = tmp_path / "llamaish.safetensors"
    save_weights(p, cfg, perturbed_weights(cfg))
    return p


def _modern_weights(tmp_path):
    cfg = tiny_model_config(pos="rope", qk_norm=True, logit_softcap=15.0)  # GPT-2's norm, MLP and biases otherwise
    p = tmp_path / "modern.safetensors"
    save_weights(p, cfg, perturbed_weights(cfg))
    return p


BAD = [
    ("mismatched tensors", _mismatched, [], "h.0.attn.c_attn.weight has shape [96, 16], config needs [96, 32]"),
    ("non-GPT safetensors", _foreign, [], "is not a gptbench weights file"),
    ("truncated file", _truncated, [], "is truncated"),
    ("fp8 tensor", _fp8, [], "unsupported dtype F8_E4M3"),
    ("unknown dtype", _foreign, ["--dtype", "float8"], "unknown --dtype 'float8'; choose one of float32, float16, bfloat16"),
    ("unknown target", _foreign, ["--to", "onnx"], "unknown --to 'onnx'"),
    ("llama folder", _llama, [], "describes a 'llama' model; only Hugging Face GPT-2"),
    ("bare HF tensors", _hf_bare_file, [], "Hugging Face GPT-2 tensors but no config"),
    ("pytorch_model.bin only", _hf_bin_only, [], "has only pytorch_model.bin"),
    ("variant without an HF layout", _rmsnorm_run_weights, ["--to", "hf"], "not GPT-2's architecture (norm=rmsnorm, mlp=swiglu, bias=False;"),
    ("today's recipe to HF", _modern_weights, ["--to", "hf"], "not GPT-2's architecture (pos=rope, qk_norm=True, logit_softcap=15;"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("dst_name", ["out.safetensors", "out-run", "out-hf"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, dst_name, tmp_path, capsys):
    _, make, extra, fragment = case
    src = make(tmp_path)
    runs = tmp_path / "runs"
    if dst_name == "out-hf" and "--to" not in extra:
        extra = [*extra, "--to", "hf"]
    dst = tmp_path / dst_name if dst_name != "out-run" else "out-run"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = cli(capsys, str(src), str(dst), "--runs-dir", str(runs), *extra)
    assert rc == 2
    assert err.count("\n") == 1
    assert err.startswith("gptbench: error: ")
    assert "Traceback" not in err
    assert fragment in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left over
    assert not runs.exists() or not any(runs.iterdir())


def test_missing_source_and_bad_destination(tmp_path, capsys):
    rc, _, err = cli(capsys, "no-such-run", str(tmp_path / "x.safetensors"), "--runs-dir", str(tmp_path))
    assert rc == 2
    assert "no run named 'no-such-run'" in err
    rc, _, err = cli(capsys, str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors"))
    assert rc == 2
    assert "weights file not found" in err
    _, src = gpt2_weights_file(tmp_path)
    rc, _, err = cli(capsys, str(src), str(tmp_path / "sub" / "name"), "--tokenizer", "byte")
    assert rc == 2
    assert "neither a run name nor a .safetensors file" in err
    rc, _, err = cli(capsys, str(src), "newrun", "--runs-dir", str(tmp_path / "runs"))
    assert rc == 2
    assert "needs a tokenizer: pass --tokenizer" in err
    rc, _, err = cli(capsys, str(src), "newrun", "--runs-dir", str(tmp_path / "runs"), "--tokenizer", "byte")
    assert rc == 2
    assert "tokenizer byte has 256 tokens but the model only 67" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert leftovers(tmp_path) == []


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    _, src = gpt2_weights_file(tmp_path)
    for dst, extra in ((tmp_path / "o.safetensors", []), (tmp_path / "hf", ["--to", "hf"])):
        assert cli(capsys, str(src), str(dst), *extra)[0] == 0
        stamp = dst.stat().st_mtime_ns
        rc, _, err = cli(capsys, str(src), str(dst), *extra)
        assert rc == 2
        assert "already exists; pass --force" in err
        assert dst.stat().st_mtime_ns == stamp
        rc, _, err = cli(capsys, str(src), str(dst), "--force", "--dtype", "float16", *extra)
        assert rc == 0, err
    assert read_header(tmp_path / "o.safetensors")[1]["dtype"] == "float16"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "float16"
    assert leftovers(tmp_path) == []


def test_failed_verification_leaves_nothing(tmp_path, capsys, monkeypatch):
    import gptbench.roundtrip as roundtrip

    monkeypatch.setitem(roundtrip.TOLERANCE, "bfloat16", 0.0)
    _, src = gpt2_weights_file(tmp_path, vocab_size=256)
    for dst, extra in ((tmp_path / "o.safetensors", []), (tmp_path / "hf", ["--to", "hf"]), ("r", ["--tokenizer", "byte"])):
        rc, _, err = cli(capsys, str(src), str(dst), "--dtype", "bfloat16", "--runs-dir", str(tmp_path / "runs"), *extra)
        assert rc == 2, err
        assert "verification failed" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "src.safetensors"]
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("to", ["mlx", "torch"])
def test_modern_recipe_converts_between_backends(to, tmp_path, capsys):
    """A rope / QK-norm / soft-capped model (no position table) converts like any other:
    same tensors, same config, verified logits."""
    src = _modern_weights(tmp_path)
    dst = tmp_path / f"to-{to}.safetensors"
    rc, out, err = cli(capsys, str(src), str(dst), "--to", to)
    assert rc == 0, err
    assert f"verified on {to} on cpu" in out
    src_cfg, src_w = load_weights(src)
    cfg, got = load_weights(dst)
    assert cfg == src_cfg
    assert "wpe.weight" not in got
    assert set(got) == set(src_w)
    idx = random_tokens(cfg, seed=4)
    np.testing.assert_allclose(logits_on("mlx", dst, idx), logits_on("torch", src, idx), rtol=0, atol=1e-4)
