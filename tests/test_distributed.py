"""Data-parallel training through the real CLI: 2 processes (torch gloo DDP and FSDP2, MLX
ring) against one process with the same global batch, resume across world sizes, a killed
rank and Ctrl-C (the refusals and the launcher's parts: test_distributed_parts.py).

Every multi-process run goes through `gptbench train --nproc 2` (torchrun's agent, or
mlx.launch) exactly as a user starts it. Tolerances: the processes see the very batches
one process sees, so only the order of float32 reductions differs (DDP/FSDP/ring average
two half-sums where one process adds four quarter-losses); 1e-5 on losses, gradient norms
and weights after 8 AdamW steps (observed: below 1e-6). Activation checkpointing
recomputes the same ops in the same order: bitwise equal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURE_TEXT, REPO

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--max-iters", "8", "--eval-interval", "4", "--eval-iters", "3", "--log-interval", "1", "--warmup-iters", "2",
        "--lr-decay-iters", "8", "--sample-tokens", "8", "--device", "cpu", "--threads", "1"]
RUN_TIMEOUT = 180  # seconds for one CLI run (2 processes importing torch on a loaded 2-core box)
TOL = 1e-5


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GPTBENCH_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GPTBENCH_DIST_TIMEOUT="120")
    env["PYTHONPATH"] = str(REPO / "tests")
    return env


def gptbench(runs: Path, cache: Path, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(cache))


def start(runs: Path, cache: Path, *args: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", *args]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(cache), start_new_session=True)


def metrics(runs: Path, name: str) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"], [r for r in records if r["type"] == "eval"]


def weights(runs: Path, name: str, step: int) -> dict[str, np.ndarray]:
    from gptbench.backends.weights import load_weights

    return load_weights(runs / name / "checkpoints" / f"step-{step}.safetensors")[1]


def status(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "status.json").read_text())


def assert_same_training(runs: Path, a: str, b: str, tol: float = TOL, steps: range | None = None) -> None:
    """Run `b` logged the losses, gradient norms and eval losses of run `a` and ended with its weights."""
    (ta, ea), (tb, eb) = metrics(runs, a), metrics(runs, b)
    if steps is not None:
        ta, tb = [r for r in ta if r["step"] in steps], [r for r in tb if r["step"] in steps]
        ea, eb = [r for r in ea if r["step"] in steps], [r for r in eb if r["step"] in steps]
    assert [r["step"] for r in tb] == [r["step"] for r in ta]
    assert len(ta) > 0
    np.testing.assert_allclose([r["loss"] for r in tb], [r["loss"] for r in ta], rtol=0, atol=tol)
    np.testing.assert_allclose([r["grad_norm"] for r in tb], [r["grad_norm"] for r in ta], rtol=tol, atol=0)
    assert [r["step"] for r in eb] == [r["step"] for r in ea]
    np.testing.assert_allclose([r["val_loss"] for r in eb], [r["val_loss"] for r in ea], rtol=0, atol=tol)
    np.testing.assert_allclose([r["train_loss"] for r in eb], [r["train_loss"] for r in ea], rtol=0, atol=tol)
    wa, wb = weights(runs, a, 8), weights(runs, b, 8)
    assert sorted(wb) == sorted(wa)
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= tol, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def dist_runs(tmp_path_factory):
    """One corpus, one token cache, and the runs the comparisons share (trained once)."""
    root = tmp_path_factory.mktemp("dist")
    corpus = root / "play.txt"
    corpus.write_text(FIXTURE_TEXT, encoding="utf-8")
    runs, cache = root / "runs", root / "cache"
    common = ["--data", str(corpus), "--tokenizer", "char", *TINY]
    trained: dict[str, subprocess.CompletedProcess] = {}

    def train(name: str, *args: str) -> subprocess.CompletedProcess:
        if name not in trained:
            trained[name] = gptbench(runs, cache, *common, "--name", name, *args)
        result = trained[name]
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result

    return runs, cache, common, train


# ---- torch: DDP and FSDP2 on gloo against one process -------------------------------------------
def test_ddp_two_processes_equal_one_process_with_grad_accum_2(dist_runs):
    runs, _, _, train = dist_runs
    train("ref", "--backend", "torch", "--grad-accum", "2")
    train("ddp2", "--backend", "torch", "--nproc", "2")
    assert_same_training(runs, "ref", "ddp2")
    log = (runs / "ddp2" / "log.txt").read_text()
    assert "2 processes (ddp, gloo): global batch 2 ranks x 4 sequences x 1 micro-batches = 8 sequences (128 tokens) per step" in log
    st = status(runs, "ddp2")
    assert st["state"] == "finished"
    assert (st["world_size"], st["strategy"], st["comm"]) == (2, "ddp", "gloo")
    assert len(st["peak_memory"]) == 2
    assert all(m > 0 for m in st["peak_memory"])
    cfg = json.loads((runs / "ddp2" / "config.json").read_text())
    assert cfg["train"]["grad_accum"] == 2  # the step's global count
    assert cfg["parallel"]["world_size"] == 2
    assert cfg["parallel"]["grad_accum_per_process"] == 1
    # the same tokens per step as the one-process run, so the same tokens seen
    assert json.loads((runs / "ref" / "config.json").read_text())["train"]["grad_accum"] == 2


def test_fsdp2_with_activation_checkpointing_equals_one_process(dist_runs):
    runs, _, _, train = dist_runs
    train("ref", "--backend", "torch", "--grad-accum", "2")
    train("fsdp2ac", "--backend", "torch", "--nproc", "2", "--strategy", "fsdp", "--activation-checkpointing")
    assert_same_training(runs, "ref", "fsdp2ac")
    st = status(runs, "fsdp2ac")
    assert (st["world_size"], st["strategy"]) == (2, "fsdp")
    assert json.loads((runs / "fsdp2ac" / "config.json").read_text())["parallel"]["activation_checkpointing"] is True


def test_activation_checkpointing_does_not_change_the_loss(dist_runs):
    runs, _, _, train = dist_runs
    train("ref", "--backend", "torch", "--grad-accum", "2")
    train("ref-ac", "--backend", "torch", "--grad-accum", "2", "--activation-checkpointing")
    assert_same_training(runs, "ref", "ref-ac", tol=0.0)  # the same ops recomputed: bitwise


def test_mlx_ring_two_processes_equal_one_mlx_process(dist_runs):
    runs, _, _, train = dist_runs
    train("mlx-ref", "--backend", "mlx", "--grad-accum", "2")
    train("mlx2", "--backend", "mlx", "--nproc", "2")
    assert_same_training(runs, "mlx-ref", "mlx2")
    st = status(runs, "mlx2")
    assert (st["world_size"], st["strategy"], st["comm"], st["backend"]) == (2, "ddp", "ring", "mlx")


RECIPE = ["--pos", "rope", "--qk-norm", "--logit-softcap", "15", "--mlp", "relu2", "--optimizer", "muon"]


def test_the_modern_recipe_with_muon_on_two_processes_equals_one(dist_runs):
    """Muon orthogonalises the all-reduced gradients' momentum: under DDP every rank takes
    the one-process step; rotary tables pass through activation checkpointing."""
    runs, _, _, train = dist_runs
    train("muon-ref", "--backend", "torch", "--grad-accum", "2", *RECIPE)
    train("muon-ddp2", "--backend", "torch", "--nproc", "2", "--activation-checkpointing", *RECIPE)
    assert_same_training(runs, "muon-ref", "muon-ddp2")
    assert "Muon (peak lr" in (runs / "muon-ddp2" / "log.txt").read_text()


def test_muon_with_fsdp_is_one_line(dist_runs):
    runs, cache, common, _ = dist_runs
    out = gptbench(runs, cache, *common, "--backend", "torch", "--nproc", "2", "--strategy", "fsdp", "--optimizer", "muon",
                   "--name", "muon-fsdp")
    assert out.returncode == 2
    assert "--optimizer muon orthogonalises whole matrices, which FSDP shards" in out.stderr
    assert out.stderr.count("gptbench: error:") == 1, out.stderr
    assert "Traceback" not in out.stderr


# ---- resume across world sizes ---------------------------------------------------------------------
def _copy_truncated(runs: Path, src: str, dst: str, keep_step: int) -> None:
    """A copy of `src` whose last checkpoint is `keep_step` (as if it had stopped there)."""
    shutil.copytree(runs / src, runs / dst)
    for f in (runs / dst / "checkpoints").iterdir():
        if int(f.name.split("-")[1].split(".")[0]) > keep_step:
            f.unlink()
    cfg = json.loads((runs / dst / "config.json").read_text())
    cfg["name"] = dst
    (runs / dst / "config.json").write_text(json.dumps(cfg))


def test_resume_two_processes_on_one_continues_the_same_run(dist_runs):
    """2 -> 1: the resumed process takes both micro-batches of each step (grad_accum stays
    2 globally) from the checkpointed batch stream: steps 5-8 are the uninterrupted ones'."""
    runs, cache, _, train = dist_runs
    train("ref", "--backend", "torch", "--grad-accum", "2")
    train("ddp2", "--backend", "torch", "--nproc", "2")
    _copy_truncated(runs, "ddp2", "ddp2-to-1", 4)
    out = gptbench(runs, cache, "--resume", "ddp2-to-1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_training(runs, "ref", "ddp2-to-1", steps=range(5, 9))
    assert_same_training(runs, "ref", "ddp2-to-1", steps=range(0, 5))  # rewound to step 4, kept
    st = status(runs, "ddp2-to-1")
    assert (st["world_size"], st["strategy"]) == (1, "single")
    cfg = json.loads((runs / "ddp2-to-1" / "config.json").read_text())
    assert cfg["train"]["grad_accum"] == 2
    assert cfg["parallel"]["grad_accum_per_process"] == 2


@pytest.mark.parametrize("backend, strategy", [("torch", "ddp"), ("torch", "fsdp"), ("mlx", "ddp")])
def test_resume_one_process_on_two_continues_the_same_run(dist_runs, backend, strategy):
    """1 -> 2: rank 0 reads the checkpoint and installs it on both ranks (DDP broadcasts it,
    FSDP scatters it into shards, MLX all-sums it)."""
    runs, cache, _, train = dist_runs
    ref = "ref" if backend == "torch" else "mlx-ref"
    train(ref, "--backend", backend, "--grad-accum", "2")
    name = f"{ref}-to-2-{strategy}"
    _copy_truncated(runs, ref, name, 4)
    out = gptbench(runs, cache, "--resume", name, "--nproc", "2", "--strategy", strategy)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_training(runs, ref, name, steps=range(5, 9))
    st = status(runs, name)
    assert (st["world_size"], st["strategy"]) == (2, strategy)


def test_resume_on_a_world_size_that_cannot_split_the_step_is_refused(dist_runs):
    runs, cache, _, train = dist_runs
    train("ref", "--backend", "torch", "--grad-accum", "2")
    _copy_truncated(runs, "ref", "ref-odd", 4)
    # as if it had been trained with --grad-accum 3 (the checkpoint does not depend on it)
    cfg = json.loads((runs / "ref-odd" / "config.json").read_text())
    cfg["train"]["grad_accum"] = 3
    (runs / "ref-odd" / "config.json").write_text(json.dumps(cfg))
    out = gptbench(runs, cache, "--resume", "ref-odd", "--nproc", "2")
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("gptbench: error:")]
    assert len(errors) == 1, out.stderr
    assert "takes 3 micro-batches per step, which 2 processes cannot share evenly" in errors[0]
    assert "Traceback" not in out.stderr


