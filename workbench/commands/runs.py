"""`gptbench runs`: list runs as a table (fitted to the terminal) or as JSON, and a sweep's trials best-first.

`--json` prints one object per run (schema version `JSON_SCHEMA`, documented in README:
Experiments): the summary fields, `damaged_checkpoints`, `settings` (every setting's value
by path, as `gptbench train` flags would set it; null for a run without a readable config)
and `sweep` (the sweep it is a trial of, or null).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from typing import Callable

from gptbench.backends.spec import format_params
from gptbench.runstore import Run, RunStore, RunSummary
from gptbench.sources import DamagedCheckpoint

# (header, cell, right-aligned), most important first: a narrow terminal drops columns
# from the end of this list until the rest fit, rather than cutting every cell.
COLUMNS: list[tuple[str, Callable[[RunSummary], str], bool]] = [
    ("name", lambda s: s.name, False),
    ("status", lambda s: s.state, False),
    ("step", lambda s: "converted" if s.converted else (f"{s.step}/{s.max_iters}" if s.max_iters else "-"), True),
    ("best val", lambda s: f"{s.best_val_loss:.4f}" if s.best_val_loss is not None else "-", True),
    ("params", lambda s: format_params(s.params) if s.params else "-", True),
    # bits per byte compare runs whatever their tokenizer (losses only with the same one)
    ("bits/byte", lambda s: f"{s.best_val_bpb:.4f}" if s.best_val_bpb is not None else "-", True),
    # `gptbench eval`: mean centred accuracy (0 = chance, 1 = all right) of the newest scored checkpoint
    ("score", lambda s: f"{s.score:.3f}" if s.score is not None else "-", True),
    ("backend", lambda s: s.backend or "-", False),
    ("tokenizer", lambda s: s.tokenizer or "-", False),
    ("created", lambda s: time.strftime("%Y-%m-%d %H:%M", time.localtime(s.created)) if s.created else "-", False),
    ("device", lambda s: (s.device or "-") + (f" ×{s.world_size}" if s.world_size > 1 else ""), False),
    ("from", lambda s: s.init_from or "-", False),  # lineage: what a fine-tuned run started from
]
JSON_SCHEMA = 1  # of `gptbench runs --json`: fields are only ever added; a removal or change bumps it
CELL_PADDING = 3  # rich's box: one space each side plus a rule
DAMAGED_MARK = " !"  # after the status of a run with a damaged checkpoint (explained under the table)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list runs", description="List every run in the runs directory.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table (every run's settings and results)")
    p.add_argument("--sweep", metavar="NAME", help="the trials of sweep NAME with their swept settings and results, best first")
    p.set_defaults(func=run_runs)


def fit_columns(summaries: list[RunSummary], width: int) -> list[int]:
    """Indexes of the columns to show at `width`: all that fit, in priority order (name
    and status always)."""
    widths = [max(len(header), *(len(cell(s)) for s in summaries)) + CELL_PADDING for header, cell, _ in COLUMNS]
    keep = list(range(len(COLUMNS)))
    while len(keep) > 2 and sum(widths[i] for i in keep) + 1 > width:
        keep.pop()
    return keep


def box_table(title: str, headers: list[str], right: list[bool], rows: list[list[str]], width: int) -> str:
    """A table in rich's default box (heavy head), cells on one line each: widths fit the
    longest cell, and when even those overflow `width` the widest column is cut with `…`."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    while sum(widths) + CELL_PADDING * len(widths) + 1 > width and max(widths) > 1:
        widths[widths.index(max(widths))] -= 1

    def line(cells: list[str], edge: str, sep: str, end: str) -> str:
        out = []
        for cell, w, r in zip(cells, widths, right):
            cell = cell if len(cell) <= w else cell[: w - 1] + "…"
            out.append(f" {cell:>{w}} " if r else f" {cell:<{w}} ")
        return edge + sep.join(out) + end

    def rule(left: str, fill: str, sep: str, end: str) -> str:
        return left + sep.join(fill * (w + 2) for w in widths) + end

    body = [line(r, "│", "│", "│") for r in rows]
    return "\n".join([title, rule("┏", "━", "┳", "┓"), line(headers, "┃", "┃", "┃"), rule("┡", "━", "╇", "┩"),
                      *body, rule("└", "─", "┴", "┘")])


