"""`gptbench export-logs RUN --to tensorboard,wandb,trackio`: a run's metrics.jsonl written to trackers after the fact."""

from __future__ import annotations

import argparse
import shutil


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-logs", help="write a run's metrics to TensorBoard, W&B or trackio",
                       description="Replay a run's metrics.jsonl (train and eval records), task scores (evals.jsonl), config and name into trackers, "
                                   "offline: TensorBoard event files in RUN/tensorboard (replaced), a W&B offline run in "
                                   "RUN/wandb (replaced; the same W&B run id), trackio's local store.")
    p.add_argument("run", metavar="RUN", help="the run's name")
    p.add_argument("--to", required=True, metavar="TRACKERS", help="tensorboard, wandb, trackio (comma-separated)")
    p.set_defaults(func=run_export_logs)


def run_export_logs(args: argparse.Namespace) -> int:
    from gptbench.runstore import RunStore
    from gptbench.trackers import TRACKERS, open_trackers, parse_log_to, require
    from gptbench.trackers.base import run_metrics

    names = parse_log_to(args.to)
    if not names:
        from gptbench.errors import UserError

        raise UserError(f"--to names no tracker; choose from {', '.join(TRACKERS)}")
    require(names)
    store = RunStore(args.runs_dir)
    run = store.existing(args.run)
    with store.writer(args.run):  # the run's lock: not while it trains
        config = run.config()
        steps = run_metrics(run.path, run.metrics())
        for name in names:
            if name == "tensorboard":
                where = _tensorboard(run, config, steps)
            elif name == "wandb":
                where = _wandb(run, config, steps)
            else:
                _replay(open_trackers((name,), run.path, run.name, config), steps)
                where = "its local store (trackio show)"
            print(f"exported {len(steps)} records of {run.name} to {name}: {where}")
    return 0


def _tensorboard(run, config: dict, steps: list) -> str:
    from gptbench.fsutil import atomic_dir
    from gptbench.trackers.tensorboard_events import FOLDER, TensorBoardTracker

    with atomic_dir(run.path / FOLDER, replace=True) as stage:
        _replay([TensorBoardTracker(run.path, run.name, config, logdir=stage)], steps)
    return str(run.path / FOLDER)


def _wandb(run, config: dict, steps: list) -> str:
    """A new offline run in RUN/wandb (the old folder swapped out only once it is written),
    under the run's W&B id when it had one."""
    from gptbench.fsutil import atomic_dir
    from gptbench.trackers.wandb_offline import FOLDER, ID_FILE, WandbTracker

    with atomic_dir(run.path / FOLDER, replace=True) as stage:
        inner = stage / FOLDER  # wandb writes DIR/wandb/
        inner.mkdir()
        if (run.path / FOLDER / ID_FILE).is_file():
            shutil.copy2(run.path / FOLDER / ID_FILE, inner / ID_FILE)
        _replay([WandbTracker(run.path, run.name, config, root=stage)], steps)
        for child in list(inner.iterdir()):
            child.rename(stage / child.name)
        inner.rmdir()
    return str(run.path / FOLDER)


def _replay(trackers: list, steps: list) -> None:
    try:
        for step, values in steps:
            for t in trackers:
                t.log(step, values)
    finally:
        for t in trackers:
            t.close()
