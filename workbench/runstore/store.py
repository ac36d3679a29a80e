"""`RunStore`: all runs under one directory: listing, lookup, delete and rename.

Delete and rename go through `RunWriter` (which takes the run's lock, so a run in use is
refused) and never through a symbolic link.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptbench.errors import UserError
from gptbench.paths import default_runs_dir
from gptbench.runstore.format import validate_run_name
from gptbench.runstore.reader import Run, RunSummary, read_summary
from gptbench.runstore.writer import RunWriter


class RunStore:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    def run(self, name: str) -> Run:
        return Run(self.root / validate_run_name(name))

    def existing(self, name: str) -> Run:
        """A run that exists and has a config; UserError (listing some runs) otherwise."""
        run = self.run(name)
        if not run.path.is_dir():
            have = ", ".join(self.names()[:8]) or "none"
            raise UserError(f"no run named {name!r} in {self.root} (runs: {have})")
        if not run.exists():
            summary = read_summary(run)
            why = f" ({summary.error})" if summary.error else ""
            raise UserError(f"run {name!r} has no config.json: it is {summary.state}{why}")
        return run

    def names(self) -> list[str]:
        """Run folders, sorted; hidden entries and symbolic links are not runs."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))

    def runs(self) -> list[Run]:
        return [Run(self.root / n) for n in self.names()]

    def summaries(self) -> list[RunSummary]:
        return [read_summary(r) for r in self.runs()]

    def writer(self, name: str) -> RunWriter:
        """Open run `name` for writing (its lock held until the writer is closed)."""
        return RunWriter.open(self.root, name)

    def delete(self, name: str) -> None:
        """Delete a run directly inside the store; refuses links and runs in use."""
        self.writer(name).delete()

    def rename(self, old: str, new: str) -> Run:
        self.existing(old)
        with self.writer(old) as w:
            return w.rename(new)
