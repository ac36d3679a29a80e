"""Evaluation scores recorded in a run: `evals.jsonl`, one record per task and checkpoint.

    runs/<name>/evals.jsonl   {"task", "step", "kind", "n", "acc", "acc_norm", "centered",
                               "bpb", "shots", "limit", "source", "time"} a line

`gptbench eval --run` and training's `--eval-task` write through `record_scores` only: under
an flock of `.evals.lock` (so an eval beside a live trainer cannot lose a record) the file
is rewritten atomically with the new records replacing any of the same task and step. The
TUI and `gptbench runs` read through `read_scores` and `core_at_latest` (the run summary's
`score`). Functions take the run's folder, so the reader can import this module.
"""

from __future__ import annotations

import fcntl
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from gptbench.fsutil import atomic_write_text

EVALS = "evals.jsonl"
EVALS_LOCK = ".evals.lock"


@dataclass(frozen=True)
class EvalScore:
    """One task's scores at one checkpoint of a run."""

    task: str
    step: int
    kind: str  # "mc" | "bpb" | "gen"
    n: int
    acc: float | None = None
    acc_norm: float | None = None
    centered: float | None = None
    bpb: float | None = None
    shots: int = 0
    limit: int | None = None
    source: str = ""
    time: float = 0.0

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "EvalScore | None":
        """A record read back, or None for one of another shape (skipped, like a torn line)."""
        try:
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
        except TypeError:
            return None


def read_scores(run_dir: Path) -> list[EvalScore]:
    """Every intact record of the run in `run_dir`, in file order (by step, then task); a
    line of another shape is skipped."""
    try:
        lines = (run_dir / EVALS).read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        score = EvalScore.from_dict(obj) if isinstance(obj, dict) else None
        if score is not None and isinstance(score.task, str) and isinstance(score.step, int):
            found.append(score)
    return found


def record_scores(run_dir: Path, source: str, results: Iterable[Any], *, step: int | None = None, limit: int | None = None) -> list[EvalScore]:
    """Record `results` (evaluation `TaskResult`s) at `step` (default: the step in `source`,
    "name@step-N"), replacing the run's earlier records of the same task and step."""
    if step is None:
        step = int(source.rpartition("@step-")[2])
    now = time.time()
    new = [EvalScore(r.task, step, r.kind, r.n, r.acc, r.acc_norm, r.centered, r.bpb, r.shots, limit, source, now) for r in results]
    keys = {(s.task, s.step) for s in new}
    with open(run_dir / EVALS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = [s for s in read_scores(run_dir) if (s.task, s.step) not in keys]
        rows = sorted(kept + new, key=lambda s: (s.step, s.task))
        atomic_write_text(run_dir / EVALS, "".join(json.dumps(asdict(s)) + "\n" for s in rows))
    return new


def score_series(run_dir: Path) -> dict[str, tuple[tuple[int, ...], tuple[float, ...]]]:
    """Per task, its scored steps and accuracy (bits per byte for a text, the exact-match
    rate for a generative task), for charts."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for s in read_scores(run_dir):
        value = s.bpb if s.kind == "bpb" else s.acc
        if isinstance(value, (int, float)):
            steps, values = out.setdefault(s.task, ([], []))
            steps.append(s.step)
            values.append(float(value))
    return {task: (tuple(steps), tuple(values)) for task, (steps, values) in out.items()}


def latest_core(run_dir: Path) -> float | None:
    """The run's score for tables: mean centred accuracy at its newest evaluated step."""
    core = core_at_latest(read_scores(run_dir))
    return None if core is None else core[1]


def core_at_latest(scores: list[EvalScore]) -> tuple[int, float, list[str]] | None:
    """(step, mean centred accuracy, tasks) at the newest step with multiple-choice scores."""
    mc = [s for s in scores if s.kind == "mc" and s.centered is not None]
    if not mc:
        return None
    step = max(s.step for s in mc)
    at = [s for s in mc if s.step == step]
    return step, sum(s.centered for s in at) / len(at), [s.task for s in at]  # type: ignore[misc]
