"""LoRA runs: a frozen base, adapters alone in the optimizer and the checkpoints, exact
resume, merged exports equal to the unmerged model, sampling and chat on an unmerged run,
and a base that moved or changed refused in one line."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys

import numpy as np
import pytest

from helpers import GPT2_RANKS, save_hf_gpt2
from gptbench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--lr", "3e-2", "--batch-size", "2", "--grad-accum", "2", "--eval-iters", "2",
        "--eval-interval", "2", "--log-interval", "1", "--sample-tokens", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "hf"
    save_hf_gpt2(folder)
    return folder


def train(capsys, runs, *args: str) -> tuple[int, str]:
    rc = main(["train", "--no-ui", "--runs-dir", str(runs), *args])
    return rc, capsys.readouterr().err


def train_losses(run_path) -> list[float]:
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


@pytest.fixture(scope="module")
def lora_run(base_folder, corpus_file, tmp_path_factory):
    """A finished 4-step LoRA run on torch (read-only; copy it to change it)."""
    runs = tmp_path_factory.mktemp("lora-runs")
    mp = pytest.MonkeyPatch()  # module scope: conftest's per-test isolation is not active yet
    mp.setenv("GPTBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gptbench-cache"))
    mp.setenv("GPTBENCH_GPT2_RANKS", str(GPT2_RANKS))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        assert main(["train", "--no-ui", "--runs-dir", str(runs), "--init-from", str(base_folder), "--data", str(corpus_file),
                     "--name", "lo", "--max-iters", "4", *LORA]) == 0
    finally:
        mp.undo()
    return runs / "lo"


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_only_adapters_train_and_resume_is_exact(backend, base_folder, corpus_file, tmp_path, capsys, pinned_torch_threads):
    """A library run of 4 steps == a CLI run of 2 resumed to 4, bit for bit (one torch
    thread for both: the CLI's thread policy may otherwise change the count)."""
    from gptbench.backends.hf import load_hf_folder
    from gptbench.backends.lora import LoRAConfig
    from gptbench.backends.weights import load_tensors, read_header
    from helpers import resolve_config
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    runs = tmp_path / "runs"
    flags = {"rank": 4, "alpha": 8.0}
    cfg = resolve_config(None, None, {}, {"max_iters": 4, "lr": 3e-2, "batch_size": 2, "grad_accum": 2, "eval_iters": 2,
                                                "eval_interval": 2, "log_interval": 1, "sample_tokens": 0},
                             {"init_from": str(base_folder), "data": str(corpus_file), "backend": backend, "device": "cpu", "name": "a"}, flags)
    trainer = Trainer.new_run(RunStore(runs), cfg)
    trainer.fit()
    _, base, _ = load_hf_folder(base_folder)
    after = trainer.backend.get_weights()
    for name, arr in base.items():  # the base is byte-identical after training
        assert after[name].tobytes() == arr.tobytes(), name
    lora = LoRAConfig(4, 8.0)
    shapes = lora.adapter_shapes(trainer.model_cfg)
    adapters = trainer.backend.get_adapters()
    assert set(adapters) == set(shapes)
    assert all(np.abs(adapters[n]).max() > 0 for n in shapes if n.endswith("lora_b"))  # B left zero: it trained
    want_state = {f"{m}.{n}" for n in shapes for m in ("exp_avg", "exp_avg_sq")}
    assert set(trainer.backend.optimizer_state_shapes()) == want_state

    ck = runs / "a" / "checkpoints" / "step-4.safetensors"
    header, meta, _ = read_header(ck)
    assert set(header) == set(shapes)  # adapters only, no base weights
    base_ref = json.loads(meta["base"])
    assert base_ref["sha256"] == hashlib.sha256((base_folder / "model.safetensors").read_bytes()).hexdigest()
    assert base_ref["path"] == str(base_folder.resolve())
    assert json.loads(meta["lora"]) == lora.to_dict()
    state, _ = load_tensors(ck.with_name("step-4.state.safetensors"))
    assert {k for k in state if not k.startswith("rng.")} == want_state
    saved = json.loads((runs / "a" / "config.json").read_text())
    assert saved["lora"] == lora.to_dict()
    assert saved["trainable_params"] == lora.num_params(trainer.model_cfg) == sum(int(np.prod(s)) for s in shapes.values())

    # stopped at 2 and resumed to 4 (through the CLI): the same losses, the same adapters
    rc, err = train(capsys, runs, "--init-from", str(base_folder), "--data", str(corpus_file), "--name", "b", "--backend", backend,
                    "--max-iters", "2", *LORA)
    assert rc == 0, err
    rc, err = train(capsys, runs, "--resume", "b", "--max-iters", "4")
    assert rc == 0, err
    assert train_losses(runs / "b") == train_losses(runs / "a")
    got, _ = load_tensors(runs / "b" / "checkpoints" / "step-4.safetensors")
    for name in shapes:
        np.testing.assert_array_equal(got[name], adapters[name], err_msg=name)


def test_merged_exports_equal_the_unmerged_model(lora_run, tmp_path, capsys):
    import torch
    from transformers import GPT2LMHeadModel

    from gptbench.backends.registry import create_backend
    from gptbench.backends.weights import load_weights
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    unmerged = load_model(RunStore(lora_run.parent), run=lora_run.name, checkpoint="last", backend="torch", device="cpu")
    assert unmerged.backend.lora is not None  # sampled as trained: base + adapters
    idx = np.random.default_rng(0).integers(0, 50257, size=(2, 64))
    want = unmerged.backend.forward_logits(idx)

    args = ["convert", lora_run.name, "--checkpoint", "last", "--runs-dir", str(lora_run.parent)]
    assert main([*args[:2], str(tmp_path / "merged.safetensors"), *args[2:], "--to", "torch"]) == 0
    cfg, merged = load_weights(tmp_path / "merged.safetensors")
    be = create_backend(cfg, "torch", device="cpu")
    be.set_weights(merged)
    assert np.abs(be.forward_logits(idx) - want).max() <= 1e-5

    assert main([*args[:2], str(tmp_path / "hf"), *args[2:], "--to", "hf"]) == 0
    capsys.readouterr()
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        got = model(torch.from_numpy(idx)).logits.numpy()
    assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()
    assert np.abs(want).max() > 1.0  # not trivially small logits


def test_sample_and_chat_work_on_the_unmerged_run(lora_run, tmp_path, capsys, monkeypatch):
    from gptbench.backends.registry import create_backend
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.modelweights import load_checkpoint
    from gptbench.tokenizers.registry import load_tokenizer

    ck = max((lora_run / "checkpoints").glob("step-*[0-9].safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    stored = load_checkpoint(ck)
    merged = create_backend(stored.config, "torch", device="cpu")
    merged.set_weights(stored.merged())
    tok = load_tokenizer(lora_run)
    prompt = tok.encode("ROMEO: line")
    reply = generate(merged, tok, prompt, SamplingParams(temperature=0, max_new_tokens=12))
    assert len(set(reply.tokens)) > 1  # not one token repeated: a comparison that can fail

    runs = str(lora_run.parent)
    assert main(["sample", "--run", "lo", "--checkpoint", "last", "--runs-dir", runs, "--prompt", "ROMEO: line",
                 "--temperature", "0", "--max-new-tokens", "12", "--no-stream"]) == 0
    assert capsys.readouterr().out == "ROMEO: line" + reply.text + "\n"

    monkeypatch.setattr(sys, "stdin", io.StringIO("ROMEO: line\n"))
    assert main(["chat", "--run", "lo", "--checkpoint", "last", "--runs-dir", runs, "--temperature", "0", "--max-new-tokens", "12"]) == 0
    chat_prompt = tok.encode("ROMEO: line\n")
    chat_reply = generate(merged, tok, chat_prompt, SamplingParams(temperature=0, max_new_tokens=12))
    assert "> " + chat_reply.text in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["moved", "changed"])
def test_a_missing_or_changed_base_is_one_line(damage, base_folder, lora_run, tmp_path, capsys):
    from gptbench.backends.weights import load_tensors, save_tensors

    runs = tmp_path / "runs"
    base = tmp_path / "hf"
    shutil.copytree(base_folder, base)
    rc, err = train(capsys, runs, "--init-from", str(base), "--data", _corpus(lora_run), "--name", "lo", "--max-iters", "2", *LORA)
    assert rc == 0, err
    if damage == "moved":
        shutil.move(base, tmp_path / "elsewhere")
        fragment = f"whose weights are gone from {base.resolve()}"
    else:
        tensors, meta = load_tensors(base / "model.safetensors")
        tensors["transformer.wte.weight"][0, 0] += 1.0
        save_tensors(base / "model.safetensors", tensors, meta)
        fragment = "changed since (sha256 "
    for args in (["sample", "--run", "lo", "--max-new-tokens", "2"], ["convert", "lo", str(tmp_path / "out.safetensors")],
                 ["train", "--no-ui", "--resume", "lo", "--max-iters", "3"]):
        rc = main([*args, "--runs-dir", str(runs)])
        err = capsys.readouterr().err
        assert rc == 2, args
        assert err.count("\n") == 1, err
        assert fragment in err, err
    assert not (tmp_path / "out.safetensors").exists()


def _corpus(run_path):
    return json.loads((run_path / "config.json").read_text())["data"]["spec"]


def test_resume_refuses_optimizer_state_for_the_base(lora_run, tmp_path, capsys):
    """The checkpoint reader checks a LoRA run's state against the backend's shapes, which
    name the adapters only: moments for a base weight are refused, in one line."""
    from gptbench.backends.weights import load_tensors, save_tensors

    runs = tmp_path / "runs"
    shutil.copytree(lora_run, runs / "lo")
    state = runs / "lo" / "checkpoints" / "step-4.state.safetensors"
    tensors, meta = load_tensors(state)
    tensors["exp_avg.wte.weight"] = np.zeros((50257, 32), np.float32)
    save_tensors(state, tensors, meta)
    rc, err = train(capsys, runs, "--resume", "lo", "--max-iters", "6")
    assert rc == 2
    assert "unexpected optimizer moments exp_avg.wte.weight" in err
