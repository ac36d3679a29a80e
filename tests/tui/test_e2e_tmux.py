"""End to end in a real terminal: tmux runs `gptbench`, keys start a tiny training run from
the Train form, the dashboard shows it progressing, then chat streams a reply from it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gptbench.runstore import Run

TMUX = shutil.which("tmux")
if TMUX is None and os.environ.get("CI"):
    # .ci/run installs tmux: in CI a missing tmux is a broken setup, not a reason to skip
    raise RuntimeError("tmux is required for the end-to-end TUI test in CI (apt-get install tmux)")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
STEPS = 100  # enough to see the dashboard progress and a checkpoint to chat with


class Tmux:
    """One tmux server on a private socket, one window running a command."""

    def __init__(self, socket: str, width: int = 120, height: int = 40) -> None:
        self.socket, self.width, self.height = socket, width, height

    def _run(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v!s}" for k, v in env.items())
        # COLUMNS/LINES may be inherited from the test process; they would pin the app at 80x24
        cmd = f"env -u COLUMNS -u LINES {exports} " + " ".join(f"'{c}'" for c in command)
        # size the window first, then start the app in it (a detached session may start 80x24)
        self._run("new-session", "-d", "-s", "e2e", "-x", str(self.width), "-y", str(self.height), "cat")
        self._run("resize-window", "-t", "e2e", "-x", str(self.width), "-y", str(self.height))
        self._run("respawn-pane", "-k", "-t", "e2e", cmd)

    def keys(self, *keys: str) -> None:
        for key in keys:  # at a person's pace: in a real terminal a Tab sent within a few tens
            self._run("send-keys", "-t", "e2e", key)  # of ms of typing can be lost by Textual
            time.sleep(0.3)

    def type(self, text: str) -> None:
        self._run("send-keys", "-t", "e2e", "-l", text)
        time.sleep(0.3)

    def capture(self) -> str:
        return self._run("capture-pane", "-p", "-t", "e2e")

    def wait_for(self, predicate, timeout: float, what: str) -> str:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                size = self._run("display", "-p", "-t", "e2e", "#{window_width}x#{window_height}").strip()
                raise AssertionError(f"timed out waiting for {what}; screen ({size}):\n{screen}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True)


def stop_trainers(runs) -> None:  # noqa: ANN001
    """A trainer outlives the UI by design; a failed test must not leave one running."""
    from gptbench.runstore import RunStore

    for run in RunStore(runs).runs():
        run.request_stop()


def _status(run: Run) -> dict:
    try:
        return run.status()
    except Exception:  # noqa: BLE001 - status.json mid-write
        return {}


def _wait_for_run(runs, predicate, what: str) -> Run:  # noqa: ANN001
    """Poll the run directory (as the dashboard does) until a run satisfies `predicate`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for run in (Run(p) for p in runs.glob("[!.]*") if p.is_dir()):
            if predicate(run):
                return run
        time.sleep(0.005)
    raise AssertionError(f"timed out after 120 s waiting for {what}")


