"""The headless training front end: one live progress line, log lines printed above it.

The live line is built for the terminal's width: at 80 columns it shows the run, a bar,
step/total, loss, val loss and ETA; wider terminals add lr, tokens/s and elapsed time. So
nothing is cut mid-number, in a terminal or in a pipe (where rich prints the line once, at
the end). Everything else (the header, evals, samples) goes on lines of its own.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gptbench.runstore import Run

WIDE = 110  # from this width on, the line also shows lr, tokens/s and elapsed time


def progress_columns(width: int, name: str) -> tuple[list[ProgressColumn], str]:
    """The live line's columns at `width`, and the run name shortened to fit them."""
    room = max(8, width // 6)
    shown = name if len(name) <= room else name[: room - 1] + "…"
    if width >= WIDE:
        return [
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}[/] val [magenta]{task.fields[val]}[/] lr {task.fields[lr]} {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ], shown
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}[/] val [magenta]{task.fields[val]}[/]"),
        TextColumn("ETA"),
        TimeRemainingColumn(compact=True),
    ], shown


class RichReporter:
    """Step, loss, val loss (and lr, tokens/s at `WIDE` columns) and ETA on one live line.

    When stdout is not a terminal (CI, a subprocess of the TUI) rich shows no live bar,
    only the log lines and the final state of the line, so logs stay readable.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout, highlight=False)
        self.progress: Progress | None = None
        self.task = None
        self.fields: dict[str, str] = {"loss": "-", "val": "-", "lr": "-", "tps": "-"}

    def start(self, run: Run, total: int, step: int, lines: list[str]) -> None:
        columns, name = progress_columns(self.console.width, run.name)
        self.progress = Progress(*columns, console=self.console, transient=False, expand=True)
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=step, **self.fields)

    def update(self, step: int, fields: dict[str, Any]) -> None:
        if self.progress is None or self.task is None:
            return
        if fields.get("type") == "train":
            self.fields["loss"] = f"{fields['loss']:.4f}"
            self.fields["lr"] = f"{fields['lr']:.2e}"
            if fields.get("tokens_per_sec"):
                self.fields["tps"] = f"{fields['tokens_per_sec']:,.0f}"
        elif fields.get("type") == "eval":
            self.fields["val"] = f"{fields['val_loss']:.4f}"
        self.progress.update(self.task, completed=step, **self.fields)

    def log(self, message: str) -> None:
        # soft_wrap: a log line is never broken by rich (a path or a sample stays whole, and
        # a pipe gets the line as written); the terminal wraps what is too wide
        (self.progress.console if self.progress else self.console).print(message, markup=False, soft_wrap=True)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
