"""The start screen: every run in the runs directory, live, with details and actions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import subprocess

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from gptbench.errors import UserError
from gptbench.runstore import RunSummary
from gptbench.tui.launcher import LAUNCH_DIR
from gptbench.tui.screens.modals import ConfirmScreen, rename_screen
from gptbench.tui.widgets.rundetails import RunDetails
from gptbench.tui.widgets.runtable import COLUMNS, SORT_KEYS, RunTable, matches, row_cells, state_text

if TYPE_CHECKING:
    from gptbench.tui.host import WorkbenchHost
    from gptbench.tui.serving import ServeProcess

class RunsScreen(Screen):
    """Run browser: filterable, sortable table; details panel; every run action."""

    TITLE = "gptbench"
    SUB_TITLE = "Runs"
    AUTO_FOCUS = "#runs-table"
    HELP = """\
**Enter** opens the selected run's live dashboard. **Space** marks the selected run for
comparison (◆ before its name) and moves to the next row, so Space Space marks two runs in
a row; press it again on a marked run to unmark it. **m** compares the marked runs.
**Home**/**End** go to the first/last run, **/** filters (every word must match a name,
status, backend, tokenizer or corpus), **o** cycles the sort column and **O** reverses it.
"""
    # The footer shows the first keys a newcomer needs; every key is in F1 help and Ctrl+P.
    BINDINGS = [
        Binding("t", "new_run", "New run"),
        Binding("c", "chat", "Chat"),
        Binding("r", "resume", "Resume", show=False),
        Binding("s", "stop", "Stop", show=False),
        Binding("space", "mark", "Mark"),
        Binding("m", "compare", "Compare"),
        Binding("e", "rename", "Rename", show=False),
        Binding("d,delete", "delete", "Delete", show=False),
        Binding("slash", "filter", "Filter", show=False),
        Binding("o", "sort", "Sort", show=False),
        Binding("O", "reverse_sort", "Reverse sort", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("v", "serve", "Serve", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summaries: list[RunSummary] = []
        self.visible_runs: list[RunSummary] = []
        self.query_text = ""
        self.sort_key = "created"
        self.sort_reverse = True
        self.marked: set[str] = set()
        self._suspended = False
        self._stale = False
        self.server: "ServeProcess | None" = None

    @property
    def gapp(self) -> "WorkbenchHost":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="runs-toolbar"):
            yield Input(placeholder="/ filter: name, status, backend, tokenizer, corpus…", id="filter")
            yield Static("", id="runs-count")
            yield Static("", id="serve-status")
        with Vertical(id="runs-body"):
            yield RunTable(id="runs-table")
            yield Static("", id="runs-empty")
            yield RunDetails(lambda: self.current_run, lambda: self.gapp.clock(), lambda: self.gapp.frame(), id="details")
        yield Footer()

    @property
    def details(self) -> RunDetails:
        return self.query_one(RunDetails)

    def on_mount(self) -> None:
        self.gapp.runs_signal.subscribe(self, self.set_summaries, immediate=True)
        self.set_summaries(self.gapp.summaries)
        self._spinner = self.set_interval(0.5, self._tick_spinner)
        self.query_one("#serve-status", Static).display = False

    def on_screen_suspend(self) -> None:
        # no wakeups or details reloads while another screen is on top: a watched run's
        # trainer needs the CPU more (benchmarks/tui.py)
        self._suspended = True
        self._spinner.pause()

    def on_screen_resume(self) -> None:
        self._suspended = False
        self._spinner.resume()
        if self._stale:
            self.set_summaries(self.gapp.summaries)

    # ---- data ---------------------------------------------------------------------------
    def set_summaries(self, summaries: list[RunSummary]) -> None:
        if self._suspended:
            self._stale = True  # shown on resume
            return
        self._stale = False
        self.summaries = summaries
        names = {s.name for s in summaries}
        self.marked &= names
        self.refresh_rows()
        current = self.current_run
        if current is not None and current.name == self.details.name_shown and current.state in ("running", "starting", "new"):
            self.details.load(self.gapp.runs_dir, current.name, self.gapp.clock)  # a live run: refresh its details

    def refresh_rows(self) -> None:
        table = self.query_one(RunTable)
        rows = [s for s in self.summaries if matches(s, self.query_text)] if self.query_text else list(self.summaries)
        rows.sort(key=SORT_KEYS[self.sort_key], reverse=self.sort_reverse)
        self.visible_runs = rows
        now, frame = self.gapp.clock(), self.gapp.frame()
        table.show([(s.name, row_cells(s, marked=s.name in self.marked, now=now, frame=frame)) for s in rows])
        header = dict((k, h) for k, h, _ in COLUMNS)[self.sort_key]
        n, total = len(rows), len(self.summaries)
        count = f"{n} of {total} runs" if self.query_text else f"{total} run{'s' if total != 1 else ''}"
        marks = f" · {len(self.marked)} marked" if self.marked else ""
        self.query_one("#runs-count", Static).update(f"{count}{marks} · by {header.lower()} {'▼' if self.sort_reverse else '▲'}")
        empty = self.query_one("#runs-empty", Static)
        if not self.gapp.scanned:
            empty.update("Reading runs…")
        elif not self.summaries:
            empty.update(
                f"No runs in {self.gapp.runs_dir_label} yet.\n\nPress [b]t[/b] to train one, or start one from another "
                "terminal with\n[b]gptbench train --no-ui --data FILE[/b] — it will appear here by itself."
            )
        elif not rows:
            empty.update(f"No run matches “{self.query_text}”. Press Esc to clear the filter.")
        empty.display = not rows
        table.display = bool(rows)
        self.details.display = bool(rows)
        if not rows:
            self.details.clear()
        elif self.details.name_shown != table.current_name:
            self._select(table.current_name)

    def _tick_spinner(self) -> None:
        if not any(s.state == "running" for s in self.visible_runs):
            return
        table = self.query_one(RunTable)
        frame = self.gapp.frame()
        for s in self.visible_runs:
            if s.state == "running":
                table.update_cell(s.name, "status", state_text("running", frame))
        if self.details.snap is not None and self.current_run and self.current_run.state == "running":
            self.details.render_summary()

    @property
    def current_run(self) -> RunSummary | None:
        name = self.query_one(RunTable).current_name
        return next((s for s in self.summaries if s.name == name), None)

    def _require(self) -> RunSummary | None:
        s = self.current_run
        if s is None:
            self.notify("No run selected", severity="warning")
        return s

    # ---- details panel --------------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#runs-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._select(str(event.row_key.value) if event.row_key is not None else None)

    def _select(self, name: str | None) -> None:
        if not self.details.show(name) or name is None:
            return
        self.details.render_summary()
        self.details.load(self.gapp.runs_dir, name, self.gapp.clock)

    # ---- actions ---------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_dashboard()

    def action_open_dashboard(self) -> None:
        s = self._require()
        if s is None:
            return
        if s.state == "corrupt":
            self.notify(f"{s.name} is corrupt: {s.error}", severity="error")
            return
        self.gapp.open_dashboard(s.name)

    def action_chat(self) -> None:
        s = self.current_run
        self.gapp.open_chat(s.name if s is not None and s.state != "corrupt" else None)

    async def action_new_run(self) -> None:
        await self.app.run_action("go('train')")

    def action_stop(self) -> None:
        s = self._require()
        if s is None:
            return
        if s.state != "running":
            self.notify(f"{s.name} is not running ({s.state})", severity="warning")
            return
        self.gapp.stop_run(s.name)

    def action_resume(self) -> None:
        s = self._require()
        if s is None:
            return
        if s.state in ("running", "starting", "new"):
            self.notify(f"{s.name} is already {s.state}", severity="warning")
            return
        if s.state == "corrupt":
            self.notify(f"{s.name} is corrupt: {s.error}", severity="error")
            return
        self.gapp.ask_resume(s.name, s.step, s.max_iters, s.state)

    def action_rename(self) -> None:
        s = self._require()
        if s is None:
            return
        if s.state in ("running", "starting"):
            self.notify(f"{s.name} is training; stop it before renaming it", severity="warning")
            return

        def done(new: str | None) -> None:
            if not new or new == s.name:
                return
            try:
                self.gapp.store.rename(s.name, new)
            except (UserError, OSError) as exc:
                self.notify(str(exc), title="Rename failed", severity="error")
                return
            self.marked.discard(s.name)
            self.details.forget(s.name)
            self.notify(f"Renamed {s.name} → {new}")
            self.gapp.after_scan(lambda: self.query_one(RunTable).select_name(new))

        self.app.push_screen(rename_screen(s.name, {x.name for x in self.summaries}), done)

    def action_delete(self) -> None:
        s = self._require()
        if s is None:
            return
        if s.state in ("running", "starting"):
            self.notify(f"{s.name} is training; stop it before deleting it", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.gapp.store.delete(s.name)
            except (UserError, OSError) as exc:
                self.notify(str(exc), title="Delete failed", severity="error")
                return
            self.marked.discard(s.name)
            self.details.forget(s.name)
            self.gapp.launcher.forget(s.name)
            (self.gapp.runs_dir / LAUNCH_DIR / f"{s.name}.out").unlink(missing_ok=True)  # its trainer output, if we started it
            self.notify(f"Deleted {s.name}")
            self.gapp.request_scan()

        msg = f"Delete run [b]{s.name}[/b] and all its checkpoints?\n{self.gapp.runs_dir_label}/{s.name}\n\nThis cannot be undone."
        self.app.push_screen(ConfirmScreen("Delete run", msg, "Delete", danger=True), done)

    def action_mark(self) -> None:
        """Mark (or unmark) the selected run for comparison and move to the next row."""
        s = self._require()
        if s is None:
            return
        self.marked.symmetric_difference_update({s.name})
        self.refresh_rows()
        table = self.query_one(RunTable)
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_compare(self) -> None:
        names = [s.name for s in self.visible_runs if s.name in self.marked]
        if not names and self._sweep_trials():
            self.gapp.open_compare(self._sweep_trials())
            return
        if len(names) < 2:
            self.notify("Mark two or more runs with Space, then press m to compare them", severity="warning")
            return
        self.gapp.open_compare(names)

    def _sweep_trials(self) -> list[str]:
        """With nothing marked, `m` on a trial of a sweep compares all the sweep's trials,
        best first by its metric ([] when the selected run is no trial)."""
        from gptbench.errors import UserError
        from gptbench.sweeps.record import load, sweep_of_run
        from gptbench.sweeps.results import ranked

        s = self.current_run
        sweep = sweep_of_run(self.gapp.runs_dir).get(s.name) if s is not None else None
        try:
            return [t.run for t in ranked(load(self.gapp.runs_dir, sweep)) if (self.gapp.runs_dir / t.run).is_dir()] if sweep else []
        except UserError:
            return []

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        flt = self.query_one("#filter", Input)
        if flt.value:
            flt.value = ""
        self.query_one(RunTable).focus()

    def action_sort(self) -> None:
        keys = [k for k, _, _ in COLUMNS]
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)]
        self.sort_reverse = self.sort_key in ("created", "step", "params", "duration")
        self.refresh_rows()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.refresh_rows()

    @on(DataTable.HeaderSelected, "#runs-table")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self.refresh_rows()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip()
        self.refresh_rows()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.query_one(RunTable).focus()

    # ---- serving ------------------------------------------------------------------------------
    def action_serve(self) -> None:
        if self.server is not None and self.server.running:
            self._stop_server()
            return
        s = self._require()
        if s is None:
            return
        if s.state == "corrupt":
            self.notify(f"{s.name} is corrupt: {s.error}", severity="error")
            return
        from gptbench.tui.serving import ServeProcess

        self.server = ServeProcess(self.gapp.runs_dir, s.name)
        self._show_server(f"starting a server for {s.name}…")
        self._watch_server(self.server)

    def _stop_server(self) -> None:
        server, self.server = self.server, None
        assert server is not None
        self._show_server(f"stopping the server for {server.run}…")
        self._end_server(server)

    def _show_server(self, text: str | None) -> None:
        status = self.query_one("#serve-status", Static)
        status.update(text or "")
        status.display = bool(text)

    @work(thread=True, group="serve")
    def _end_server(self, server: "ServeProcess") -> None:
        rc = server.stop()
        self.app.call_from_thread(self._show_server, None)
        self.app.call_from_thread(self.notify, f"server for {server.run} stopped (exit {rc})")

    @work(thread=True, group="serve")
    def _watch_server(self, server: "ServeProcess") -> None:
        """Wait for its address, then show it with the request count until it ends."""
        server.ready.wait()
        while self.server is server and server.running:
            n = server.requests()
            count = "" if n is None else f" · {n} request{'s' if n != 1 else ''}"
            self.app.call_from_thread(self._show_server, f"serving {server.run} at {server.address}{count} · v stops")
            try:
                server.proc.wait(1.0)  # a second between counts, or at once when it exits
            except subprocess.TimeoutExpired:
                pass
        if self.server is server:  # it ended by itself (a bad run, a busy port)
            self.server = None
            self.app.call_from_thread(self._show_server, None)
            self.app.call_from_thread(self.notify, f"server for {server.run} exited: {server.error or 'no output'}", severity="error")

    def on_unmount(self) -> None:
        if self.server is not None:
            self.server.stop()
