"""A run trained on one backend resumes on the other and continues as if it had not moved.

The checkpoint carries weights, AdamW moments and step (same names on both backends) and
the batch RNG, so a run resumed on MLX sees exactly the batches and optimizer state it
would have seen on torch. The proof: the MLX continuation's losses track a torch
continuation of the same checkpoint step for step (no spike, no reset of Adam), and vice
versa. Only the framework dropout RNG does not carry across (these runs use dropout 0).
"""

from __future__ import annotations

import shutil

import numpy as np

from helpers import train_fixture_run
from gptbench.cli import main
from gptbench.runstore import RunStore
from gptbench.training import Trainer


def _train_losses(run, after: int) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in run.metrics() if m["type"] == "train" and m["step"] > after}


def _losses_before(run, upto: int) -> list[float]:
    return [m["loss"] for m in run.metrics() if m["type"] == "train" and m["step"] <= upto]


def _copies(src_run, runs_dir, names):
    for name in names:
        shutil.copytree(src_run.path, runs_dir / name)
    return RunStore(runs_dir)


def _assert_continues(store, cont_same: str, cont_other: str, start: int, other_backend: str):
    same, other = store.existing(cont_same), store.existing(cont_other)
    assert other.config()["backend"] == other_backend
    assert other.status()["state"] == "finished"
    a, b = _train_losses(same, start), _train_losses(other, start)
    assert sorted(a) == sorted(b)
    assert len(a) >= 4
    # the two continuations agree step for step (resuming without the Adam moments would
    # already differ by ~1e-3 here; with them the difference is float round-off, ~1e-6)
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4 * a[step], (step, a[step], b[step])
    before = _losses_before(same, start)
    first_after = b[min(b)]
    # no spike: the first loss after the switch is in line with the last ones before it
    assert first_after < max(before[-3:]) + 0.1, (before[-3:], first_after)
    # and the resumed run kept its history (metrics appended, checkpoints at new steps)
    assert other.checkpoint("last").step == max(b)
    ev = [m for m in other.metrics() if m["type"] == "eval"]
    assert ev[-1]["step"] == max(b)
    assert np.isfinite(ev[-1]["val_loss"])


def test_torch_run_resumes_on_mlx(trained_run, tmp_path):
    start = trained_run.checkpoint("last").step
    store = _copies(trained_run, tmp_path, ["on-torch", "on-mlx"])
    Trainer.resume_run(store, "on-torch", {"train.max_iters": start + 50}).fit()
    # the other one through the CLI, as a user would
    rc = main(["train", "--no-ui", "--resume", "on-mlx", "--backend", "mlx", "--max-iters", str(start + 50), "--runs-dir", str(tmp_path)])
    assert rc == 0
    _assert_continues(store, "on-torch", "on-mlx", start, "mlx")


def test_mlx_run_resumes_on_torch(tmp_path, corpus_file):
    runs = tmp_path / "runs"
    first = train_fixture_run(runs, corpus_file, name="mlx-run", max_iters=100, backend="mlx")
    assert first.config()["backend"] == "mlx"
    assert first.config()["device"] == "cpu"
    losses = _losses_before(first, 100)
    assert losses[-1] < losses[0] - 0.5  # MLX training actually learns
    store = _copies(first, tmp_path / "more", ["on-mlx", "on-torch"])
    Trainer.resume_run(store, "on-mlx", {"train.max_iters": 150}).fit()
    Trainer.resume_run(store, "on-torch", {"runtime.backend": "torch", "train.max_iters": 150}).fit()
    _assert_continues(store, "on-mlx", "on-torch", 100, "torch")


def test_muon_run_resumes_on_the_other_backend(tmp_path, corpus_file):
    """Today's recipe with Muon: a torch run resumed on MLX continues as torch does (Muon's
    buffers, step and warmup carry across; so does AdamW's state for the rest)."""
    runs = tmp_path / "runs"
    recipe = dict(pos="rope", qk_norm=True, mlp="relu2", norm="rmsnorm", bias=False, zero_init_proj=True, logit_softcap=15.0)
    first = train_fixture_run(runs, corpus_file, name="muon-run", max_iters=60, model=recipe, optimizer="muon",
                              muon_momentum_warmup=100, eval_interval=30, log_interval=5, lr_decay_iters=120, sample_tokens=0)
    store = _copies(first, tmp_path / "more", ["on-torch", "on-mlx"])
    Trainer.resume_run(store, "on-torch", {"train.max_iters": 100}).fit()
    Trainer.resume_run(store, "on-mlx", {"runtime.backend": "mlx", "train.max_iters": 100}).fit()
    _assert_continues(store, "on-torch", "on-mlx", 60, "mlx")