# ---- failures ----------------------------------------------------------------------------------------
def _rank_pid(launcher_pid: int, rank: int, backend: str, deadline: float) -> int:
    """The pid of `rank` under our launcher: torchrun's workers are its children, mlx.launch's
    ranks its grandchildren; each knows its rank from its environment."""
    from gptbench.training.launch import child_pids

    key = "RANK" if backend == "torch" else "MLX_RANK"
    while time.time() < deadline:
        procs = child_pids(launcher_pid)
        procs += [g for p in procs for g in child_pids(p)]
        for pid in procs:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{key}={rank}".encode() in env:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never appeared")


def _wait_for(predicate, deadline: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait for `predicate`; fail at once, with the launcher's output, if it exits first."""
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"the launcher exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}:\n{tail}")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_killed_rank_fails_the_run_naming_it_and_the_run_resumes(dist_runs, backend, tmp_path):
    runs, cache, common, _ = dist_runs
    name = f"killed-{backend}"
    args = [*common, "--backend", backend, "--nproc", "2", "--name", name, "--max-iters", "100000", "--lr-decay-iters", "100000",
            "--eval-interval", "10", "--sample-tokens", "0", "--log-interval", "5"]
    proc = start(runs, cache, *args, log=tmp_path / "out.txt")
    try:
        deadline = time.time() + RUN_TIMEOUT
        # any checkpoint (retention soon deletes the first ones of a fast run)
        _wait_for(lambda: any((runs / name / "checkpoints").glob("step-*.safetensors")), deadline, "a checkpoint",
                  proc, tmp_path / "out.txt")
        victim = _rank_pid(proc.pid, 1, backend, deadline)
        os.kill(victim, signal.SIGKILL)
        # the launcher gives up by itself (torchrun's hard 30 s at worst); the bound only
        # catches a launcher that would wait for the lost rank forever
        rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "out.txt").read_text(errors="replace")
    assert rc == 1, out[-3000:]
    assert f"gptbench: error: rank 1 was killed by SIGKILL; continue from the last checkpoint with gptbench train --no-ui --resume {name}" in out
    st = status(runs, name)
    assert st["state"] == "failed"
    # rank 0 says what it saw when it notices the lost peer; if it stays blocked in the
    # ring (MLX has no timeout) the launcher stops it and the status names rank 1 alone
    assert st["error"].startswith("rank 1 was killed by SIGKILL"), st["error"]
    assert "the last checkpoint is step" in st["error"]
    last = max(int(f.name.split("-")[1].split(".")[0]) for f in (runs / name / "checkpoints").glob("step-*.state.safetensors"))
    # it resumes (here on one process) from that checkpoint and finishes
    out = gptbench(runs, cache, "--resume", name, "--max-iters", str(last + 3))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming {name} at step {last}" in (runs / name / "log.txt").read_text()
    assert status(runs, name)["state"] == "finished"


