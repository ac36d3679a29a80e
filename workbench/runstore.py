"""The run directory: the contract between a trainer and everything that watches it.

    runs/<name>/
      config.json          resolved model/train/data/tokenizer config, versions (written once)
      status.json          state (running|finished|failed|stopped), pid, heartbeat, step
      metrics.jsonl        one JSON object per line, append-only (`type`: train|eval|sample)
      log.txt              human-readable log lines, append-only
      tokenizer.json       the run's tokenizer (+ tokenizer.tiktoken for BPE)
      checkpoints/
        index.json         [{step, val_loss, time}], which checkpoints exist and which is best
        step-N.safetensors        weights (gptbench format, config in the header)
        step-N.state.safetensors  optimizer moments + RNG state; JSON trainer state in header
      .lock                flock held by the one trainer writing this run

Every file except the two append-only logs is replaced atomically (temp + fsync + rename).
Readers tolerate a torn last line in the logs. Training never imports Textual; the TUI
only reads these files (and signals the trainer's pid to stop it).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from gptbench.errors import UserError
from gptbench.fsutil import atomic_write_json

RUN_FORMAT_VERSION = 1
HEARTBEAT_STALE_S = 120.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_runs_dir() -> Path:
    """`$GPTBENCH_RUNS_DIR`, else `./runs` (the repo's top-level runs/ when run from there)."""
    env = os.environ.get("GPTBENCH_RUNS_DIR")
    return Path(env) if env else Path.cwd() / "runs"


def validate_run_name(name: str) -> str:
    if not name or ".." in name or not _NAME_RE.match(name):
        raise UserError(
            f"invalid run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '..' or spaces)"
        )
    return name


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of an append-only JSONL file; a torn or corrupt line is skipped."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn last line: the writer is mid-append
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    yield obj
    except FileNotFoundError:
        return


class JsonlTail:
    """Incremental reader of an append-only JSONL file: `poll()` returns only new records.

    Keeps the byte offset of the last complete line, so a torn line is re-read once it is
    complete and a truncated/replaced file restarts from the beginning.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def poll(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


@dataclass
class CheckpointInfo:
    step: int
    val_loss: float | None
    path: Path  # weights file

    @property
    def state_path(self) -> Path:
        return self.path.with_name(f"step-{self.step}.state.safetensors")


@dataclass
class Run:
    """A run directory. Cheap to construct; every property reads the files afresh."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    # ---- files ----------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def index_path(self) -> Path:
        return self.checkpoints_dir / "index.json"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> dict[str, Any]:
        return read_json(self.config_path)

    def status(self) -> dict[str, Any]:
        try:
            return read_json(self.status_path)
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def metrics(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.metrics_path))

    def checkpoints(self) -> list[CheckpointInfo]:
        """Existing checkpoints, oldest first."""
        try:
            entries = read_json(self.index_path)
        except (FileNotFoundError, json.JSONDecodeError):
            entries = []
        out = []
        for e in entries:
            p = self.checkpoints_dir / f"step-{int(e['step'])}.safetensors"
            if p.is_file():
                out.append(CheckpointInfo(int(e["step"]), e.get("val_loss"), p))
        return sorted(out, key=lambda c: c.step)

    def checkpoint(self, which: str = "last") -> CheckpointInfo:
        """`last`, `best` (lowest val loss) or `step-N`."""
        ckpts = self.checkpoints()
        if not ckpts:
            raise UserError(f"run {self.name!r} has no checkpoint yet; train it first (gptbench train --resume {self.name})")
        if which == "last":
            return ckpts[-1]
        if which == "best":
            with_val = [c for c in ckpts if c.val_loss is not None]
            return min(with_val, key=lambda c: c.val_loss) if with_val else ckpts[-1]
        m = re.fullmatch(r"step-(\d+)", which)
        if m:
            for c in ckpts:
                if c.step == int(m.group(1)):
                    return c
            have = ", ".join(f"step-{c.step}" for c in ckpts)
            raise UserError(f"run {self.name!r} has no checkpoint {which}; it has {have}")
        raise UserError(f"unknown checkpoint {which!r}; use best, last or step-N")

    # ---- state ----------------------------------------------------------------------
    def live_state(self) -> str:
        """The status as a watcher should show it: a `running` run whose trainer died
        (pid gone or heartbeat stale) is reported as `crashed`."""
        st = self.status()
        state = st.get("state", "unknown")
        if state == "running":
            beat = float(st.get("heartbeat", 0))
            same_host = st.get("host") in (None, os.uname().nodename)
            if same_host and not pid_alive(st.get("pid")):
                return "crashed"
            if time.time() - beat > HEARTBEAT_STALE_S:
                return "stale"
        return state

    def request_stop(self) -> bool:
        """Ask the trainer to stop gracefully (it checkpoints and marks the run `stopped`)."""
        pid = self.status().get("pid")
        if self.status().get("state") != "running" or not pid_alive(pid):
            return False
        os.kill(int(pid), signal.SIGINT)
        return True


