"""Reading a run directory: every reader of a run (CLI, TUI, trainer resuming) goes here.

Readers never write and never trust a file: config and status are checked against their
schemas, checkpoints are found by listing the directory (a checkpoint exists when its
weights file is complete; a killed write leaves only a `.tmp`), and a checkpoint's
training state is checked name by name, shape by shape, before a backend sees it. A
damaged file raises `CorruptRunError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from gptbench.errors import UserError
from gptbench.runstore.evals import latest_core
from gptbench.runstore.format import (
    CHECKPOINT_RE,
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
    state_file,
)


def read_json(path: Path) -> Any:
    """A JSON file; CorruptRunError (naming the file) if it is not valid UTF-8 JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunError(f"{path} is unreadable: not valid JSON ({str(exc)[:80]})") from None


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
    except (FileNotFoundError, IsADirectoryError):
        return


class JsonlTail:
    """Incremental reader of an append-only JSONL file: `poll()` returns only new records.

    Keeps the byte offset of the last complete line, so a torn line is re-read once it is
    complete; a file that shrank or was replaced (a resume rewinds the metrics) restarts
    from the beginning.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def poll(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except OSError:
            return []
        if st.st_size < self.offset or (self.inode is not None and st.st_ino != self.inode):
            self.offset = 0
        self.inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(st.st_size - self.offset)
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


# ---- checkpoints ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    val_loss: float | None
    path: Path  # the weights file; its training state is `state_path`

    @property
    def state_path(self) -> Path:
        return self.path.with_name(state_file(self.step))


def find_damaged_checkpoints(directory: Path) -> list[tuple[int, Path, str]]:
    """Weights files with a checkpoint's name that are not complete: (step, path, why).
    An atomic write never leaves one (a killed write leaves a `.tmp`), so these are
    damaged files, shown to the user rather than silently skipped."""
    from gptbench.backends.weights import WeightsError, read_header

    out = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        m = CHECKPOINT_RE.match(entry.name)
        if not m:
            continue
        try:
            read_header(entry.path)
        except (WeightsError, OSError) as exc:
            out.append((int(m.group(1)), Path(entry.path), str(exc)))
    return sorted(out)


def find_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """The complete checkpoints in `directory`, oldest first, found by listing it.

    A checkpoint is complete when its weights file (written last, after its state) has a
    readable header that covers the whole file and names its own step. Version 1 runs
    kept val losses only in `index.json`; it is read for them and for nothing else."""
    from gptbench.backends.weights import WeightsError, read_header

    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    legacy: dict[int, float | None] = {}
    out = []
    for entry in entries:
        m = CHECKPOINT_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        step = int(m.group(1))
        try:
            _, meta, _ = read_header(entry.path)
        except (WeightsError, OSError):
            continue  # incomplete or damaged: not a checkpoint
        if meta.get("step", str(step)) != str(step):
            continue  # a renamed file: its header names another step
        val = _float_or_none(meta.get("val_loss"))
        if val is None and "val_loss" not in meta:
            if not legacy:
                legacy = _legacy_index(Path(directory) / "index.json")
            val = legacy.get(step)
        out.append(CheckpointInfo(step, val, Path(entry.path)))
    return sorted(out, key=lambda c: c.step)


def _float_or_none(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _legacy_index(path: Path) -> dict[int, float | None]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return {int(e["step"]): _float_or_none(e.get("val_loss")) for e in entries}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {-1: None}  # unreadable or absent: remember that it was looked at


@dataclass
class TrainingState:
    """A checkpoint's training state, validated: what `Trainer` installs to resume exactly."""

    optimizer: dict[str, np.ndarray]
    optimizer_meta: dict[str, Any]
    rng: dict[str, np.ndarray]  # empty when the state was saved by another backend
    trainer: dict[str, Any]  # step, backend, batch_rng, best_val_loss, tokens_seen, elapsed


TRAINER_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,), "backend": (str,), "optimizer": (dict,), "batch_rng": (dict,),
    "best_val_loss": (int, float, type(None)), "tokens_seen": (int,), "elapsed": (int, float),
}


