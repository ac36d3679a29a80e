"""`gptbench train --init-from`: fine-tuning from a Hugging Face GPT-2 folder, a hub name in
the local cache, a weights file or another run; lineage; the finetune preset; bad input.

A GPT-2 made by transformers itself (GPT2LMHeadModel(GPT2Config(...)).save_pretrained) stands
in for pretrained weights; nothing is downloaded (HF_HUB_OFFLINE=1 in conftest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURE_TEXT, GPT2_RANKS, save_hf_gpt2
from gptbench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--batch-size", "2", "--grad-accum", "2", "--eval-iters", "2", "--eval-interval", "2", "--log-interval", "1",
         "--sample-tokens", "0", "--lr", "1e-3"]


def train(capsys, runs, *args: str) -> tuple[int, str]:
    rc = main(["train", "--no-ui", "--runs-dir", str(runs), *args])
    return rc, capsys.readouterr().err


def records(run_path, kind="train") -> list[dict]:
    return [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines() if json.loads(line)["type"] == kind]


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("prefixed", [True, False], ids=["save_pretrained", "hub-layout"])
def test_first_loss_equals_transformers_and_resume_is_exact(prefixed, tmp_path, corpus_file, capsys):
    import torch
    import torch.nn.functional as F

    from gptbench.data import get_batch, prepare_data
    from gptbench.tokenizers.gpt2 import load_gpt2

    model = save_hf_gpt2(tmp_path / "hf", prefixed=prefixed)
    runs = tmp_path / "runs"
    rc, err = train(capsys, runs, "--init-from", str(tmp_path / "hf"), "--data", str(corpus_file), "--name", "a", "--max-iters", "4", *SMALL)
    assert rc == 0, err
    cfg = json.loads((runs / "a" / "config.json").read_text())
    assert cfg["init_from"]["kind"] == "hf"
    assert cfg["init_from"]["sha256"] == sha256_of(tmp_path / "hf" / "model.safetensors")
    assert cfg["preset"] == "finetune"
    assert cfg["train"]["decay_lr"] is False
    assert cfg["tokenizer"]["spec"] == "gpt2"  # a 50257-token GPT-2 folder without tokenizer files
    assert (cfg["model"]["n_embd"], cfg["model"]["block_size"], cfg["model"]["vocab_size"]) == (32, 64, 50257)

    # The first logged loss is the mean loss of step 0's micro-batches under the source
    # weights: recompute it with transformers on the same batches.
    data = prepare_data(str(corpus_file), "gpt2", block_size=64, val_fraction=0.1, tokenizer=load_gpt2(GPT2_RANKS))
    rng = np.random.default_rng(cfg["train"]["seed"])
    losses = []
    with torch.no_grad():
        for _ in range(2):
            x, y = get_batch(data.train, 2, 64, rng)
            logits = model(torch.from_numpy(np.asarray(x, dtype=np.int64))).logits
            losses.append(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(np.asarray(y, dtype=np.int64)).reshape(-1))))
    first = records(runs / "a")[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(np.mean(losses), rel=1e-5)

    # Stopped at step 2 and resumed to 4: the same losses and bit-identical weights.
    assert train(capsys, runs, "--init-from", str(tmp_path / "hf"), "--data", str(corpus_file), "--name", "b", "--max-iters", "2", *SMALL)[0] == 0
    rc, err = train(capsys, runs, "--resume", "b", "--max-iters", "4")
    assert rc == 0, err
    assert [r["loss"] for r in records(runs / "b")] == [r["loss"] for r in records(runs / "a")]
    from gptbench.backends.weights import load_weights

    _, wa = load_weights(runs / "a" / "checkpoints" / "step-4.safetensors")
    _, wb = load_weights(runs / "b" / "checkpoints" / "step-4.safetensors")
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def _fake_hub_cache(root, folder, repo="openai-community/gpt2", commit="a" * 40):
    """The layout huggingface_hub writes: refs/main, snapshots/<commit>/<file> -> ../../blobs/<hash>."""
    entry = root / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    (entry / "blobs").mkdir()
    snap = entry / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        blob = entry / "blobs" / sha256_of(f)
        shutil.copyfile(f, blob)
        os.symlink(os.path.join("..", "..", "blobs", blob.name), snap / f.name)
    return snap


def test_hub_name_resolves_from_the_local_cache_offline(tmp_path, corpus_file, capsys, monkeypatch):
    from gptbench.tokenizers.gpt2 import load_gpt2

    # the hub's layout and its own tokenizer files (built by the exporter from GPT-2's ranks)
    save_hf_gpt2(tmp_path / "hf", prefixed=False, tokenizer=load_gpt2(GPT2_RANKS))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GPTBENCH_GPT2_RANKS", str(tmp_path / "absent.tiktoken"))  # the folder's tokenizer.json must suffice
    snap = _fake_hub_cache(tmp_path / "hub", tmp_path / "hf")
    runs = tmp_path / "runs"
    rc, err = train(capsys, runs, "--init-from", "gpt2", "--data", str(corpus_file), "--name", "ft", "--max-iters", "2", *SMALL)
    assert rc == 0, err
    cfg = json.loads((runs / "ft" / "config.json").read_text())
    lineage = cfg["init_from"]
    assert (lineage["kind"], lineage["label"], lineage["repo"], lineage["revision"]) == ("hub", "gpt2", "openai-community/gpt2", "a" * 40)
    assert lineage["path"] == str(snap.resolve())
    assert lineage["sha256"] == sha256_of(tmp_path / "hf" / "model.safetensors")
    assert cfg["tokenizer"]["spec"] == "gpt2"
    from gptbench.runstore import Run, read_summary

    assert read_summary(Run(runs / "ft")).init_from == "gpt2"


def test_hub_name_not_cached_is_downloaded_with_huggingface_hub_when_online(tmp_path, corpus_file, capsys, monkeypatch):
    """With downloads on, a missing name goes to huggingface_hub.snapshot_download (a stand-in
    here: nothing may touch the network), asking for the files gptbench reads, into the cache."""
    import sys
    import types

    save_hf_gpt2(tmp_path / "hf", prefixed=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, revision, list(allow_patterns), cache_dir))
        if repo_id.endswith("xl"):
            raise OSError("Connection refused")
        return str(_fake_hub_cache(Path(cache_dir), tmp_path / "hf", repo=repo_id))

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    runs = tmp_path / "runs"
    rc, err = train(capsys, runs, "--init-from", "gpt2-medium", "--data", str(corpus_file), "--name", "dl", "--max-iters", "1", *SMALL)
    assert rc == 0, err
    repo, revision, patterns, cache = calls[0]
    assert (repo, revision, cache) == ("openai-community/gpt2-medium", None, str(tmp_path / "hub"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(patterns)
    assert not any(p.endswith((".bin", ".h5", ".msgpack")) for p in patterns)  # only what gptbench reads
    assert json.loads((runs / "dl" / "config.json").read_text())["init_from"]["repo"] == "openai-community/gpt2-medium"
    rc, err = train(capsys, runs, "--init-from", "gpt2-xl", "--data", str(corpus_file), "--name", "nope")
    assert rc == 2
    assert "cannot download openai-community/gpt2-xl from the Hugging Face hub (OSError: Connection refused)" in err
    assert err.count("\n") == 1
    assert not (runs / "nope").exists()


def test_two_processes_fine_tune_like_one(tmp_path, corpus_file):
    """Rank 0 reads the source and every rank starts from its weights: `--nproc 2` (DDP on
    gloo, through the real launcher) logs the losses and ends with the weights of one
    process with the same global batch (float32 reduction order aside)."""
    import subprocess
    import sys

    from helpers import REPO
    from gptbench.backends.weights import load_weights

    save_hf_gpt2(tmp_path / "hf")
    runs = tmp_path / "runs"
    env = {**os.environ, "GPTBENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests"),
           "GPTBENCH_DIST_TIMEOUT": "120"}
    common = ["--init-from", str(tmp_path / "hf"), "--data", str(corpus_file), "--max-iters", "4", "--batch-size", "2",
              "--eval-iters", "2", "--eval-interval", "2", "--log-interval", "1", "--sample-tokens", "0", "--lr", "1e-3",
              "--device", "cpu", "--threads", "1", "--backend", "torch"]
    for name, extra in (("one", ["--grad-accum", "4"]), ("two", ["--grad-accum", "2", "--nproc", "2"])):
        out = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", *common, "--name", name, *extra],
                             capture_output=True, text=True, timeout=240, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
    one, two = records(runs / "one"), records(runs / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=0, atol=1e-5)
    assert json.loads((runs / "two" / "config.json").read_text())["init_from"]["kind"] == "hf"
    _, wa = load_weights(runs / "one" / "checkpoints" / "step-4.safetensors")
    _, wb = load_weights(runs / "two" / "checkpoints" / "step-4.safetensors")
    C = 32
    for k in wa:
        # the key part of c_attn.bias has an analytically zero gradient (softmax ignores a
        # shift shared by all keys): Adam turns reduction-order noise there into steps of ~lr
        keep = np.r_[0:C, 2 * C : 3 * C] if k.endswith("c_attn.bias") else slice(None)
        np.testing.assert_allclose(wb[k][keep], wa[k][keep], rtol=0, atol=1e-5, err_msg=k)


def test_from_a_run_its_tokenizer_follows(trained_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run.path, runs / "base")
    other = tmp_path / "other.txt"
    other.write_text(FIXTURE_TEXT[len(FIXTURE_TEXT) // 2 :], encoding="utf-8")  # the same characters, other text
    rc, err = train(capsys, runs, "--init-from", "base:last", "--data", str(other), "--name", "ft2", "--max-iters", "2", *SMALL)
    assert rc == 0, err
    from gptbench.tokenizers.registry import load_tokenizer

    assert load_tokenizer(runs / "ft2") == load_tokenizer(runs / "base")
    cfg = json.loads((runs / "ft2" / "config.json").read_text())
    step = max(int(p.name.split("-")[1].split(".")[0]) for p in (runs / "base" / "checkpoints").glob("step-*.state.safetensors"))
    assert (cfg["init_from"]["kind"], cfg["init_from"]["label"]) == ("run", f"base@step-{step}")
    assert cfg["init_from"]["sha256"] == sha256_of(runs / "base" / "checkpoints" / f"step-{step}.safetensors")
    assert cfg["model"] == json.loads((runs / "base" / "config.json").read_text())["model"]
    # the first eval of the new run is the source's model on the new text: not a random init
    first_eval = records(runs / "ft2", "eval")[0]
    assert first_eval["step"] == 0
    assert first_eval["val_loss"] < 3.0  # a random char model sits near ln(vocab) ~ 3.7


def test_a_weights_file_needs_the_tokenizer_it_was_trained_with(tmp_path, corpus_file, capsys):
    from helpers import tiny_model_config
    from reference_model import perturbed_weights
    from gptbench.backends.weights import save_weights

    cfg = tiny_model_config(vocab_size=256)
    save_weights(tmp_path / "w.safetensors", cfg, perturbed_weights(cfg))
    runs = tmp_path / "runs"
    rc, err = train(capsys, runs, "--init-from", str(tmp_path / "w.safetensors"), "--data", str(corpus_file), "--name", "w")
    assert rc == 2
    assert "has no tokenizer of its own; pass the --tokenizer it was trained with" in err
    rc, err = train(capsys, runs, "--init-from", str(tmp_path / "w.safetensors"), "--tokenizer", "byte", "--data", str(corpus_file),
                    "--name", "w", "--max-iters", "1", *SMALL)
    assert rc == 0, err
    saved = json.loads((runs / "w" / "config.json").read_text())
    assert saved["tokenizer"]["spec"] == "byte"
    assert saved["init_from"]["kind"] == "weights"
    assert saved["init_from"]["sha256"] == sha256_of(tmp_path / "w.safetensors")


def test_block_size_crops_position_embeddings(tmp_path, corpus_file, capsys):
    from gptbench.backends.weights import load_weights
    from gptbench.backends.hf import load_hf_folder

    save_hf_gpt2(tmp_path / "hf")
    runs = tmp_path / "runs"
    rc, err = train(capsys, runs, "--init-from", str(tmp_path / "hf"), "--data", str(corpus_file), "--name", "c", "--max-iters", "1",
                    "--block-size", "16", "--lr", "1e-9", *SMALL[:-2])
    assert rc == 0, err
    cfg, w = load_weights(runs / "c" / "checkpoints" / "step-1.safetensors")
    _, src, _ = load_hf_folder(tmp_path / "hf")
    assert cfg.block_size == 16
    assert w["wpe.weight"].shape == (16, 32)
    np.testing.assert_allclose(w["wpe.weight"], src["wpe.weight"][:16], atol=1e-6)


def test_finetune_preset_is_nanogpts_finetune_shakespeare():
    from helpers import resolve_config

    cfg = resolve_config(None, None, {}, {}, {"init_from": "gpt2"})
    t = cfg.train
    assert cfg.preset == "finetune"  # the default preset with --init-from
    assert (t.batch_size, t.grad_accum, t.max_iters, t.lr, t.decay_lr, t.eval_interval, t.eval_iters) == (1, 32, 20, 3e-5, False, 5, 40)
    assert cfg.model_given == ()  # the shape comes from the source...
    assert cfg.tokenizer is None  # ...and so does the tokenizer
    from gptbench.training import lr_at

    assert {lr_at(s, t) for s in range(t.max_iters)} == {3e-5}  # constant


# ---- bad input: one line, exit 2, nothing written --------------------------------------------------
def _llama(tmp_path):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    return [str(d)]


def _hf(tmp_path):
    save_hf_gpt2(tmp_path / "hf")
    return [str(tmp_path / "hf")]


def _hf_with_tokenizer(tmp_path):
    from gptbench.tokenizers.gpt2 import load_gpt2

    save_hf_gpt2(tmp_path / "hf", tokenizer=load_gpt2(GPT2_RANKS))
    return [str(tmp_path / "hf")]


BAD = [
    ("hub name offline", lambda p: ["gpt2-medium"], [],
     "gpt2-medium is not in the Hugging Face cache (looked in "),
    ("another architecture", _llama, [], "describes a 'llama' model; only Hugging Face GPT-2"),
    ("shape flag contradicts", _hf, ["--n-layer", "3"], "--n-layer 3 (the source has 2) contradicts --init-from"),
    ("longer context than the source", _hf, ["--block-size", "128"], "--block-size 128 (the source has at most 64)"),
    ("untied flag on a tied source", _hf, ["--untied"], "--untied (the source has a tied head) contradicts --init-from"),
    ("LoRA target unknown", _hf, ["--lora-rank", "4", "--lora-targets", "attn,wte"], "unknown --lora-targets entry 'wte'"),
    ("LoRA target absent", _hf, ["--lora-rank", "4", "--lora-targets", "mlp.c_gate"], "this model has no mlp.c_gate (mlp=gelu)"),
    ("LoRA rank 0", _hf, ["--lora-rank", "0"], "--lora-rank must be a positive integer, got 0"),
    ("LoRA rank negative", _hf, ["--lora-rank", "-2"], "--lora-rank must be a positive integer, got -2"),
    ("LoRA alpha without rank", _hf, ["--lora-alpha", "8"], "--lora-alpha needs --lora-rank R"),
    ("LoRA on several processes", _hf, ["--lora-rank", "4", "--nproc", "2"], "LoRA runs train in one process"),
    ("LoRA with Muon", _hf, ["--lora-rank", "4", "--optimizer", "muon"], "LoRA trains its adapters with AdamW"),
    ("tokenizer contradicts", _hf_with_tokenizer, ["--tokenizer", "byte"], "--tokenizer byte differs from the tokenizer of --init-from"),
    ("missing path", lambda p: [str(p / "nope" / "model")], [], "no such file or folder"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, corpus_file, capsys, monkeypatch):
    _, make, extra, fragment = case
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    src = make(tmp_path)
    capsys.readouterr()  # transformers' progress bars from making the source
    runs = tmp_path / "runs"
    rc, err = train(capsys, runs, "--init-from", *src, "--data", str(corpus_file), "--name", "x", *extra)
    assert rc == 2
    assert err.startswith("gptbench: error: ")
    assert err.count("\n") == 1
    assert fragment in err
    assert not runs.exists() or not any(runs.iterdir())


def test_hub_offline_message_says_how_to_fill_the_cache(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rc, err = train(capsys, tmp_path / "runs", "--init-from", "gpt2", "--data", str(corpus_file))
    assert rc == 2
    assert f"{tmp_path / 'hub' / 'models--gpt2'}, {tmp_path / 'hub' / 'models--openai-community--gpt2'}" in err
    assert "HF_HUB_OFFLINE is set" in err
    assert "hf download openai-community/gpt2 config.json" in err


@pytest.mark.parametrize("flags,fragment", [
    (["--preset", "finetune"], "preset finetune fine-tunes pretrained weights; add --init-from"),
    (["--lora-rank", "8"], "--lora-rank trains adapters on pretrained weights; add --init-from"),
])
def test_finetune_settings_need_a_source(flags, fragment, tmp_path, corpus_file, capsys):
    rc, err = train(capsys, tmp_path / "runs", "--data", str(corpus_file), *flags)
    assert rc == 2
    assert fragment in err
    assert err.count("\n") == 1


def test_resume_refuses_a_new_source(trained_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run.path, runs / "r")
    rc, err = train(capsys, runs, "--resume", "r", "--lora-rank", "4")
    assert rc == 2
    assert "cannot be combined with --resume" in err
