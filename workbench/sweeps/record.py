"""The sweep's own record: `RUNS/.sweeps/NAME/sweep.json`, its trials and their state, written atomically.

    runs/.sweeps/<name>/
      sweep.json        the plan (base settings, axes, metric) and every trial: its run name,
                        swept settings, `gptbench train` flags, state and result
      trial-NNN.out     what the trial's `gptbench train --no-ui` printed
      .lock             held by the one `gptbench sweep` process running it

A hidden folder, so the runs directory lists the trials (ordinary runs named NAME-NNN)
and never the sweep itself. Trial states: pending, running, finished, failed, stopped
(interrupted: run again on resume), pruned (stopped early by the median rule).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptbench.errors import UserError
from gptbench.fsutil import atomic_write_json
from gptbench.runstore.format import validate_run_name

SWEEPS_DIR = ".sweeps"
RECORD = "sweep.json"
SWEEP_FORMAT_VERSION = 1
DONE = ("finished", "failed", "pruned")  # a resumed sweep never runs these again
METRICS = ("val_bpb", "val_loss")


@dataclass
class Trial:
    index: int
    run: str
    settings: dict[str, Any]  # the swept settings, by path
    argv: list[str]  # `gptbench train` flags building the trial's spec, whole
    state: str = "pending"
    result: dict[str, Any] = field(default_factory=dict)  # best_val_bpb, best_val_loss, step, error
    started: float | None = None
    ended: float | None = None


@dataclass
class SweepRecord:
    name: str
    preset: str
    axes: list[dict[str, Any]]
    metric: str
    trials: list[Trial]
    created: float = field(default_factory=time.time)
    early_stop: bool = False
    format_version: int = SWEEP_FORMAT_VERSION

    @property
    def swept(self) -> list[str]:
        return [a["path"] for a in self.axes]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepRecord":
        if data.get("format_version") != SWEEP_FORMAT_VERSION:
            raise UserError(f"sweep {data.get('name')!r} has record format {data.get('format_version')!r}; this gptbench reads {SWEEP_FORMAT_VERSION}")
        trials = [Trial(**t) for t in data["trials"]]
        return cls(**{**data, "trials": trials})


def sweep_dir(root: Path, name: str) -> Path:
    return Path(root) / SWEEPS_DIR / validate_run_name(name)


def save(root: Path, record: SweepRecord) -> None:
    atomic_write_json(sweep_dir(root, record.name) / RECORD, record.to_dict())


def load(root: Path, name: str) -> SweepRecord:
    path = sweep_dir(root, name) / RECORD
    if not path.is_file():
        have = ", ".join(sweep_names(root)[:8]) or "none"
        raise UserError(f"no sweep named {name!r} in {root} (sweeps: {have})")
    try:
        return SweepRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}); delete it to forget the sweep (its runs stay)") from None


def sweep_names(root: Path) -> list[str]:
    folder = Path(root) / SWEEPS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / RECORD).is_file())


def sweep_of_run(root: Path) -> dict[str, str]:
    """Run name -> the sweep it is a trial of, for every sweep in the runs directory."""
    out: dict[str, str] = {}
    for name in sweep_names(root):
        try:
            out.update({t.run: name for t in load(root, name).trials})
        except UserError:
            continue
    return out
