"""The headless training front end: a rich progress bar plus log lines above it."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gptbench.runstore import Run


class RichReporter:
    """Step, loss, val loss, lr, tokens/s and ETA on one live line; logs print above it.

    When stdout is not a terminal (CI, a subprocess of the TUI) rich prints no bar, only
    the log lines, so logs stay readable.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout, highlight=False)
        self.progress: Progress | None = None
        self.task = None
        self.fields: dict[str, str] = {"loss": "-", "val": "-", "lr": "-", "tps": "-"}

    def start(self, run: Run, total: int, step: int, lines: list[str]) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}[/] val [magenta]{task.fields[val]}[/] lr {task.fields[lr]} {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(run.name, total=total, completed=step, **self.fields)

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
        (self.progress.console if self.progress else self.console).print(message, markup=False)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