def test_ctrl_c_on_the_launcher_stops_every_rank_with_one_checkpoint(dist_runs, tmp_path):
    runs, cache, common, _ = dist_runs
    name = "interrupted"
    args = [*common, "--backend", "torch", "--nproc", "2", "--name", name, "--max-iters", "100000", "--lr-decay-iters", "100000",
            "--eval-interval", "1000", "--sample-tokens", "0", "--log-interval", "5"]
    proc = start(runs, cache, *args, log=tmp_path / "out.txt")
    try:
        deadline = time.time() + RUN_TIMEOUT
        _wait_for(lambda: (runs / name / "metrics.jsonl").exists() and '"type": "train"' in (runs / name / "metrics.jsonl").read_text(), deadline, "training")
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the launcher's group
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "out.txt").read_text(errors="replace")
    assert rc == 130, out[-3000:]
    st = status(runs, name)
    assert st["state"] == "stopped"
    ckpts = sorted(int(f.name.split("-")[1].split(".")[0]) for f in (runs / name / "checkpoints").glob("step-*.state.safetensors"))
    assert ckpts == [st["step"]]  # one checkpoint, at the step every rank stopped at
    assert (runs / name / "log.txt").read_text().count("stopped at step") == 1


def test_runs_listing_shows_the_world_size(dist_runs):
    from gptbench.runstore import RunStore, read_summary

    runs, _, _, train = dist_runs
    train("ddp2", "--backend", "torch", "--nproc", "2")
    summary = read_summary(RunStore(runs).existing("ddp2"))
    assert (summary.world_size, summary.strategy) == (2, "ddp")


