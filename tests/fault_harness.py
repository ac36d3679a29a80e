"""Kill a real trainer at chosen moments and check the run directory after each kill.

Shared by tests/test_faults.py (a CI-sized set of moments) and benchmarks/faults.py (20
seeded kills, with the figures the run-directory issue asks for). A moment is either a
crash point (`("before" | "after", N, NAME)`: the trainer SIGKILLs itself around the N-th
atomic rename of a file named NAME, see `fsutil`) or `("time", seconds)`: SIGKILL from
outside after that long.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Moment = tuple[Any, ...]

TINY = ["--device", "cpu", "--backend", "torch", "--threads", "1", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
        "--block-size", "32", "--batch-size", "8", "--eval-interval", "5", "--eval-iters", "2", "--log-interval", "1",
        "--sample-tokens", "0", "--warmup-iters", "3", "--keep-last", "2", "--seed", "7"]


@dataclass
class KillReport:
    moment: Moment
    phase: str  # before-first-checkpoint | during-checkpoint | after-first-checkpoint
    reached: int  # last step logged before the kill
    killed: bool = True  # False: the run finished before this moment came
    resumed_from: int | None = None  # the step the next start continued from
    problems: list[str] = field(default_factory=list)


def trainer(runs: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def start_args(runs: Path, name: str, corpus: Path, max_iters: int) -> list[str]:
    """Resume the run if it exists as a run (it has a config); claim it again otherwise."""
    if (runs / name / "config.json").is_file():
        return ["--resume", name]
    return ["--name", name, "--data", str(corpus), "--max-iters", str(max_iters), *TINY]


def check_run(run_path: Path) -> list[str]:
    """Every file of the run parses and every checkpoint loads and validates; returns the
    problems found (empty = the run directory is intact)."""
    from gptbench.backends.registry import create_backend
    from gptbench.backends.spec import GPTConfig
    from gptbench.backends.weights import load_weights
    from gptbench.runstore import Run, load_training_state, read_summary

    run = Run(run_path)
    problems: list[str] = []
    summary = read_summary(run)
    if summary.state == "corrupt":
        problems.append(f"listed as corrupt: {summary.error}")
    if not run.exists():
        if summary.state != "crashed":
            problems.append(f"a claim without config is shown as {summary.state}")
        return problems
    try:
        cfg = run.config()
        run.status()
        list(run.metrics())
        be = create_backend(GPTConfig.from_dict(cfg["model"]), "torch", device="cpu")
        be.setup_optimizer(_optim())
        for ck in run.checkpoints():
            load_weights(ck.path)
            load_training_state(ck, be.optimizer_state_shapes(), be.rng_state_shapes(), be.name)
        for step, path, why in run.damaged_checkpoints():
            problems.append(f"damaged {path.name}: {why}")
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems


def _optim():
    from gptbench.spec import TrainConfig

    return TrainConfig().optim_config()


def leftovers(run_path: Path) -> list[Path]:
    """Files no complete run needs: temporary files and checkpoint halves."""
    import re

    out = [p for p in run_path.rglob("*.tmp")]
    ck = run_path / "checkpoints"
    if ck.is_dir():
        names = {p.name for p in ck.iterdir()}
        for n in names:
            m = re.match(r"step-(\d+)\.(state\.)?safetensors$", n)
            if m:
                other = f"step-{m.group(1)}.safetensors" if m.group(2) else f"step-{m.group(1)}.state.safetensors"
                if other not in names:
                    out.append(ck / n)
    return out


def last_logged_step(run_path: Path) -> int:
    from gptbench.runstore import Run

    steps = [r["step"] for r in Run(run_path).metrics() if r.get("type") == "train"]
    return max(steps, default=0)


def last_checkpoint_step(run_path: Path) -> int | None:
    from gptbench.runstore import Run

    ckpts = Run(run_path).checkpoints()
    return ckpts[-1].step if ckpts else None


def kill_and_resume(runs: Path, name: str, corpus: Path, moments: list[Moment], *, max_iters: int, env: dict[str, str],
                    timeout: float = 120.0) -> list[KillReport]:
    """Start (or resume) the run once per moment, kill it then, check the directory."""
    reports: list[KillReport] = []
    run_path = runs / name
    for moment in moments:
        if _finished(run_path):
            break  # a late moment: the run already completed
        before_ckpt = last_checkpoint_step(run_path) if run_path.exists() else None
        child_env = dict(env)
        if moment[0] in ("before", "after"):
            when, n, target = moment
            child_env["GPTBENCH_FAULT_KILL"] = f"{when}:{n}:{target}"
        if reports:
            reports[-1].resumed_from = before_ckpt or 0
        proc = trainer(runs, start_args(runs, name, corpus, max_iters), child_env)
        if moment[0] == "time":
            deadline = time.monotonic() + moment[1]
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        killed = proc.returncode == -signal.SIGKILL
        after_ckpt = last_checkpoint_step(run_path) if (run_path / "checkpoints").is_dir() else None
        phase = "before-first-checkpoint" if after_ckpt is None else ("during-checkpoint" if moment[0] in ("before", "after") and moment[2] == ".safetensors" else "after-first-checkpoint")
        report = KillReport(moment, phase, last_logged_step(run_path) if run_path.exists() else 0, killed)
        if not killed and proc.returncode != 0:
            report.problems.append(f"exited {proc.returncode} instead of being killed: {out.decode(errors='replace')[-400:]}")
        if run_path.exists():
            report.problems.extend(check_run(run_path))
        reports.append(report)
    return reports


def _finished(run_path: Path) -> bool:
    from gptbench.runstore import Run, read_summary

    return run_path.is_dir() and read_summary(Run(run_path)).state == "finished"


def finish(runs: Path, name: str, corpus: Path, *, max_iters: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    before = last_checkpoint_step(runs / name) if (runs / name).exists() else None
    if _finished(runs / name):
        return subprocess.CompletedProcess([], 0, "already finished", str(before))
    proc = trainer(runs, start_args(runs, name, corpus, max_iters), env)
    out, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(errors="replace"), str(before))


def train_losses(run_path: Path) -> dict[int, float]:
    from gptbench.runstore import Run

    return {r["step"]: r["loss"] for r in Run(run_path).metrics() if r.get("type") == "train"}