@dataclass
class RunSummary:
    """One row of `gptbench runs` and the TUI's run browser."""

    name: str
    state: str
    step: int = 0
    max_iters: int = 0
    best_val_loss: float | None = None
    params: int = 0
    backend: str = ""
    device: str = ""
    tokenizer: str = ""
    corpus: str = ""
    created: float = 0.0
    duration: float = 0.0
    tokens_per_sec: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("extra")
        return d


def summarize(run: Run) -> RunSummary:
    """Summary of a run from config.json + status.json; unreadable runs are `corrupt`."""
    try:
        cfg = run.config()
        if not isinstance(cfg, dict) or "model" not in cfg:
            raise ValueError("config.json has no model section")
    except FileNotFoundError:
        return RunSummary(run.name, "corrupt", error="config.json is missing")
    except (ValueError, OSError) as exc:
        return RunSummary(run.name, "corrupt", error=f"config.json unreadable: {exc}")
    st = run.status()
    train = cfg.get("train", {})
    tok = cfg.get("tokenizer", {})
    data = cfg.get("data", {})
    started = float(st.get("started", cfg.get("created", 0.0)) or 0.0)
    return RunSummary(
        name=run.name,
        state=run.live_state(),
        step=int(st.get("step", 0)),
        max_iters=int(train.get("max_iters", 0)),
        best_val_loss=st.get("best_val_loss"),
        params=int(cfg.get("params", 0)),
        backend=str(cfg.get("backend", "")),
        device=str(cfg.get("device", "")),
        tokenizer=str(tok.get("spec", tok.get("kind", ""))),
        corpus=str(data.get("name", data.get("spec", ""))),
        created=float(cfg.get("created", 0.0)),
        duration=float(st.get("elapsed", 0.0)),
        tokens_per_sec=st.get("tokens_per_sec"),
        error=str(st.get("error", "")),
    )


class RunStore:
    """All runs under one directory."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    def run(self, name: str) -> Run:
        return Run(self.root / validate_run_name(name))

    def existing(self, name: str) -> Run:
        run = self.run(name)
        if not run.path.is_dir():
            have = ", ".join(self.names()[:8]) or "none"
            raise UserError(f"no run named {name!r} in {self.root} (runs: {have})")
        if not run.exists():
            raise UserError(f"run {name!r} is corrupt: {run.config_path} is missing")
        return run

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def runs(self) -> list[Run]:
        return [Run(self.root / n) for n in self.names()]

    def summaries(self) -> list[RunSummary]:
        return [summarize(r) for r in self.runs()]

    def delete(self, name: str) -> None:
        """Delete a run directory; refuses anything that is not directly inside the store
        and any run whose trainer is alive."""
        run = self.run(name)
        target = run.path.resolve()
        if target.parent != self.root.resolve() or not target.is_dir():
            raise UserError(f"refusing to delete {target}: not a run inside {self.root}")
        if run.live_state() == "running":
            raise UserError(f"run {name!r} is training; stop it before deleting it")
        shutil.rmtree(target)

    def rename(self, old: str, new: str) -> Run:
        src = self.existing(old)
        dst = self.run(new)
        if dst.path.exists():
            raise UserError(f"a run named {new!r} already exists; pick another name")
        if src.live_state() == "running":
            raise UserError(f"run {old!r} is training; stop it before renaming it")
        os.rename(src.path, dst.path)
        cfg = dst.config()
        cfg["name"] = new
        atomic_write_json(dst.config_path, cfg)
        return dst


class RunLock:
    """An exclusive, non-blocking flock on `<run>/.lock`: two trainers never write one run.

    The kernel drops the lock when the process dies, so a crash never leaves it stuck.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.run.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.run.status().get("pid", "?")
            raise UserError(
                f"run {self.run.name!r} is locked by another trainer (pid {pid}); "
                "stop it first or choose another --name"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