# ---- chat SFT on two processes ------------------------------------------------------------------
def test_sft_from_a_trained_bpe_run_on_two_processes_equals_one(tmp_path):
    """Conversations are not cached: rank 0 sends the tokenizer it took from the source (a
    `bpe:N` vocabulary trained on another corpus, which the chat data could not rebuild)
    along with the plan, and both ranks train on the very rows one process trains on."""
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    (tmp_path / "play.txt").write_text(FIXTURE_TEXT, encoding="utf-8")
    out = gptbench(runs, cache, "--data", str(tmp_path / "play.txt"), "--tokenizer", "bpe:300", *TINY[:6], "--block-size", "32", "--max-iters", "2",
                   "--eval-iters", "1", "--sample-tokens", "0", "--device", "cpu", "--threads", "1", "--name", "base")
    assert out.returncode == 0, out.stderr[-3000:]
    words = ["king", "queen", "cat", "dog", "sun", "moon"]
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"the {words[i % 6]} and the {words[(i + 2) % 6]}"},
                                                      {"role": "assistant", "content": words[(i + 1) % 6]}]}) + "\n" for i in range(24)))
    sft = ["--sft", "--data", str(chats), "--init-from", str(runs / "base"), "--batch-size", "2", "--max-iters", "4",
           "--eval-interval", "2", "--eval-iters", "2", "--log-interval", "1", "--sample-tokens", "0", "--device", "cpu", "--threads", "1"]
    one = gptbench(runs, cache, *sft, "--grad-accum", "4", "--name", "sft1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = gptbench(runs, cache, *sft, "--nproc", "2", "--grad-accum", "2", "--name", "sft2")  # 2 per process: 4 a step
    assert two.returncode == 0, two.stderr[-3000:]
    (t1, e1), (t2, e2) = metrics(runs, "sft1"), metrics(runs, "sft2")
    assert [r["step"] for r in t2] == [r["step"] for r in t1] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in t2], [r["loss"] for r in t1], rtol=0, atol=TOL)
    np.testing.assert_allclose([r["grad_norm"] for r in t2], [r["grad_norm"] for r in t1], rtol=TOL, atol=0)
    np.testing.assert_allclose([r["val_loss"] for r in e2], [r["val_loss"] for r in e1], rtol=0, atol=TOL)
    assert status(runs, "sft2")["world_size"] == 2
    tok = [json.loads((runs / n / "config.json").read_text())["tokenizer"] for n in ("base", "sft2")]
    assert tok[1]["vocab_size"] == tok[0]["vocab_size"] + 4  # the source's BPE plus the turn tokens
