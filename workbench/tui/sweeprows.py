"""The run browser's rows: ordinary runs, and each sweep as one row (collapsed by default) that expands onto its trials.

A sweep's row is keyed `SWEEP_PREFIX + name` (a run name never holds '/'), and stands for
its trials with a summary made from theirs: the best val loss among them, how many are done,
the newest state that matters (running before failed before finished). An expanded sweep's
trials follow its row, indented, in the table's sort order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gptbench.runstore import RunSummary

SWEEP_PREFIX = "sweep/"
STATE_ORDER = ("running", "starting", "new", "failed", "crashed", "stale", "corrupt", "stopped", "finished")


@dataclass(frozen=True)
class SweepInfo:
    """What the browser needs of a sweep's record: its trials (run names, in order) and their states."""

    name: str
    runs: tuple[str, ...]
    states: tuple[str, ...]
    record: Any = None  # its gptbench.sweeps.record.SweepRecord


@dataclass(frozen=True)
class BrowserRow:
    key: str  # the table's row key: a run name, or SWEEP_PREFIX + the sweep's name
    summary: RunSummary  # the run's, or the sweep's made from its trials
    kind: str  # "run" | "sweep" | "trial"
    sweep: str = ""  # the sweep a sweep row or trial row belongs to
    trials: int = 0  # a sweep row: how many trials it has


def sweep_key(name: str) -> str:
    return SWEEP_PREFIX + name


def sweep_of_key(key: str | None) -> str | None:
    return key[len(SWEEP_PREFIX):] if key is not None and key.startswith(SWEEP_PREFIX) else None


def read_sweeps(root: Path) -> dict[str, SweepInfo]:
    """Every readable sweep of the runs directory (file reads: call it off the UI thread)."""
    from gptbench.errors import UserError
    from gptbench.sweeps.record import load, sweep_names

    out = {}
    for name in sweep_names(root):
        try:
            record = load(root, name)
        except UserError:
            continue
        out[name] = SweepInfo(name, tuple(t.run for t in record.trials), tuple(t.state for t in record.trials), record)
    return out


def sweep_summary(info: SweepInfo, trials: list[RunSummary]) -> RunSummary:
    """One summary for a sweep's row from its trials' (those whose runs exist)."""
    states = {s.state for s in trials} | ({"running"} if "running" in info.states else set())
    state = next((s for s in STATE_ORDER if s in states), "new")
    losses = [s.best_val_loss for s in trials if s.best_val_loss is not None]
    best = min(trials, key=lambda s: (s.best_val_loss is None, s.best_val_loss or 0.0)) if trials else None

    def same(field: str) -> Any:
        values = {getattr(s, field) for s in trials}
        return values.pop() if len(values) == 1 else ("various" if values else "")

    done = sum(st in ("finished", "failed", "pruned") for st in info.states)
    return RunSummary(
        info.name, state, step=done, max_iters=len(info.runs), best_val_loss=min(losses) if losses else None,
        best_val_bpb=best.best_val_bpb if best is not None and losses else None,
        params=best.params if best is not None else 0, backend=same("backend"), device=same("device"),
        tokenizer=same("tokenizer"), corpus=same("corpus"), init_from=same("init_from"),
        created=min((s.created for s in trials), default=0.0), duration=sum(s.duration for s in trials),
    )


def browser_rows(summaries: list[RunSummary], sweeps: dict[str, SweepInfo], expanded: set[str],
                 keep: Callable[[RunSummary], bool], sort_key: Callable[[RunSummary], Any], reverse: bool) -> list[BrowserRow]:
    """The rows to show: runs that are no trial and sweep rows sorted together; an
    expanded sweep's trials right after its row. `keep` filters runs; a sweep is shown
    when its name or one of its trials passes (and then shows only those that pass)."""
    by_name = {s.name: s for s in summaries}
    trial_of = {run: info.name for info in sweeps.values() for run in info.runs if run in by_name}
    top: list[BrowserRow] = [BrowserRow(s.name, s, "run") for s in summaries if s.name not in trial_of and keep(s)]
    children: dict[str, list[BrowserRow]] = {}
    for info in sweeps.values():
        trials = [by_name[r] for r in info.runs if trial_of.get(r) == info.name]
        if not trials:
            continue
        summary = sweep_summary(info, trials)
        shown = trials if keep(summary) else [t for t in trials if keep(t)]
        if not shown:
            continue
        top.append(BrowserRow(sweep_key(info.name), summary, "sweep", info.name, len(trials)))
        shown.sort(key=sort_key, reverse=reverse)
        children[info.name] = [BrowserRow(t.name, t, "trial", info.name) for t in shown]
    top.sort(key=lambda r: sort_key(r.summary), reverse=reverse)
    rows: list[BrowserRow] = []
    for row in top:
        rows.append(row)
        if row.kind == "sweep" and row.sweep in expanded:
            rows.extend(children[row.sweep])
    return rows


def row_texts(row: BrowserRow, *, expanded: bool, marked: bool, now: float, frame: int) -> tuple:
    """The table cells of a row: a sweep's name with ▸/▾ and its trial count, its step
    column as trials done of all; a trial's name indented under its sweep."""
    from rich.text import Text

    from gptbench.tui.widgets.runtable import row_cells

    cells = list(row_cells(row.summary, marked=marked, now=now, frame=frame))
    if row.kind == "sweep":
        s = row.summary
        cells[0] = Text(f"{'◆' if marked else ' '} {'▾' if expanded else '▸'} {s.name} · {row.trials} trials", style="bold")
        cells[2] = Text(f"{s.step}/{s.max_iters} done", justify="right")
    elif row.kind == "trial":
        cells[0] = Text(("◆ " if marked else "  ") + "  └ " + row.summary.name, style="bold" if marked else "")
    return tuple(cells)


def sweep_details(record: Any) -> Any:
    """The details panel of a sweep's row: its trials best first, each with its swept
    settings, result and state, one line each (a rich Table)."""
    from rich.table import Table

    from gptbench.sweeps.results import METRIC_LABEL, metric_value, ranked, settings_text

    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(style="dim", no_wrap=True)
    grid.add_row("", f"best first by {METRIC_LABEL[record.metric]}", "", "")
    for i, t in enumerate(ranked(record), 1):
        v = metric_value(t, record.metric)
        grid.add_row(str(i), f"{t.run} {settings_text(t)}", f"{v:.4f}" if v is not None else "-", t.state)
    return grid
