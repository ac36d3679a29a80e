"""Headless training end to end: the run directory, resume exactness, Ctrl-C, locks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import train_fixture_run
from gptbench.cli import main
from gptbench.config import TrainConfig
from gptbench.runstore import RunStore, RunWriter
from gptbench.train import lr_at

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
    assert lr_at(110, t) == pytest.approx(1e-4) and lr_at(500, t) == pytest.approx(1e-4)
    lrs = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_headless_run_writes_the_run_directory(runs_dir, corpus_file, capsys):
    rc = train_cli(runs_dir, "--data", str(corpus_file), "--tokenizer", "char", "--max-iters", "60",
                   "--eval-interval", "20", "--log-interval", "5", "--name", "baby", "--keep-last", "1", *SMALL)
    assert rc == 0
    run = RunStore(runs_dir).existing("baby")
    cfg = run.config()
    assert cfg["model"]["n_layer"] == 2 and cfg["train"]["max_iters"] == 60 and cfg["backend"] == "torch"
    assert cfg["tokenizer"]["kind"] == "char" and cfg["data"]["sha256"]
    b = cfg["param_breakdown"]
    assert cfg["params"] == sum(b.values()) and b["blocks"] > 0 and b["lm_head"] > 0  # tiny is untied
    st = run.status()
    assert st["state"] == "finished" and st["step"] == 60 and st["best_val_loss"] < math.log(cfg["tokenizer"]["vocab_size"])
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
    assert 60 in steps and len(steps) <= 2
    assert (run.path / "tokenizer.json").is_file() and "val loss" in run.log_path.read_text()
    out = capsys.readouterr().out
    assert "parameters" in out and "baby finished at step 60" in out
    # listed by `gptbench runs --json`
    assert main(["--runs-dir", str(runs_dir), "runs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "baby" and rows[0]["state"] == "finished" and rows[0]["step"] == 60


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.metrics() if r["type"] == "train"}


def test_resume_continues_exactly(runs_dir, corpus_file):
    """200 steps straight == 100 steps + resume 100 through the CLI: same losses, bit for bit."""
    common = dict(eval_interval=50, log_interval=1, lr_decay_iters=200)
    straight = train_fixture_run(runs_dir, corpus_file, name="straight", max_iters=200, **common)
    half = train_fixture_run(runs_dir, corpus_file, name="half", max_iters=100, **common)
    assert train_cli(runs_dir, "--resume", "half", "--max-iters", "200") == 0
    a, b = _losses(straight), _losses(RunStore(runs_dir).existing("half"))
    assert len(a) == 200 and sorted(a) == sorted(b)
    assert [a[s] for s in range(1, 201)] == [b[s] for s in range(1, 201)]
    ea = [(r["step"], r["val_loss"]) for r in straight.metrics() if r["type"] == "eval"]
    eb = [(r["step"], r["val_loss"]) for r in RunStore(runs_dir).existing("half").metrics() if r["type"] == "eval"]
    assert ea == eb


def test_resume_with_dropout_restores_rng(runs_dir, corpus_file):
    from gptbench.config import resolve_run_config
    from gptbench.train import Trainer

    def run(name, iters):
        cfg = resolve_run_config("tiny", None, {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.2},
                                 {"max_iters": iters, "eval_interval": 20, "eval_iters": 2, "batch_size": 4,
                                  "log_interval": 1, "lr_decay_iters": 40, "sample_tokens": 0},
                                 {"data": str(corpus_file), "backend": "torch", "device": "cpu", "name": name})
        tr = Trainer.new_run(RunStore(runs_dir), cfg)
        tr.fit()
        return tr.run

    a = run("d-straight", 40)
    run("d-half", 20)
    Trainer.resume_run(RunStore(runs_dir), "d-half", {"train": {"max_iters": 40}}).fit()
    assert _losses(a) == _losses(RunStore(runs_dir).existing("d-half"))


def test_same_seed_is_deterministic(runs_dir, corpus_file):
    a = train_fixture_run(runs_dir, corpus_file, name="s1", max_iters=30, log_interval=1, sample_tokens=0)
    b = train_fixture_run(runs_dir, corpus_file, name="s2", max_iters=30, log_interval=1, sample_tokens=0)
    c = train_fixture_run(runs_dir, corpus_file, name="s3", max_iters=30, log_interval=1, sample_tokens=0, seed=7)
    assert _losses(a) == _losses(b) and _losses(a) != _losses(c)


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
    assert st["state"] == "stopped" and st["step"] > 0
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
    assert rc == 2 and "is locked by another trainer" in err and err.count("\n") == 1
    assert run.metrics_path.read_bytes() == before


def test_help_does_not_import_frameworks():
    code = "import sys; from gptbench.cli import main\ntry:\n  main(['--help'])\nexcept SystemExit: pass\n" \
           "bad=[m for m in ('torch','mlx','textual','datasets') if m in sys.modules]\nprint('IMPORTED', bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORTED []" in out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "gptbench", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("gptbench ")


def test_checkpoint_weights_are_self_describing(trained_run):
    from gptbench.backends.weights import load_weights

    ck = trained_run.checkpoint("best")
    cfg, w = load_weights(ck.path)
    assert cfg.n_layer == 2 and cfg.vocab_size == trained_run.config()["tokenizer"]["vocab_size"]
    assert np.isfinite(w["wte.weight"]).all()
