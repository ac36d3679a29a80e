"""`--max-time`: a training-time budget that stops a run with a final evaluation and
checkpoint, the learning-rate schedule laid over it, and resume continuing what is left.

Time is driven by an injected clock that advances one second per optimizer step, so the
tests are exact and never sleep."""

from __future__ import annotations

import math

import pytest

from helpers import assert_one_line, run_cli_output

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StepClock:
    """A clock that moves only when the model trains: `per_step` seconds each step."""

    def __init__(self, per_step: float = 1.0) -> None:
        self.now, self.per_step, self.lrs = 0.0, per_step, []

    def __call__(self) -> float:
        return self.now

    def attach(self, trainer) -> None:
        train_step = trainer.backend.train_step

        def timed(batches, lr):
            self.lrs.append(lr)
            self.now += self.per_step
            return train_step(batches, lr)

        trainer.backend.train_step = timed
        trainer.clock = self


def _spec(corpus, name, **train):
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings

    return resolve_spec("tiny", None, spec_settings(
        model={"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
        train={"max_iters": 100, "eval_interval": 1000, "eval_iters": 2, "batch_size": 4, "log_interval": 5,
               "warmup_iters": 10, "sample_tokens": 0, "lr": 1e-2, "min_lr": 1e-3, **train},
        data=str(corpus), tokenizer="char", backend="torch", device="cpu", name=name))


def _reference_lr(position: float, lr=1e-2, min_lr=1e-3, warmup=10, end=100) -> float:
    """The documented schedule at a (possibly fractional) position, written out independently."""
    if position < warmup:
        return lr * (position + 1) / (warmup + 1)
    if position >= end:
        return min_lr
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (position - warmup) / (end - warmup)))


def test_durations_parse_with_units():
    from gptbench.spec.duration import format_duration, parse_duration

    assert [parse_duration(t) for t in ("90s", "5m", "1.5h", "2d", "300", " 10 m")] == [90, 300, 5400, 172800, 300, 600]
    assert format_duration(300) == "5m" and format_duration(90) == "90s"
    for bad in ("0", "0s", "-5m", "5 minutes", "", "m", "nan"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize("value", ["0", "5 parsecs", "-1m"])
def test_a_bad_budget_is_one_line_and_creates_nothing(capsys, runs_dir, corpus_file, value):
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--data", corpus_file, "--max-time", value)
    assert rc == 2
    assert err.count("\n") == 1 and "--max-time" in err and "Traceback" not in err
    assert list(runs_dir.iterdir()) == []


def test_a_budget_in_a_config_file_reads_its_units(tmp_path):
    from gptbench.errors import UserError
    from gptbench.spec import resolve_spec
    from gptbench.spec.toml import load_toml

    path = tmp_path / "run.toml"
    path.write_text('[train]\nmax_time = "5m"\n')
    assert resolve_spec(None, load_toml(path)).train.max_time == 300.0
    path.write_text('[train]\nmax_time = "soon"\n')
    with pytest.raises(UserError, match="max_time"):
        load_toml(path)


def test_the_run_stops_at_the_budget_with_a_final_evaluation_and_checkpoint(runs_dir, corpus_file):
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    trainer = Trainer.new_run(RunStore(runs_dir), _spec(corpus_file, "budget", max_time=25.0, max_iters=1000))
    clock = StepClock()
    clock.attach(trainer)
    outcome = trainer.fit()
    assert outcome.state == "finished"
    # the budget is checked before every step: it ends within one step past the budget
    assert outcome.step == 25 and 25.0 <= trainer.progress.elapsed < 25.0 + clock.per_step
    run = RunStore(runs_dir).run("budget")
    evals = [r for r in run.metrics() if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 25]
    assert [c.step for c in run.checkpoints()] == [25]
    assert run.status()["state"] == "finished"
    assert "time budget of 25s spent at step 25" in run.log_path.read_text()


def test_the_schedule_spans_the_budget(runs_dir, corpus_file):
    """max_iters 100 over a 50 s budget at 1 s per step: position = max(step, 100 * t / 50)."""
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer
    from gptbench.training.schedule import lr_now

    trainer = Trainer.new_run(RunStore(runs_dir), _spec(corpus_file, "sched", max_time=50.0))
    clock = StepClock()
    clock.attach(trainer)
    trainer.fit()
    assert len(clock.lrs) == 50
    for k, lr in enumerate(clock.lrs):
        assert lr == pytest.approx(_reference_lr(2.0 * k), rel=1e-12), k
    # the cosine reaches min_lr exactly when the budget is spent
    assert lr_now(50, 50.0, trainer.t) == pytest.approx(1e-3, rel=1e-12)
    assert lr_now(40, 48.0, trainer.t) > 1e-3


def test_steps_lead_when_max_iters_comes_first(runs_dir, corpus_file):
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    trainer = Trainer.new_run(RunStore(runs_dir), _spec(corpus_file, "steps", max_time=1000.0, max_iters=30))
    clock = StepClock()
    clock.attach(trainer)
    assert trainer.fit().step == 30
    assert clock.lrs == pytest.approx([_reference_lr(k, end=30) for k in range(30)], rel=1e-12)


def test_resume_continues_the_remaining_budget(runs_dir, corpus_file):
    from gptbench.errors import UserError
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    store = RunStore(runs_dir)
    first = Trainer.new_run(store, _spec(corpus_file, "more", max_time=10.0))
    StepClock().attach(first)
    assert first.fit().step == 10
    with pytest.raises(UserError, match="already spent its --max-time budget"):
        Trainer.resume_run(store, "more", {})
    again = Trainer.resume_run(store, "more", {"train.max_time": 30.0})
    clock = StepClock()
    clock.attach(again)
    assert again.progress.elapsed == pytest.approx(10.0)
    assert again.fit().step == 30  # 20 s more: what was left of the new budget
    assert clock.lrs == pytest.approx([_reference_lr(100.0 * (10 + k) / 30) for k in range(20)], rel=1e-12)
    elapsed = [r["elapsed"] for r in store.run("more").metrics() if r["type"] == "train"]
    assert elapsed == sorted(elapsed) and elapsed[-1] == pytest.approx(30.0)


def test_two_processes_stop_together_at_the_budget(tmp_path, corpus_file):
    """DDP: every rank stops at the same step (rank 0's clock decides) with one final checkpoint."""
    import json
    import os
    import subprocess
    import sys

    runs = tmp_path / "runs"
    env = {**os.environ, "GPTBENCH_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", "--nproc", "2",
                          "--backend", "torch", "--device", "cpu", "--threads", "1", "--data", str(corpus_file), "--tokenizer", "char",
                          "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                          "--max-iters", "1000000", "--eval-interval", "1000000", "--eval-iters", "2", "--log-interval", "1",
                          "--sample-tokens", "0", "--max-time", "2s", "--name", "ddp"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    status = json.loads((runs / "ddp" / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    log = (runs / "ddp" / "log.txt").read_text()
    assert f"time budget of 2s spent at step {status['step']}" in log
    assert sorted(p.name for p in (runs / "ddp" / "checkpoints").glob("step-*.safetensors") if ".state." not in p.name) == \
        [f"step-{status['step']}.safetensors"]
    train = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert train[-1]["step"] == status["step"] and 2.0 <= status["elapsed"]
    assert train[-2]["elapsed"] < 2.0  # the step before the last started inside the budget
