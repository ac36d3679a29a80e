"""Start training runs as their own processes (no Textual here).

The TUI never trains on its event loop: it runs `python -m gptbench train --no-ui` in a new
session (so neither a UI crash nor Ctrl+C in the terminal reaches the trainer) and then only
watches the run directory. The trainer's stdout/stderr go to `RUNS/.launch/NAME.out` (the run
directory itself does not exist yet when the process starts, and the trainer refuses to
create a run in a non-empty directory); that file is where an early failure such as a bad
corpus path is read back from.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptbench.spec.cli import ResumeRequest, TrainRequest, request_argv

LAUNCH_DIR = ".launch"


def train_command(runs_dir: Path, request: TrainRequest) -> list[str]:
    """The headless trainer command for a request, passed whole (`spec.cli.request_argv`).
    Its CPU threads are left to the trainer, which adapts them to the cores other processes
    leave free (`gptbench.backends.cpu`): all of them while the app only watches (about 2%
    of a core), one fewer while a chat reply is generated here."""
    return [sys.executable, "-m", "gptbench", "train", "--no-ui", "--runs-dir", str(runs_dir), *request_argv(request)]


def resume_request(run_path: Path, max_iters: int | None = None) -> ResumeRequest:
    """Continue a run on as many processes as its last session had (with its strategy and
    activation checkpointing, from its spec), to `max_iters` when given."""
    from gptbench.errors import UserError
    from gptbench.runstore import Run
    from gptbench.runstore.specfile import read_spec

    overrides: dict[str, Any] = {}
    try:
        par = read_spec(Run(run_path)).parallel
    except UserError:
        par = None  # the trainer will say what is wrong with the run
    if par is not None and par.nproc > 1:
        overrides.update({"parallel.nproc": par.nproc, **({"parallel.strategy": "fsdp"} if par.strategy == "fsdp" else {})})
    if par is not None and par.activation_checkpointing:
        overrides["parallel.activation_checkpointing"] = True
    if max_iters is not None:
        overrides["train.max_iters"] = max_iters
    return ResumeRequest(Path(run_path).name, overrides)


@dataclass
class Launch:
    name: str
    command: list[str]
    proc: subprocess.Popen
    out_path: Path
    started: float
    returncode: int | None = None

    @property
    def running(self) -> bool:
        return self.returncode is None

    def output_tail(self, max_lines: int = 30) -> list[str]:
        try:
            data = self.out_path.read_bytes()[-16384:]
        except OSError:
            return []
        text = data.decode("utf-8", errors="replace").replace("\r", "\n")
        return [ln for ln in text.split("\n") if ln.strip()][-max_lines:]

    def error_line(self) -> str:
        """The trainer's one-line error (`gptbench: error: ...`), else its last line."""
        lines = self.output_tail()
        for ln in reversed(lines):
            if "error:" in ln:
                return ln.strip()
        return lines[-1].strip() if lines else f"exited with status {self.returncode}"


class Launcher:
    """The training processes this app started (thread-safe)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.launches: dict[str, Launch] = {}
        self._lock = threading.Lock()

    def start(self, request: TrainRequest) -> Launch:
        """Start `gptbench train --no-ui` for `request` (a new run's spec, named, or a
        resume) detached from this process."""
        name = str(request.name)
        out_dir = self.runs_dir / LAUNCH_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / f"{name}.out"
        cmd = train_command(self.runs_dir, request)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(out_path, "ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, close_fds=True,
            )
        launch = Launch(name, cmd, proc, out_path, time.time())
        with self._lock:
            self.launches[name] = launch
        return launch

    def get(self, name: str) -> Launch | None:
        with self._lock:
            return self.launches.get(name)

    def reap(self) -> list[Launch]:
        """Collect exited processes (no zombies, whose pid would still look alive) and
        return the ones that ended since the last call."""
        ended = []
        with self._lock:
            for launch in self.launches.values():
                if launch.returncode is None:
                    rc = launch.proc.poll()
                    if rc is not None:
                        launch.returncode = rc
                        ended.append(launch)
        return ended

    def forget(self, name: str) -> None:
        with self._lock:
            self.launches.pop(name, None)