def damaged_checkpoints(store: RunStore, summaries: list[RunSummary]) -> dict[str, list[dict[str, object]]]:
    """Each run's damaged checkpoint files (step, file relative to the run, why), so a run
    whose newest weights cannot be read never looks finished and whole."""
    out = {}
    for s in summaries:
        run = Run(store.root / s.name)
        out[s.name] = [{"step": d.step, "file": str(d.path.relative_to(run.path)),
                        "reason": d.reason.replace(str(d.path), str(d.path.relative_to(run.path)))}
                       for d in DamagedCheckpoint.found_in(run)]
    return out


def run_settings(run: Run) -> dict[str, object] | None:
    """Every setting of a run by path (`train.lr`: 0.001); None when its config cannot be read."""
    from gptbench.errors import UserError
    from gptbench.runstore.specfile import read_spec
    from gptbench.spec.resolve import value_at
    from gptbench.spec.settings import BY_PATH

    try:
        spec = read_spec(run)
    except UserError:
        return None
    return {path: value_at(spec, path) for path in BY_PATH}


def print_sweep(store: RunStore, name: str, as_json: bool) -> int:
    from gptbench.sweeps import record as rec
    from gptbench.sweeps.results import ranked, summary_table

    record = rec.load(store.root, name)
    if as_json:
        trials = [{"run": t.run, "settings": t.settings, "state": t.state, **t.result} for t in ranked(record)]
        print(json.dumps({"schema": JSON_SCHEMA, "sweep": record.name, "metric": record.metric, "swept": record.swept,
                          "trials": trials}, indent=2))
    else:
        print(summary_table(record))
    return 0


def run_runs(args: argparse.Namespace) -> int:
    store = RunStore(args.runs_dir)
    if args.sweep:
        return print_sweep(store, args.sweep, args.json)
    summaries = store.summaries()
    damaged = damaged_checkpoints(store, summaries)
    if args.json:
        from gptbench.sweeps.record import sweep_of_run

        sweeps = sweep_of_run(store.root)
        print(json.dumps([{"schema": JSON_SCHEMA, **s.to_dict(), "damaged_checkpoints": damaged[s.name],
                           "settings": run_settings(Run(store.root / s.name)), "sweep": sweeps.get(s.name)}
                          for s in summaries], indent=2))
        return 0
    if not summaries:
        print(f"no runs in {store.root}; start one with: gptbench train --no-ui")
        return 0
    from rich.console import Console

    console = Console(width=shutil.get_terminal_size((100, 24)).columns)
    keep = fit_columns(summaries, console.width)
    rows = []
    for s in summaries:
        cells = [COLUMNS[i][1](s) for i in keep]
        cells[1] += DAMAGED_MARK if damaged[s.name] else ""  # (status is always shown)
        rows.append(cells)
    # drawn here rather than by rich's Table: the same box, but thousands of rows in milliseconds
    print(box_table(f"runs in {store.root}", [COLUMNS[i][0] for i in keep], [COLUMNS[i][2] for i in keep], rows, console.width))
    notes = [f"{s.name}: {s.error}" for s in summaries if s.error and s.state in ("failed", "corrupt", "crashed", "stale")]
    notes += [f"{name}{DAMAGED_MARK}: damaged checkpoint: {d['reason']}; last and best skip it"
              for name, files in damaged.items() for d in files]
    for note in notes:
        console.print(note, markup=False, highlight=False)
    hidden = [COLUMNS[i][0] for i in range(len(COLUMNS)) if i not in keep]
    if hidden:
        console.print(f"({', '.join(hidden)} hidden at this width; gptbench runs --json has every field)", style="dim")
    return 0
