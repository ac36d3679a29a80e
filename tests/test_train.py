"""Headless training end to end: the run directory, resume exactness, Ctrl-C, locks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import GPT2_RANKS, train_fixture_run
from gptbench.cli import main
from gptbench.spec import TrainConfig
from gptbench.runstore import RunStore, RunWriter
from gptbench.training import lr_at

SMALL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
         "--eval-iters", "4", "--warmup-iters", "10", "--sample-tokens", "20", "--device", "cpu", "--backend", "torch"]


def train_cli(runs_dir: Path, *args: str) -> int:
    return main(["--runs-dir", str(runs_dir), "train", "--no-ui", *args])


def test_lr_schedule_warmup_cosine_floor():
    t = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110, lr_decay_iters=110)
    assert lr_at(0, t) == pytest.approx(1e-3 / 11)
    assert lr_at(9, t) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, t) == pytest.approx(1e-3)
    assert lr_at(60, t) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert lr_at(110, t) == pytest.approx(1e-4)
    assert lr_at(500, t) == pytest.approx(1e-4)
    lrs = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_headless_run_writes_the_run_directory(runs_dir, corpus_file, capsys):
    rc = train_cli(runs_dir, "--data", str(corpus_file), "--tokenizer", "char", "--max-iters", "60",
                   "--eval-interval", "20", "--log-interval", "5", "--name", "baby", "--keep-last", "1", *SMALL)
    assert rc == 0
    run = RunStore(runs_dir).existing("baby")
    cfg = run.config()
    assert cfg["model"]["n_layer"] == 2
    assert cfg["train"]["max_iters"] == 60
    assert cfg["backend"] == "torch"
    assert cfg["tokenizer"]["kind"] == "char"
    assert cfg["data"]["sha256"]
    b = cfg["param_breakdown"]
    assert cfg["params"] == sum(b.values())
    assert b["blocks"] > 0
    assert b["lm_head"] > 0  # tiny is untied
    st = run.status()
    assert st["state"] == "finished"
    assert st["step"] == 60
    assert st["best_val_loss"] < math.log(cfg["tokenizer"]["vocab_size"])
    m = run.metrics()
    train = [r for r in m if r["type"] == "train"]
    evals = [r for r in m if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # it learned something
    assert all(r["tokens_per_sec"] > 0 for r in train)
    assert any(r["type"] == "sample" and len(r["text"]) > 0 for r in m)
    # keep-last 1 plus the best
    steps = [c.step for c in run.checkpoints()]
    assert 60 in steps
    assert len(steps) <= 2
    assert (run.path / "tokenizer.json").is_file()
    assert "val loss" in run.log_path.read_text()
    out = capsys.readouterr().out
    assert "parameters" in out
    assert "baby finished at step 60" in out
    # listed by `gptbench runs --json`
    assert main(["--runs-dir", str(runs_dir), "runs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "baby"
    assert rows[0]["state"] == "finished"
    assert rows[0]["step"] == 60


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.metrics() if r["type"] == "train"}


def test_resume_continues_exactly(runs_dir, corpus_file, pinned_torch_threads):
    """100 steps straight == 50 steps + resume 50 through the CLI: same losses, bit for bit."""
    common = dict(eval_interval=25, log_interval=1, lr_decay_iters=100)
    straight = train_fixture_run(runs_dir, corpus_file, name="straight", max_iters=100, **common)
    train_fixture_run(runs_dir, corpus_file, name="half", max_iters=50, **common)
    assert train_cli(runs_dir, "--resume", "half", "--max-iters", "100") == 0
    a, b = _losses(straight), _losses(RunStore(runs_dir).existing("half"))
    assert len(a) == 100
    assert sorted(a) == sorted(b)
    assert [a[s] for s in range(1, 101)] == [b[s] for s in range(1, 101)]
    ea = [(r["step"], r["val_loss"]) for r in straight.metrics() if r["type"] == "eval"]
    eb = [(r["step"], r["val_loss"]) for r in RunStore(runs_dir).existing("half").metrics() if r["type"] == "eval"]
    assert ea == eb


def test_resume_with_dropout_restores_rng(runs_dir, corpus_file):
    from gptbench.training import Trainer
    from helpers import resolve_config

    def run(name, iters):
        cfg = resolve_config("tiny", None, {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.2},
                                 {"max_iters": iters, "eval_interval": 20, "eval_iters": 2, "batch_size": 4,
                                  "log_interval": 1, "lr_decay_iters": 40, "sample_tokens": 0},
                                 {"data": str(corpus_file), "backend": "torch", "device": "cpu", "name": name})
        tr = Trainer.new_run(RunStore(runs_dir), cfg)
        tr.fit()
        return tr.run

    a = run("d-straight", 40)
    run("d-half", 20)
    Trainer.resume_run(RunStore(runs_dir), "d-half", {"train.max_iters": 40}).fit()
    assert _losses(a) == _losses(RunStore(runs_dir).existing("d-half"))


def test_same_seed_is_deterministic(runs_dir, corpus_file):
    a = train_fixture_run(runs_dir, corpus_file, name="s1", max_iters=30, log_interval=1, sample_tokens=0)
    b = train_fixture_run(runs_dir, corpus_file, name="s2", max_iters=30, log_interval=1, sample_tokens=0)
    c = train_fixture_run(runs_dir, corpus_file, name="s3", max_iters=30, log_interval=1, sample_tokens=0, seed=7)
    assert _losses(a) == _losses(b)
    assert _losses(a) != _losses(c)


def test_ctrl_c_saves_checkpoint_and_marks_stopped(runs_dir, corpus_file):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "gptbench", "--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file),
           "--name", "intr", "--max-iters", "100000", "--eval-interval", "100000", "--log-interval", "5", *SMALL]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = RunStore(runs_dir).run("intr")
    deadline = time.time() + 120
    while time.time() < deadline and not [r for r in run.metrics() if r["type"] == "train"]:
        time.sleep(0.2)
    assert run.status().get("state") == "running"
    assert run.request_stop()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    st = run.status()
    assert st["state"] == "stopped"
    assert st["step"] > 0
    assert run.checkpoint("last").step == st["step"]
    assert "stopped at step" in out
    # and it resumes from there
    assert train_cli(runs_dir, "--resume", "intr", "--max-iters", str(st["step"] + 5)) == 0
    assert RunStore(runs_dir).existing("intr").status()["step"] == st["step"] + 5


def test_second_trainer_on_a_locked_run_is_refused(runs_dir, trained_run, capsys):
    import shutil

    shutil.copytree(trained_run.path, runs_dir / "locked")
    run = RunStore(runs_dir).existing("locked")
    before = run.metrics_path.read_bytes()
    with RunWriter.open(runs_dir, "locked"):
        rc = train_cli(runs_dir, "--resume", "locked", "--max-iters", "300")
    err = capsys.readouterr().err
    assert rc == 2
    assert "is locked by another trainer" in err
    assert err.count("\n") == 1
    assert run.metrics_path.read_bytes() == before


def test_help_does_not_import_frameworks():
    code = "import sys; from gptbench.cli import main\ntry:\n  main(['--help'])\nexcept SystemExit: pass\n" \
           "bad=[m for m in ('torch','mlx','textual','datasets') if m in sys.modules]\nprint('IMPORTED', bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORTED []" in out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "gptbench", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("gptbench ")


def test_checkpoint_weights_are_self_describing(trained_run):
    from gptbench.backends.weights import load_weights

    ck = trained_run.checkpoint("best")
    cfg, w = load_weights(ck.path)
    assert cfg.n_layer == 2
    assert cfg.vocab_size == trained_run.config()["tokenizer"]["vocab_size"]
    assert np.isfinite(w["wte.weight"]).all()


# ---- bits per byte ---------------------------------------------------------------------------------
def test_val_bpb_is_loss_times_tokens_over_bytes(runs_dir, tmp_path):
    """Every eval logs val_bpb = val_loss * tokens / (bytes * ln 2) over the validation
    split; the status and the run summary carry the best. Multi-byte characters make bytes
    and (char) tokens differ, so a bpb computed per token would fail."""
    from helpers import FIXTURE_TEXT

    text = FIXTURE_TEXT.replace("moon", "lune ☾").replace("queen", "reine — é")
    corpus = tmp_path / "utf8.txt"
    corpus.write_text(text, encoding="utf-8")
    run = train_fixture_run(runs_dir, corpus, name="bpb", max_iters=40, eval_interval=20, sample_tokens=0)
    data = run.config()["data"]
    n_train, n_val = data["train_tokens"], data["val_tokens"]
    assert n_train + n_val == len(text)  # char tokens: one per character, one document
    val_bytes = len(text[n_train:].encode("utf-8"))
    assert val_bytes > n_val  # the val text really has multi-byte characters
    assert data["val_bytes"] == val_bytes
    evals = [r for r in run.metrics() if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 20, 40]
    for r in evals:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] * n_val / (val_bytes * math.log(2)), rel=1e-12)
    st = run.status()
    best = min(r["val_loss"] for r in evals)
    assert st["best_val_bpb"] == pytest.approx(best * n_val / (val_bytes * math.log(2)), rel=1e-12)
    assert RunStore(runs_dir).summaries()[0].best_val_bpb == st["best_val_bpb"]


def test_split_bytes_counts_text_and_not_end_of_text():
    """split_bytes is the byte length of the decoded text, with <|endoftext|> (a document
    boundary) counted as 0 bytes, for byte-level BPE (multi-byte characters split across
    tokens), bytes and characters."""
    from gptbench.tokenizers.registry import build_tokenizer, TokenizerSpec
    from gptbench.training import split_bytes

    docs = ["naïve café — 東京 ☕", "plain text\nwith lines", "émoji 🎉 end"]
    gpt2 = build_tokenizer(TokenizerSpec.parse(f"gpt2:{GPT2_RANKS}"))
    ids = []
    for d in docs:
        ids += gpt2.encode(d) + [gpt2.eot_id]
    ids = np.array(ids, dtype=np.uint16)
    want = sum(len(d.encode("utf-8")) for d in docs)
    assert split_bytes(ids, gpt2) == want
    assert split_bytes(ids, gpt2, chunk=5) == want  # chunk boundaries inside characters change nothing
    assert want > len(ids) - len(docs)  # bytes and tokens differ
    byte = build_tokenizer(TokenizerSpec.parse("byte"))
    assert split_bytes(np.array(byte.encode(docs[0]), dtype=np.uint16), byte) == len(docs[0].encode("utf-8"))
    char = build_tokenizer(TokenizerSpec.parse("char"), corpus_text=lambda: "".join(docs))
    assert split_bytes(np.array(char.encode(docs[0]), dtype=np.uint16), char) == len(docs[0].encode("utf-8"))


# ---- today's recipe through the CLI -------------------------------------------------------------------
MODERN_FLAGS = ["--pos", "rope", "--qk-norm", "--zero-init", "--logit-softcap", "15", "--mlp", "relu2", "--norm", "rmsnorm",
                "--no-bias", "--optimizer", "muon", "--muon-lr", "0.03", "--muon-momentum-warmup", "20"]


def test_modern_flags_reach_the_run_and_a_muon_run_resumes_exactly(runs_dir, corpus_file, pinned_torch_threads):
    """The recipe's flags land in config.json; 60 Muon steps straight == 30 + resume 30,
    bit for bit (momentum buffers, the warmup's step and both learning rates restored)."""
    common = [*SMALL, "--data", str(corpus_file), "--eval-interval", "30", "--log-interval", "1",
              "--lr-decay-iters", "60", "--sample-tokens", "0", *MODERN_FLAGS]
    assert train_cli(runs_dir, *common, "--name", "m-straight", "--max-iters", "60") == 0
    assert train_cli(runs_dir, *common, "--name", "m-half", "--max-iters", "30") == 0
    cfg = RunStore(runs_dir).existing("m-half").config()
    assert {k: cfg["model"][k] for k in ("pos", "qk_norm", "zero_init_proj", "logit_softcap", "mlp", "norm", "bias")} == dict(
        pos="rope", qk_norm=True, zero_init_proj=True, logit_softcap=15.0, mlp="relu2", norm="rmsnorm", bias=False)
    assert (cfg["train"]["optimizer"], cfg["train"]["muon_lr"], cfg["train"]["muon_momentum_warmup"]) == ("muon", 0.03, 20)
    assert "Muon (peak lr 0.03) trains the 8 hidden matrices" in RunStore(runs_dir).existing("m-half").log_path.read_text()
    state = RunStore(runs_dir).existing("m-half").checkpoint("last").state_path
    from gptbench.backends.weights import load_tensors

    names = set(load_tensors(state)[0])
    assert "momentum.h.0.attn.c_attn.weight" in names
    assert "exp_avg.wte.weight" in names
    assert "exp_avg.h.0.attn.c_attn.weight" not in names
    assert train_cli(runs_dir, "--resume", "m-half", "--max-iters", "60") == 0
    a, b = _losses(RunStore(runs_dir).existing("m-straight")), _losses(RunStore(runs_dir).existing("m-half"))
    assert len(a) == 60
    assert [a[s] for s in range(1, 61)] == [b[s] for s in range(1, 61)]
    assert a[60] < a[1] - 0.5  # and it learned


def test_resume_refuses_another_optimizer(runs_dir, trained_run, capsys):
    import shutil

    shutil.copytree(trained_run.path, runs_dir / "adam")
    rc = train_cli(runs_dir, "--resume", "adam", "--optimizer", "muon", "--max-iters", "400")
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert "cannot resume 'adam' with a different optimizer='muon' (run has 'adamw')" in err
