"""What a tracker is (log a step's metrics, close) and the metric names a run's records and task scores become."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol

from gptbench.errors import UserError

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # tracker -> the gptbench extra that installs it

# metrics.jsonl field -> tracker metric name, per record type
NAMES = {
    "train": {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_sec": "train/tokens_per_sec",
              "elapsed": "train/elapsed"},
    "eval": {"val_loss": "val/loss", "val_bpb": "val/bpb", "val_ppl": "val/ppl", "train_loss": "eval/train_loss"},
}


class Tracker(Protocol):
    name: str

    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def metrics_of(record: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
    """A metrics.jsonl record as (step, {metric name: value}); None for a record no tracker
    shows (a text sample, an unknown type). Missing values (None) are left out."""
    names = NAMES.get(record.get("type", ""))
    if names is None:
        return None
    values = {name: float(record[key]) for key, name in names.items()
              if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)}
    return int(record["step"]), values


SCORE_FIELDS = ("acc", "acc_norm", "centered", "bpb")  # of an evaluation result / evals.jsonl record


def task_label(task: str) -> str:
    """A task's name in a metric: `hellaswag` stays, a file task (`mc:/data/items.jsonl`) is its file's stem."""
    spec = task.split(":", 1)[1] if ":" in task else task
    return Path(spec).stem if ("/" in spec or "." in spec) else spec


def scores_of(step: int, results: Iterable[Any]) -> tuple[int, dict[str, float]] | None:
    """Task scores at `step` (`--eval-task` results, or evals.jsonl records) as
    `score/TASK/FIELD` metrics; None when there are none."""
    values = {f"score/{task_label(r.task)}/{f}": float(getattr(r, f)) for r in results for f in SCORE_FIELDS
              if isinstance(getattr(r, f, None), (int, float)) and not isinstance(getattr(r, f), bool)}
    return (step, values) if values else None


def run_metrics(run_dir: Path, records: Iterable[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """Everything a tracker shows of a finished run, in step order: its metrics.jsonl
    `records` and the task scores in its evals.jsonl (after the records of their step)."""
    from gptbench.runstore.evals import read_scores

    steps = [m for m in map(metrics_of, records) if m is not None]
    by_step: dict[int, list[Any]] = {}
    for score in read_scores(run_dir):
        by_step.setdefault(score.step, []).append(score)
    steps += [m for step, scores in by_step.items() if (m := scores_of(step, scores)) is not None]
    return sorted(steps, key=lambda m: m[0])  # stable: a step's records keep their order


def missing(name: str, module: str) -> UserError:
    """The one line for a tracker whose package is not installed."""
    return UserError(f"--log-to {name} needs the {module} package: pip install \"gptbench[{EXTRAS[name]}]\"")
