"""Trackers: a run's metrics mirrored where users already look (TensorBoard, W&B, trackio), offline.

`open_trackers(names, ...)` opens the trackers `--log-to` names; each is an optional extra,
imported only when asked for (a missing one is a one-line `UserError` with its install
command). The trainer mirrors every record it appends to metrics.jsonl (train and eval;
samples are text and stay in the run) and its `--eval-task` scores, and `gptbench
export-logs` replays a finished run's metrics.jsonl and evals.jsonl through the same code. Weights & Biases is not offered: its library
no longer ships a reader for its offline run files, so a mirror could not be verified here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptbench.errors import UserError
from gptbench.trackers.base import Tracker, metrics_of, missing, run_metrics, scores_of

TRACKERS = ("tensorboard", "wandb", "trackio")

__all__ = ["TRACKERS", "Tracker", "metrics_of", "open_trackers", "parse_log_to", "require", "run_metrics", "scores_of"]


def parse_log_to(text: str) -> tuple[str, ...]:
    """`tensorboard,wandb` -> its names, checked (an empty string: none)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip()) if text else ()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UserError(f"unknown tracker {unknown[0]!r} in --log-to; choose from {', '.join(TRACKERS)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def require(names: tuple[str, ...]) -> None:
    """Refuse, in one line, a tracker whose package is not installed (checked before a run
    is created, without importing it)."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            raise missing(name, name)


def open_trackers(names: tuple[str, ...], run_dir: Path, run_name: str, config: dict[str, Any]) -> list[Tracker]:
    """The trackers `names` asks for, open; none opened when any one cannot be."""
    opened: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                from gptbench.trackers.tensorboard_events import TensorBoardTracker

                opened.append(TensorBoardTracker(run_dir, run_name, config))
            elif name == "wandb":
                from gptbench.trackers.wandb_offline import WandbTracker

                opened.append(WandbTracker(run_dir, run_name, config))
            elif name == "trackio":
                from gptbench.trackers.trackio_store import TrackioTracker

                opened.append(TrackioTracker(run_dir, run_name, config))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened

