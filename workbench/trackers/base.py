"""What a tracker is (log a step's metrics, close) and the metric names a run's records become."""

from __future__ import annotations

from typing import Any, Protocol

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


def missing(name: str, module: str) -> UserError:
    """The one line for a tracker whose package is not installed."""
    return UserError(f"--log-to {name} needs the {module} package: pip install \"gptbench[{EXTRAS[name]}]\"")
