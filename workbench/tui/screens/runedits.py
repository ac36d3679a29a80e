"""The run browser's edits on disk: renaming and deleting a run, each after asking."""

from __future__ import annotations

from typing import Any

from gptbench.errors import UserError
from gptbench.runstore import RunSummary
from gptbench.tui.launcher import LAUNCH_DIR
from gptbench.tui.screens.modals import ConfirmScreen, rename_screen
from gptbench.tui.widgets.runtable import RunTable

# `screen` is the run browser (gptbench.tui.screens.runs.RunsScreen; not imported: it imports this)


def rename_run(screen: Any, s: RunSummary) -> None:
    if s.state in ("running", "starting"):
        screen.notify(f"{s.name} is training; stop it before renaming it", severity="warning")
        return

    def done(new: str | None) -> None:
        if not new or new == s.name:
            return
        try:
            screen.gapp.store.rename(s.name, new)
        except (UserError, OSError) as exc:
            screen.notify(str(exc), title="Rename failed", severity="error")
            return
        screen.marked.discard(s.name)
        screen.details.forget(s.name)
        screen.notify(f"Renamed {s.name} → {new}")
        screen.gapp.after_scan(lambda: screen.query_one(RunTable).select_name(new))

    screen.app.push_screen(rename_screen(s.name, {x.name for x in screen.summaries}), done)


def delete_run(screen: Any, s: RunSummary) -> None:
    if s.state in ("running", "starting"):
        screen.notify(f"{s.name} is training; stop it before deleting it", severity="warning")
        return

    def done(yes: bool | None) -> None:
        if not yes:
            return
        try:
            screen.gapp.store.delete(s.name)
        except (UserError, OSError) as exc:
            screen.notify(str(exc), title="Delete failed", severity="error")
            return
        screen.marked.discard(s.name)
        screen.details.forget(s.name)
        screen.gapp.launcher.forget(s.name)
        (screen.gapp.runs_dir / LAUNCH_DIR / f"{s.name}.out").unlink(missing_ok=True)  # its trainer output, if we started it
        screen.notify(f"Deleted {s.name}")
        screen.gapp.request_scan()

    msg = f"Delete run [b]{s.name}[/b] and all its checkpoints?\n{screen.gapp.runs_dir_label}/{s.name}\n\nThis cannot be undone."
    screen.app.push_screen(ConfirmScreen("Delete run", msg, "Delete", danger=True), done)