def _pause_once_training(runs) -> tuple[str, int]:  # noqa: ANN001
    """Stop the new run's trainer (SIGSTOP) once its status shows a step past 0: (name, pid).

    A tiny run trains 100 steps in about a second, and its status (which the dashboard
    shows) is rewritten at most every HEARTBEAT_INTERVAL_S, so the trainer is paused at its
    first logged step until a heartbeat is due, let go, and paused again at that heartbeat."""
    from gptbench.runstore import HEARTBEAT_INTERVAL_S

    run = _wait_for_run(runs, lambda r: _status(r).get("pid") and any(m.get("type") == "train" for m in r.metrics()),
                        "a logged training step")
    pid = int(_status(run)["pid"])
    os.kill(pid, signal.SIGSTOP)
    time.sleep(HEARTBEAT_INTERVAL_S + 0.2)  # wall time passes for the paused trainer: its next log is a heartbeat
    os.kill(pid, signal.SIGCONT)
    _wait_for_run(runs, lambda r: r.name == run.name and _status(r).get("step", 0) > 0, "a heartbeat past step 0")
    os.kill(pid, signal.SIGSTOP)
    status = _status(run)
    assert status.get("state") == "running" and status.get("step", 0) < STEPS, f"the run ended before it could be paused: {status}"
    return run.name, pid


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _start_training_from_the_form(tmux: Tmux, corpus_file) -> None:  # noqa: ANN001
    tmux.wait_for(lambda s: "No runs in" in s, 30, "the runs screen")
    tmux.keys("F3")
    tmux.wait_for(lambda s: "New training run" in s, 10, "the train form")
    # a Tab sent while the app is still taking in typed text can be lost, so each value is
    # seen on screen before the Tab that leaves its field
    tmux.type(str(corpus_file))  # the Corpus field has focus
    tmux.wait_for(lambda s: corpus_file.name in s, 10, "the corpus typed")
    # Tokenizer, Preset, Backend, Device, then the hyperparameters
    tmux.keys("Tab", "Tab", "Tab", "Tab", "Tab")
    fields = ("Max iters", "Batch size", "Learning rate", "Eval every", "Sample length", "Context", "Layers", "Heads", "Width")
    for label, value in zip(fields, (str(STEPS), "8", "", str(STEPS // 2), "40", "32", "2", "2", "32")):
        if value:
            tmux.type(value)
            shown = re.compile(rf"{label}\s+{value}\b")
            tmux.wait_for(lambda s: shown.search(s) is not None, 10, f"{label} = {value}")
        tmux.keys("Tab")
    filled = (f"--max-iters {STEPS}", "--batch-size 8", f"--eval-interval {STEPS // 2}", "--sample-tokens 40", "--block-size 32")
    tmux.wait_for(lambda s: all(flag in " ".join(s.split()) for flag in filled), 10, "the filled form")
    tmux.keys("C-s")


def _chat_streams_and_cancels(tmux: Tmux, name: str) -> None:
    tmux.keys("c")  # chat with this run
    tmux.wait_for(lambda s: f"{name}@step-{STEPS}" in s, 60, "the model to load")
    # a long reply (~10 s even at 3,000 tok/s), so it is on screen while it streams: Max
    # tokens is 4 stops before the prompt (context and KV-cache switches, seed); Enter
    # applies it and returns to the prompt. Escape below cancels it long before the end.
    tmux.keys("BTab", "BTab", "BTab", "BTab", "End", "BSpace", "BSpace", "BSpace")
    tmux.type("30000")
    tmux.keys("Enter")
    tmux.wait_for(lambda s: "Max tokens   30000" in s, 10, "max tokens set")
    tmux.type("ROMEO:")
    tmux.keys("Enter")
    # the reply streams in: the transcript (right of the sidebar) keeps changing while no
    # finish reason is shown (the view follows the newest text, so the prompt line
    # itself scrolls away on a fast machine)
    seen_transcripts: set[str] = set()

    def reply_growing(s: str) -> bool:
        if "finish:" in s:
            return False
        transcript = "\n".join(line.split("▎", 1)[1] for line in s.splitlines() if "▎" in line)
        if "ROMEO:" in transcript:
            seen_transcripts.add(transcript)
        return len(seen_transcripts) >= 3

    tmux.wait_for(reply_growing, 60, "the reply to stream")
    tmux.keys("Escape")  # cancels it
    screen = tmux.wait_for(lambda s: "finish: cancelled" in s, 30, "the reply to be cancelled")
    assert "tokens" in screen
    assert "tok/s" in screen


def test_train_then_chat_in_a_real_terminal(tmp_path, corpus_file, request):
    runs = tmp_path / "runs"
    cache = tmp_path / "cache"
    tmux = Tmux(f"gptbench-e2e-{os.getpid()}")
    env = {"GPTBENCH_CACHE_DIR": cache, "TERM": "xterm-256color", "COLORTERM": "truecolor", "PYTHONUNBUFFERED": "1"}
    tmux.start([sys.executable, "-m", "gptbench", "--runs-dir", str(runs)], env)
    request.addfinalizer(lambda: stop_trainers(runs))
    try:
        _start_training_from_the_form(tmux, corpus_file)
        # the dashboard of the new run: it starts and progresses. A tiny run trains 100
        # steps in about a second, so the trainer is paused (SIGSTOP) once it has logged
        # a step: the dashboard is then seen running whatever the machine's speed
        name, pid = _pause_once_training(runs)
        request.addfinalizer(lambda: _resume(pid))
        screen = tmux.wait_for(lambda s: "running" in s and "tok/s" in s and "step 0/" not in s and "ETA" in s, 120, "training progress")
        assert "Dashboard" in screen
        first = tmux.capture()
        _resume(pid)
        tmux.wait_for(lambda s: "finished" in s, 180, "the run to finish")
        assert [c.step for c in Run(runs / name).checkpoints()][-1] == STEPS
        assert first != tmux.capture()  # the charts / progress moved
        _chat_streams_and_cancels(tmux, name)
    finally:
        tmux.kill()
