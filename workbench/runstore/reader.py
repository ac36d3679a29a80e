"""Reading a run directory: every reader of a run (CLI, TUI, trainer resuming) goes here.

Readers never write and never trust a file: config and status are checked against their
schemas, checkpoints are found by listing the directory (`checkpoints.py`), a checkpoint's
training state is checked before a backend sees it (`training_state.py`), and append-only
files are read up to their last complete line (`appendonly.py`). A damaged file raises
`CorruptRunError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptbench.errors import UserError
from gptbench.runstore.appendonly import iter_jsonl
from gptbench.runstore.checkpoints import CheckpointInfo, find_checkpoints, find_damaged_checkpoints
from gptbench.runstore.evals import latest_core
from gptbench.runstore.format import (
    CHECKPOINTS,
    CONFIG,
    LOCK,
    LOG,
    METRICS,
    STATUS,
    TOKENIZER,
    CorruptRunError,
    RunState,
    check_config,
    check_status,
    derive_state,
)
from gptbench.runstore.lock import is_locked


def read_json(path: Path) -> Any:
    """A JSON file; CorruptRunError (naming the file) if it is not valid UTF-8 JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunError(f"{path} is unreadable: not valid JSON ({str(exc)[:80]})") from None


# ---- the run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """A run directory, read-only. Cheap to construct; every method reads the files afresh."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def status_path(self) -> Path:
        return self.path / STATUS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> dict[str, Any]:
        """config.json, checked; CorruptRunError if missing, unreadable or mistyped."""
        try:
            raw = read_json(self.config_path)
        except FileNotFoundError:
            raise CorruptRunError(f"{self.config_path} is missing") from None
        except OSError as exc:
            raise CorruptRunError(f"{self.config_path} is unreadable ({exc.strerror})") from None
        return check_config(raw, str(self.config_path))

    def status(self) -> dict[str, Any]:
        """status.json, checked; {} before the trainer wrote one."""
        try:
            raw = read_json(self.status_path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CorruptRunError(f"{self.status_path} is unreadable ({exc.strerror})") from None
        return check_status(raw, str(self.status_path))

    def metrics(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.metrics_path))

    def checkpoints(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first."""
        return find_checkpoints(self.checkpoints_dir)

    def damaged_checkpoints(self) -> list[tuple[int, Path, str]]:
        return find_damaged_checkpoints(self.checkpoints_dir)

    def checkpoint(self, which: str = "last") -> CheckpointInfo:
        """`last`, `best` (lowest val loss) or `step-N`."""
        ckpts = self.checkpoints()
        if not ckpts:
            raise UserError(f"run {self.name!r} has no checkpoint yet; resume it to train it (gptbench train --no-ui --resume {self.name})")
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

    def live_state(self, now: float | None = None) -> RunState:
        """The state to show (never raises: a damaged run is `corrupt`)."""
        return read_summary(self, now).state

    def request_stop(self) -> bool:
        """Ask the trainer to stop gracefully (it checkpoints and marks the run `stopped`)."""
        try:
            st = self.status()
        except CorruptRunError:
            return False
        if st.get("state") != RunState.RUNNING or self.live_state() != RunState.RUNNING:
            return False
        os.kill(int(st["pid"]), signal.SIGINT)
        return True


# ---- summaries ----------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """One row of `gptbench runs` and of the TUI's run browser."""

    name: str
    state: str
    step: int = 0
    max_iters: int = 0
    best_val_loss: float | None = None
    best_val_bpb: float | None = None  # the same, in bits per byte of text
    params: int = 0
    backend: str = ""
    device: str = ""
    tokenizer: str = ""
    corpus: str = ""
    created: float = 0.0
    duration: float = 0.0
    tokens_per_sec: float | None = None
    error: str = ""
    converted: bool = field(default=False)
    world_size: int = 1  # processes training it (now, or in its latest session)
    strategy: str = ""  # single | ddp | fsdp ("" before distributed training existed)
    init_from: str = ""  # short lineage: "gpt2", "base@step-200 +LoRA r8"; "" when trained from scratch
    score: float | None = None  # mean centred accuracy of the newest evaluated checkpoint (runstore.evals)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_summary(run: Run, now: float | None = None) -> RunSummary:
    """The summary of a run; never raises. Unreadable or mistyped files make it `corrupt`
    with the reason; a directory still being claimed is `starting`."""
    now = time.time() if now is None else now
    def why(exc: Exception) -> str:  # shown beside the run: paths relative to it
        return str(exc).replace(f"{run.path}{os.sep}", "")

    try:
        status = run.status() or None
    except CorruptRunError as exc:
        return RunSummary(run.name, RunState.CORRUPT.value, error=why(exc))
    try:
        cfg = run.config()
    except CorruptRunError as exc:
        if not run.config_path.exists():
            state = derive_state(status, has_config=False, claim=_claim(run.path), now=now)
            if state in (RunState.STARTING, RunState.CRASHED):
                error = "" if state is RunState.STARTING else f"killed while starting, before its config was written; start it again with --name {run.name}"
                return RunSummary(run.name, state.value, error=error)
        return RunSummary(run.name, RunState.CORRUPT.value, error=why(exc))
    st = status or {}
    train = cfg["train"]
    tok = cfg["tokenizer"]
    data = cfg["data"]
    state = derive_state(status, has_config=True, now=now)
    parallel = cfg.get("parallel", {})
    return RunSummary(
        name=run.name,
        state=state.value,
        step=int(st.get("step", 0)),
        max_iters=_int(train.get("max_iters")),
        best_val_loss=st.get("best_val_loss"),
        best_val_bpb=st.get("best_val_bpb"),
        params=cfg["params"],
        backend=cfg["backend"],
        device=cfg["device"],
        tokenizer=str(tok.get("spec") or tok.get("kind") or ""),
        corpus=str(data.get("name") or data.get("spec") or ""),
        created=float(cfg["created"]),
        duration=float(st.get("elapsed", 0.0)),
        tokens_per_sec=st.get("tokens_per_sec"),
        error=str(st.get("error", "")),
        converted="converted_from" in cfg,
        world_size=max(1, _int(st.get("world_size", parallel.get("world_size", 1)))),
        strategy=str(st.get("strategy") or parallel.get("strategy") or ""),
        init_from=lineage_label(cfg.get("init_from"), cfg.get("lora")),
        score=latest_core(run.path),
    )


def lineage_label(init_from: Any, lora: Any = None) -> str:
    """Short lineage for tables: `gpt2`, `base@step-200 +LoRA r8` ("" for a run from scratch)."""
    if not isinstance(init_from, dict):
        return ""
    text = str(init_from.get("label") or init_from.get("spec") or "")
    if isinstance(lora, dict) and lora.get("rank"):
        text += f" +LoRA r{lora['rank']}"
    return text


def _claim(path: Path) -> str:
    if not (path / LOCK).exists():
        return "none"
    return "held" if is_locked(path) else "abandoned"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
