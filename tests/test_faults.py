"""Process-level faults against real trainer subprocesses: SIGKILL at the fragile moments
(before, during and after the first checkpoint), two trainers racing for one name, a full
disk, a loss that diverges to NaN, SIGHUP and a double Ctrl-C, and a read-only destination
for convert.

A full disk is tested twice, each case its own test: a real small tmpfs (skipped, with
the reason, where mounting is impossible) and a file-size limit (RLIMIT_FSIZE), which runs
everywhere. A read-only destination is a tmpfs mount as root, else a read-only mode.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fault_harness as fh
from gptbench.backends.weights import load_weights
from gptbench.runstore import Run, read_summary
from helpers import FIXTURE_TEXT, assert_one_line, run_cli, tree_snapshot


@pytest.fixture
def env(monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return dict(os.environ)


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "play.txt"
    p.write_text(FIXTURE_TEXT)
    return p


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True).returncode == 0


@contextlib.contextmanager
def mounted(target: Path, options: str):
    ok = _mount(target, options)
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# ---- SIGKILL ---------------------------------------------------------------------------------
def test_kills_at_every_fragile_moment_leave_a_run_that_resumes_exactly(tmp_path, corpus, env):
    """Killed in its claim, right after its config, inside and around checkpoint writes, and
    at two seeded random moments, the run is never corrupt, always resumes, ends with no
    leftovers, and the history stitched from all the resumes equals an uninterrupted run's."""
    rng = random.Random(1234)
    moments = [
        ("after", 1, "status.json"),  # claimed, config not yet written
        ("after", 1, "config.json"),  # a run without a checkpoint
        ("before", 1, ".safetensors"),  # the first state file staged, not renamed
        ("after", 1, ".safetensors"),  # a state file without its weights
        ("before", 2, ".safetensors"),  # weights staged, not renamed
        ("after", 2, ".safetensors"),  # a complete checkpoint, before retention
        ("time", rng.uniform(2.5, 4.0)),
        ("time", rng.uniform(2.5, 4.0)),
    ]
    runs, ref_runs = tmp_path / "runs", tmp_path / "ref"
    reports = fh.kill_and_resume(runs, "k", corpus, moments, max_iters=200, env=env)
    for r in reports:
        assert r.problems == [], (r.moment, r.problems)
    assert all(r.killed for r in reports[:6])  # the crash points always fire
    phases = {r.phase for r in reports}
    assert {"before-first-checkpoint", "during-checkpoint"} <= phases
    done = fh.finish(runs, "k", corpus, max_iters=200, env=env)
    assert done.returncode == 0, done.stdout[-500:]
    assert fh.leftovers(runs / "k") == []
    ref = fh.finish(ref_runs, "k", corpus, max_iters=200, env=env)
    assert ref.returncode == 0, ref.stdout[-500:]
    stitched, straight = fh.train_losses(runs / "k"), fh.train_losses(ref_runs / "k")
    assert sorted(stitched) == list(range(1, 201))
    assert stitched == straight  # bit for bit
    assert read_summary(Run(runs / "k")).state == "finished"


# ---- two trainers, one name --------------------------------------------------------------------
def test_two_trainers_racing_for_a_name_leave_exactly_one_owner(tmp_path, corpus, env):
    """The first trainer claims the name, then blocks reading its data (a FIFO); the
    second, with fast data, is refused; the first then trains the run undisturbed."""
    runs, slow_data = tmp_path / "runs", tmp_path / "slow"
    slow_data.mkdir()
    fifo = slow_data / "feed.txt"
    os.mkfifo(fifo)
    first = fh.trainer(runs, ["--name", "race", "--data", str(slow_data), "--max-iters", "5", *fh.TINY], env)
    try:
        wait_until(lambda: read_summary(Run(runs / "race")).state == "starting" if (runs / "race").exists() else False, 60, "the claim")
        second = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", "--name", "race",
                                 "--data", str(corpus), "--max-iters", "5", *fh.TINY], capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2
        assert_one_line(second.stderr, f"run 'race' is being created or trained by pid {first.pid}")
        with open(fifo, "w") as f:  # now the first trainer's data arrives
            f.write(FIXTURE_TEXT)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out.decode()[-500:]
    run = Run(runs / "race")
    assert run.config()["data"]["spec"] == str(slow_data)
    assert run.status()["state"] == "finished"
    assert run.status()["pid"] == first.pid