def load_training_state(
    ckpt: CheckpointInfo,
    optimizer_shapes: Mapping[str, tuple[int, ...]],
    rng_shapes: Mapping[str, tuple[str, tuple[int, ...]]],
    backend: str,
) -> TrainingState:
    """Read and check `ckpt`'s state file against what the backend expects. Raises
    CorruptRunError naming the file and the first thing wrong with it."""
    from gptbench.backends.weights import WeightsError, load_tensors
    from gptbench.runstore.format import check_fields

    path = ckpt.state_path
    where = str(path)
    if not path.is_file():
        raise CorruptRunError(f"{where} is missing, so step {ckpt.step} cannot be resumed exactly; delete {ckpt.path.name} to resume from the checkpoint before it")
    try:
        tensors, meta = load_tensors(path)
    except WeightsError as exc:
        raise CorruptRunError(str(exc)) from None
    try:
        trainer = json.loads(meta["trainer"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CorruptRunError(f"{where} is not a gptbench training state (no trainer state in its header)") from None
    trainer = check_fields(trainer, TRAINER_STATE_FIELDS, {}, f"{where} (trainer state)")
    if trainer["step"] != ckpt.step:
        raise CorruptRunError(f"{where} says step {trainer['step']} but belongs to step {ckpt.step}")
    opt_meta = check_fields(trainer["optimizer"], {"step": (int,)}, {"grad_scale": (int, float)}, f"{where} (optimizer)")
    if opt_meta["step"] < 0:
        raise CorruptRunError(f"{where}: optimizer step must be >= 0, got {opt_meta['step']}")
    _check_batch_rng(trainer["batch_rng"], where)
    if trainer["tokens_seen"] < 0 or trainer["elapsed"] < 0:
        raise CorruptRunError(f"{where}: tokens_seen and elapsed must be >= 0")
    optimizer = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    _check_tensor_set(optimizer, optimizer_shapes, where, "optimizer moments", exact=True)
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    if trainer["backend"] == backend:
        for name, (dtype, shape) in rng_shapes.items():
            got = rng.get(name)
            if got is None or got.dtype.name != dtype or tuple(got.shape) != tuple(shape):
                found = "missing" if got is None else f"{got.dtype.name} {list(got.shape)}"
                raise CorruptRunError(f"{where}: RNG state {name!r} is {found}, expected {dtype} {list(shape)} (truncated or damaged)")
    else:
        rng = {}  # framework RNG states do not translate across backends
    return TrainingState(optimizer, opt_meta, rng, trainer)


def _check_batch_rng(state: dict[str, Any], where: str) -> None:
    try:
        bits = getattr(np.random, state["bit_generator"])()
        bits.state = state
    except Exception:  # noqa: BLE001 - numpy raises TypeError/ValueError/KeyError/AttributeError
        raise CorruptRunError(f"{where}: the batch RNG state is damaged (not a numpy bit-generator state)") from None


def _check_tensor_set(tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], where: str, what: str, *, exact: bool) -> None:
    missing = [n for n in shapes if n not in tensors]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CorruptRunError(f"{where} has no {what} for {missing[0]}{more}, so resuming would not be exact; delete it to resume from the checkpoint before it")
    extra = [n for n in tensors if n not in shapes]
    if exact and extra:
        raise CorruptRunError(f"{where} has unexpected {what} {extra[0]} (a different model?)")
    for name, shape in shapes.items():
        arr = tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise CorruptRunError(f"{where}: {name} has shape {list(arr.shape)}, the model needs {list(shape)}")
        if arr.dtype.kind != "f":
            raise CorruptRunError(f"{where}: {name} has dtype {arr.dtype.name}; {what} are floating point")
        if not np.isfinite(arr).all():
            raise CorruptRunError(f"{where}: {name} holds NaN or infinite values")


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
    from gptbench.runstore.writer import is_locked

    if not (path / LOCK).exists():
        return "none"
    return "held" if is_locked(path) else "abandoned"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
