"""`gptbench export-logs RUN --to tensorboard,trackio`: a run's metrics.jsonl written to trackers after the fact."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-logs", help="write a run's metrics to TensorBoard or trackio",
                       description="Replay a run's metrics.jsonl (train and eval records), config and name into trackers, "
                                   "offline: TensorBoard event files in RUN/tensorboard (replaced), trackio's local store.")
    p.add_argument("run", metavar="RUN", help="the run's name")
    p.add_argument("--to", required=True, metavar="TRACKERS", help="tensorboard, trackio (comma-separated)")
    p.set_defaults(func=run_export_logs)


def run_export_logs(args: argparse.Namespace) -> int:
    from gptbench.fsutil import atomic_dir
    from gptbench.runstore import RunStore
    from gptbench.trackers import open_trackers, parse_log_to, require
    from gptbench.trackers.base import metrics_of
    from gptbench.trackers.tensorboard_events import FOLDER

    names = parse_log_to(args.to)
    if not names:
        from gptbench.errors import UserError

        raise UserError("--to names no tracker; choose from tensorboard, trackio")
    require(names)
    store = RunStore(args.runs_dir)
    run = store.existing(args.run)
    with store.writer(args.run):  # the run's lock: not while it trains
        config = run.config()
        steps = [m for m in map(metrics_of, run.metrics()) if m is not None]
        for name in names:
            if name == "tensorboard":
                from gptbench.trackers.tensorboard_events import TensorBoardTracker

                with atomic_dir(run.path / FOLDER, replace=True) as stage:
                    _replay([TensorBoardTracker(run.path, run.name, config, logdir=stage)], steps)
                where = str(run.path / FOLDER)
            else:
                _replay(open_trackers((name,), run.path, run.name, config), steps)
                where = "its local store (trackio show)"
            print(f"exported {len(steps)} records of {run.name} to {name}: {where}")
    return 0


def _replay(trackers: list, steps: list) -> None:
    try:
        for step, values in steps:
            for t in trackers:
                t.log(step, values)
    finally:
        for t in trackers:
            t.close()