# ---- a full disk -------------------------------------------------------------------------------
FULL_ARGV = ["--name", "full", "--max-iters", "15", *fh.TINY, "--keep-last", "1"]


def _train_until_full(runs: Path, corpus: Path, env: dict[str, str], preexec=None) -> Run:
    """Train into a disk too small for the second checkpoint: one line, exit 2, status
    `failed` with the reason, nothing half-written."""
    proc = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui",
                           "--data", str(corpus), *FULL_ARGV],
                          capture_output=True, text=True, env=env, timeout=180, preexec_fn=preexec)
    assert proc.returncode == 2, proc.stdout[-800:] + proc.stderr
    assert_one_line(proc.stderr)
    assert "No space left on device" in proc.stderr or "File too large" in proc.stderr
    run = Run(runs / "full")
    status = run.status()
    assert status["state"] == "failed"
    assert "cannot save checkpoint" in status["error"]
    assert status["error"] in run.log_path.read_text()
    assert fh.leftovers(run.path) == []
    assert fh.check_run(run.path) == []
    return run


def _resumes_to_the_end(run: Run, env: dict[str, str]) -> None:
    rc, err = run_cli_subprocess(run.path.parent, ["--resume", "full"], env)
    assert rc == 0, err
    assert run.status()["state"] == "finished"
    assert [c.step for c in run.checkpoints()][-1] == 15


def test_a_full_tmpfs_fails_in_one_line_keeps_the_last_checkpoint_and_resumes(tmp_path, corpus, env):
    """A real small disk (a 640 KiB tmpfs): the second checkpoint does not fit, the first
    is intact; remounted bigger, the run resumes from it."""
    disk = tmp_path / "disk"
    with mounted(disk, "size=640k") as small:
        if not small:
            why = "not root" if os.geteuid() != 0 else "mount -t tmpfs was refused (no CAP_SYS_ADMIN in this container?)"
            pytest.skip(f"cannot mount a small tmpfs here ({why}); test_a_file_size_limit_... covers the same path")
        run = _train_until_full(disk / "runs", corpus, env)
        assert [c.step for c in run.checkpoints()] == [5]  # the first fitted; the second did not
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        _resumes_to_the_end(run, env)


def test_a_file_size_limit_fails_in_one_line_keeps_the_last_checkpoint_and_resumes(tmp_path, corpus, env):
    """The same through RLIMIT_FSIZE (below a state file's size), which needs no privilege:
    every checkpoint write fails with EFBIG; without the limit the run resumes and finishes."""
    limit = 200_000

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    _train_until_full(tmp_path / "runs", corpus, env, preexec=cap)
    _resumes_to_the_end(Run(tmp_path / "runs" / "full"), env)


def run_cli_subprocess(runs: Path, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", *argv],
                          capture_output=True, text=True, env=env, timeout=180)
    return proc.returncode, proc.stdout[-800:] + proc.stderr


# ---- divergence ----------------------------------------------------------------------------------
def test_a_diverging_run_fails_with_the_step_and_cause_and_keeps_its_last_good_checkpoint(tmp_path, corpus, env):
    """A real trainer driven to NaN (a learning rate of 1e6, no gradient clipping): one
    line and exit 2, status `failed` naming the step and the likely cause, the same in
    log.txt, and the checkpoint before the divergence intact."""
    runs = tmp_path / "runs"
    rc, out = run_cli_subprocess(runs, ["--name", "nan", "--data", str(corpus), "--max-iters", "10", *fh.TINY], env)
    assert rc == 0, out
    proc = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", "--resume", "nan",
                           "--max-iters", "30", "--lr", "1e6", "--min-lr", "1e6", "--grad-clip", "0"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 2, proc.stdout[-800:] + proc.stderr
    assert_one_line(proc.stderr, "lower --lr or raise --warmup-iters, and resume from the last checkpoint")
    m = re.search(r"loss became (nan|inf|-inf) at step (\d+)", proc.stderr)
    assert m, proc.stderr
    step = int(m.group(2))
    assert 10 < step <= 30
    run = Run(runs / "nan")
    status = run.status()
    assert status["state"] == "failed"
    assert status["step"] == step
    assert status["error"].startswith(f"loss became {m.group(1)} at step {step}; lower --lr")
    assert status["error"].endswith("(the last checkpoint is step 10)")
    assert status["error"] in run.log_path.read_text()
    assert read_summary(run).state == "failed"
    last = run.checkpoint("last")
    assert last.step == 10  # nothing saved after the loss went bad
    _, weights = load_weights(last.path)
    assert all(np.isfinite(w).all() for w in weights.values())
    assert fh.check_run(run.path) == []


