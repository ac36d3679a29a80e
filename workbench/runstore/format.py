"""The run directory format, version 2: file names, run states, record types, schemas.

The reader and the writer both take every name and rule from here, so the format has one
definition. Version 1 runs (gptbench 0.1, which also kept `checkpoints/index.json`) are
read as they are; nothing here needs the index.
"""

from __future__ import annotations

import enum
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from gptbench.errors import UserError

RUN_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
TMP_SUFFIX = ".tmp"  # atomic writes stage `.<name>.<random>.tmp` beside their target
CHECKPOINT_RE = re.compile(r"^step-(\d+)\.safetensors$")
STATE_RE = re.compile(r"^step-(\d+)\.state\.safetensors$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

HEARTBEAT_INTERVAL_S = 2.0  # a live trainer rewrites status.json at least this often...
HEARTBEAT_STALE_S = 120.0  # ...so a heartbeat this old means it is hung or on another host


def weights_file(step: int) -> str:
    return f"step-{step}.safetensors"


def state_file(step: int) -> str:
    return f"step-{step}.state.safetensors"


def validate_run_name(name: str) -> str:
    if not isinstance(name, str) or not name or ".." in name or not NAME_RE.match(name):
        raise UserError(
            f"invalid run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '..' or spaces)"
        )
    return name


class RunState(str, enum.Enum):
    """Every state a run is shown in. The trainer writes the first five; the others are
    derived by `derive_state` from what is (or is not) on disk."""

    STARTING = "starting"  # claimed by a trainer still loading data and building the model
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # Ctrl-C, SIGTERM, SIGHUP, or the TUI's Stop: resumable
    FAILED = "failed"  # an error (its reason in status.json and log.txt): resumable
    NEW = "new"  # config written, no status yet (a trainer between the two writes)
    CRASHED = "crashed"  # `running`/`starting`, but its process on this host is gone
    STALE = "stale"  # `running`, but no heartbeat for HEARTBEAT_STALE_S (hung, or another host)
    CORRUPT = "corrupt"  # config or status unreadable; the summary says why

    def __str__(self) -> str:
        return self.value


WRITTEN_STATES = (RunState.STARTING, RunState.RUNNING, RunState.FINISHED, RunState.STOPPED, RunState.FAILED)
LIVE_STATES = frozenset({RunState.STARTING, RunState.RUNNING, RunState.NEW})  # can change with no file changing


# ---- metric records: one JSON object per line of metrics.jsonl ---------------------------
@dataclass(frozen=True)
class TrainRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float | None
    elapsed: float
    time: float
    type: str = "train"


@dataclass(frozen=True)
class EvalRecord:
    step: int
    train_loss: float
    val_loss: float
    val_ppl: float
    elapsed: float
    time: float
    val_bpb: float | None = None  # val loss in bits per byte of text (tokenizer-independent); absent before 0.2
    type: str = "eval"


@dataclass(frozen=True)
class SampleRecord:
    step: int
    text: str
    time: float
    type: str = "sample"


MetricRecord = TrainRecord | EvalRecord | SampleRecord


def record_dict(record: MetricRecord) -> dict[str, Any]:
    return asdict(record)


# ---- schemas: the types a reader insists on ------------------------------------------------
class CorruptRunError(UserError):
    """A run file that exists but cannot be used; the message names the file and why."""


INT = (int,)
NUM = (int, float)
STR = (str,)
OPT = (type(None),)

CONFIG_SCHEMA: dict[str, tuple[type, ...]] = {
    "format_version": INT, "name": STR, "created": NUM, "preset": STR, "model": (dict,), "train": (dict,),
    "data": (dict,), "tokenizer": (dict,), "backend": STR, "device": STR, "params": INT,
}
CONFIG_OPTIONAL: dict[str, tuple[type, ...]] = {
    "device_request": STR, "dtype": STR, "compile": (bool, type(None)), "param_breakdown": (dict,),
    "versions": (dict,), "command": STR + OPT, "converted_from": (dict,),
    "parallel": (dict,),  # the latest session's processes: world_size, strategy, comm, ...
    # fine-tuning: the source reference (gptbench.finetune: spec, kind, label, path, sha256)
    # and, for LoRA runs, its settings and the number of adapter parameters
    "init_from": (dict,), "lora": (dict,), "trainable_params": INT,
}
STATUS_SCHEMA: dict[str, tuple[type, ...]] = {"state": STR}
STATUS_OPTIONAL: dict[str, tuple[type, ...]] = {
    "pid": INT + OPT, "host": STR + OPT, "heartbeat": NUM, "started": NUM, "step": INT, "max_iters": INT,
    "best_val_loss": NUM + OPT, "best_val_bpb": NUM + OPT, "tokens_per_sec": NUM + OPT, "elapsed": NUM, "error": STR, "eval_seconds": NUM,
    # the processes training it (tokens_per_sec is their global rate); pid is rank 0's
    "world_size": INT, "strategy": STR, "comm": STR, "backend": STR, "peak_memory": (list,),
}


def check_fields(obj: Any, required: Mapping[str, tuple[type, ...]], optional: Mapping[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    """`obj` as a dict whose listed keys have the listed types (bool is not a number;
    NaN and infinities are not numbers either). Raises CorruptRunError naming the key."""
    if not isinstance(obj, dict):
        raise CorruptRunError(f"{where} is not a JSON object")
    for key, types in list(required.items()) + list(optional.items()):
        if key not in obj:
            if key in required:
                raise CorruptRunError(f"{where} has no {key!r}")
            continue
        value = obj[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise CorruptRunError(f"{where}: {key!r} must be {want}, got {value!r}")
    return obj


def check_config(obj: Any, where: str) -> dict[str, Any]:
    cfg = check_fields(obj, CONFIG_SCHEMA, CONFIG_OPTIONAL, where)
    if cfg["format_version"] not in READABLE_VERSIONS:
        raise CorruptRunError(
            f"{where} has run format version {cfg['format_version']}; this gptbench reads "
            f"{', '.join(map(str, READABLE_VERSIONS))} (is gptbench older than the run?)"
        )
    return cfg


def check_status(obj: Any, where: str) -> dict[str, Any]:
    st = check_fields(obj, STATUS_SCHEMA, STATUS_OPTIONAL, where)
    if st["state"] not in {s.value for s in WRITTEN_STATES}:
        raise CorruptRunError(f"{where}: unknown state {st['state']!r}")
    return st


# ---- the one place a shown state is derived ------------------------------------------------
def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def derive_state(
    status: dict[str, Any] | None,
    *,
    has_config: bool,
    claim: str = "none",
    now: float | None = None,
    this_host: str | None = None,
) -> RunState:
    """The state a watcher shows, from a validated status (None = no status.json).

    `claim` describes a folder without a config: "held" (its lock is held: a trainer is
    claiming it), "abandoned" (a lock file nobody holds) or "none" (no lock file). A
    trainer whose process on this host is gone is `crashed`; one with no heartbeat for
    HEARTBEAT_STALE_S is `stale`."""
    now = time.time() if now is None else now
    this_host = this_host or os.uname().nodename
    if not has_config and claim == "held":
        return RunState.STARTING
    if status is None:
        if has_config:
            return RunState.NEW
        return RunState.CRASHED if claim == "abandoned" else RunState.CORRUPT
    state = RunState(status["state"])
    if state in (RunState.RUNNING, RunState.STARTING):
        same_host = status.get("host") in (None, this_host)
        if same_host and not pid_alive(status.get("pid")):
            return RunState.CRASHED
        if state is RunState.RUNNING and now - float(status.get("heartbeat", 0.0)) > HEARTBEAT_STALE_S:
            return RunState.STALE
    return state


def software_versions() -> dict[str, str]:
    """config.json's `versions`: what produced the run, for the record."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("gptbench", "numpy", "torch", "mlx", "tiktoken"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
