"""`gptbench sweep`: grid and random search over a run's settings, each trial an ordinary run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptbench.data.sources import data_help
from gptbench.errors import UserError
from gptbench.spec.cli import add_spec_arguments, overrides_from_args
from gptbench.spec.run import default_run_name

EPILOG = """examples:
  gptbench sweep --preset modern --grid lr=1e-3,3e-3 --grid n_layer=4,6 --max-time 2m --name lr-depth
  gptbench sweep --preset modern --random lr=log:1e-4..1e-2 --trials 12 --max-time 1m --name rnd
  gptbench sweep --resume lr-depth      # after a crash or Ctrl-C: finished trials are kept
  gptbench runs --sweep lr-depth        # the trials, best first
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a family of runs over a grid or random ranges of settings",
                       description="Grid and random search over any `gptbench train` setting. Each trial is an ordinary run "
                                   "named NAME-NNN (trained by `gptbench train --no-ui`); the other flags set what every trial shares.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="try every value (repeatable: the product of the grids)")
    p.add_argument("--random", action="append", default=[], metavar="KEY=RANGE",
                   help="draw per trial from log:A..B, lin:A..B or choice:V1,V2 (repeatable)")
    p.add_argument("--trials", type=int, help="random draws (per grid point when combined with --grid)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="trials trained at once (default 1)")
    p.add_argument("--metric", choices=("val_bpb", "val_loss"), default="val_bpb", help="what ranks the trials, lower is better (default val_bpb)")
    p.add_argument("--early-stop", action="store_true",
                   help="median rule: stop a trial whose best value so far is worse than the median of at least 3 finished trials at the same step")
    p.add_argument("--resume", metavar="NAME", help="continue sweep NAME: finished trials are kept, interrupted ones resumed")
    p.add_argument("--preset", help="the preset every trial starts from (see gptbench train --help)")
    p.add_argument("--config", metavar="FILE", help="TOML file with settings every trial shares")
    add_spec_arguments(p, data_help())
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from gptbench.runstore import RunStore
    from gptbench.runstore.writer import RunLock
    from gptbench.sweeps import record as rec
    from gptbench.sweeps.results import summary_table
    from gptbench.sweeps.runner import SweepRunner

    if args.parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {args.parallel}")
    root = RunStore(args.runs_dir).root
    if args.resume:
        if args.grid or args.random or args.trials is not None or overrides_from_args(args) or args.preset or args.config:
            raise UserError("--resume continues a sweep as it was planned; drop the other settings (--parallel may change)")
        record = rec.load(root, args.resume)
    else:
        record = plan_sweep(args, root)
    folder = rec.sweep_dir(root, record.name)
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    if not lock.try_acquire():
        raise UserError(f"sweep {record.name!r} is being run by another gptbench sweep process; wait for it or stop it")
    try:
        rec.save(root, record)
        left = [t for t in record.trials if t.state not in rec.DONE]
        print(f"sweep {record.name}: {len(left)} of {len(record.trials)} trials to run, {args.parallel} at a time "
              f"(record: {folder / rec.RECORD})", flush=True)
        try:
            SweepRunner(root, record, args.parallel, say=lambda line: print(line, flush=True)).run()
        except KeyboardInterrupt:
            print(f"sweep {record.name} interrupted; continue with: gptbench sweep --resume {record.name}", flush=True)
            raise
    finally:
        lock.release()
    print(summary_table(record))
    failed = [t.run for t in record.trials if t.state == "failed"]
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)} (see gptbench runs and {folder})")
    return 1 if failed else 0


def plan_sweep(args: argparse.Namespace, root: Path) -> Any:
    """The sweep's record, every trial's spec built and checked: nothing is created when
    any input is wrong."""
    from gptbench.runstore.format import validate_run_name
    from gptbench.spec import resolve_spec
    from gptbench.spec.cli import request_argv
    from gptbench.spec.toml import load_toml
    from gptbench.sweeps import record as rec
    from gptbench.sweeps.space import parse_grid, parse_random, plan_trials

    overrides = overrides_from_args(args)
    name = validate_run_name(overrides.pop("name", None) or default_run_name("sweep"))
    grid, rand = [parse_grid(g) for g in args.grid], [parse_random(r) for r in args.random]
    toml = load_toml(args.config) if args.config else None
    base = resolve_spec(args.preset, toml, overrides)
    points = plan_trials(grid, rand, args.trials, base.train.seed)
    if rec.sweep_dir(root, name).exists():
        raise UserError(f"sweep {name!r} exists already; continue it with --resume {name}, or choose another --name")
    trials = []
    for i, settings in enumerate(points):
        run = validate_run_name(f"{name}-{i:03d}")
        if (root / run).exists():
            raise UserError(f"a run named {run!r} exists already in {root}; choose another sweep --name")
        given = {**overrides, "train.seed": base.train.seed + i, **settings, "name": run}
        try:
            spec = resolve_spec(args.preset, toml, given)
        except UserError as exc:
            raise UserError(f"trial {i} ({', '.join(f'{k}={v}' for k, v in settings.items())}): {exc}") from None
        trials.append(rec.Trial(i, run, settings, request_argv(spec)))
    return rec.SweepRecord(name, base.preset, [a.to_dict() for a in grid + rand], args.metric, trials, early_stop=args.early_stop)