# ---- signals -------------------------------------------------------------------------------------
SLOW = ["--n-layer", "2", "--n-head", "4", "--n-embd", "128", "--block-size", "128", "--batch-size", "32",
        "--device", "cpu", "--backend", "torch", "--threads", "1", "--eval-interval", "1000", "--eval-iters", "1",
        "--sample-tokens", "0", "--log-interval", "1"]


def _running(run_path: Path, min_step: int = 2) -> bool:
    try:
        st = Run(run_path).status()
    except Exception:  # noqa: BLE001 - mid-write
        return False
    return st.get("state") == "running" and st.get("step", 0) >= min_step


def test_sighup_stops_like_sigterm_with_a_checkpoint(tmp_path, corpus, env):
    runs = tmp_path / "runs"
    proc = fh.trainer(runs, ["--name", "hup", "--data", str(corpus), "--max-iters", "100000", *SLOW], env)
    wait_until(lambda: _running(runs / "hup"), 120, "training")
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=120)
    run = Run(runs / "hup")
    st = run.status()
    assert proc.returncode == 130, out.decode()[-400:]
    assert st["state"] == "stopped"
    assert run.checkpoint("last").step == st["step"]
    assert f"stopped at step {st['step']}; checkpoint saved" in run.log_path.read_text()


# Steps of about a second on one thread, so the second Ctrl-C lands in the same step as the
# first (a fast step could finish, save and exit before it arrived).
SLOWER = [*SLOW, "--n-embd", "384", "--n-head", "6", "--block-size", "256", "--batch-size", "16"]


def test_ctrl_c_says_what_happens_and_a_second_one_still_leaves_a_final_status(tmp_path, corpus, env):
    runs = tmp_path / "runs"
    proc = fh.trainer(runs, ["--name", "twice", "--data", str(corpus), "--max-iters", "100000", *SLOWER], env)
    wait_until(lambda: _running(runs / "twice", min_step=1), 120, "training")
    chunks: list[bytes] = []
    first_handled = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            chunks.append(line)
            if b"press Ctrl-C again" in line:
                first_handled.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    proc.send_signal(signal.SIGINT)
    # the second only once the first was handled (two signals pending during one torch op
    # would be one), still inside the same step of about a second
    assert first_handled.wait(60)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(10)
    text = b"".join(chunks).decode()
    assert "stopping after this step (a checkpoint is saved); press Ctrl-C again to abort" in text
    st = Run(runs / "twice").status()
    assert proc.returncode == 130
    assert st["state"] == "stopped"
    assert "aborted at step" in st["error"]
    assert "aborted at step" in Run(runs / "twice").log_path.read_text()


# ---- a read-only destination -------------------------------------------------------------------
def test_convert_into_a_read_only_folder_is_one_line(capsys, tmp_path, trained_run):
    ro = tmp_path / "ro"
    with mounted(ro, "ro,size=64k") as mounted_ro:
        if not mounted_ro:
            if os.geteuid() == 0:  # root ignores modes; only a read-only mount stops it
                pytest.skip("root without permission to mount cannot make a read-only folder")
            ro.chmod(0o555)
        before = tree_snapshot(ro)
        for dst, extra in ((ro / "out.safetensors", []), (ro / "out-hf", ["--to", "hf"])):
            rc, err = run_cli(capsys, "convert", trained_run.path, dst, *extra)
            assert rc == 2
            assert_one_line(err, f"cannot write to {ro}", "read-only or no permission")
        assert tree_snapshot(ro) == before
        if not mounted_ro:
            ro.chmod(0o755)
