"""The start screen: every run in the runs directory, live, with details and actions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from gptbench.runstore import RunSummary
from gptbench.tui.screens.runedits import delete_run, rename_run
from gptbench.tui.sweeprows import (BrowserRow, SweepInfo, browser_rows, read_sweeps, row_texts, sweep_details, sweep_key,
                                    sweep_of_key)
from gptbench.tui.widgets.rundetails import RunDetails
from gptbench.tui.widgets.runtable import COLUMNS, SORT_KEYS, RunTable, matches, state_text
from gptbench.tui.widgets.servestatus import ServeStatus

if TYPE_CHECKING:
    from gptbench.tui.host import WorkbenchHost
    from gptbench.tui.serving import ServeProcess

class RunsScreen(Screen):
    """Run browser: filterable, sortable table; details panel; every run action."""

    TITLE = "gptbench"
    SUB_TITLE = "Runs"
    AUTO_FOCUS = "#runs-table"
    HELP = """\
**Enter** opens the selected run's dashboard, or shows a sweep's trials (its ▸ row; **x** too).
**Space** marks the selected run for comparison (◆; a sweep: all its trials) and moves to the
next row; again unmarks it. **m** compares the marked runs, or the selected sweep's trials.
**Home**/**End** first/last run, **/** filters (name, status, backend, tokenizer, corpus), **o**/**O** sort.
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
        Binding("x", "toggle_sweep", "Expand/collapse sweep", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summaries: list[RunSummary] = []
        self.visible_runs: list[RunSummary] = []
        self.query_text = ""
        self.sort_key = "created"
        self.sort_reverse = True
        self.marked: set[str] = set()
        self.sweeps: dict[str, SweepInfo] = {}
        self.expanded: set[str] = set()  # sweeps shown with their trials
        self.rows: list[BrowserRow] = []
        self._suspended = False
        self._stale = False

    @property
    def server(self) -> "ServeProcess | None":
        return self.query_one(ServeStatus).server

    @property
    def gapp(self) -> "WorkbenchHost":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="runs-toolbar"):
            yield Input(placeholder="/ filter: name, status, backend, tokenizer, corpus…", id="filter")
            yield Static("", id="runs-count")
            yield ServeStatus(id="serve-status")
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
        self._read_sweeps(self.gapp.runs_dir)
        current = self.current_run
        if current is not None and current.name == self.details.name_shown and current.state in ("running", "starting", "new"):
            self.details.load(self.gapp.runs_dir, current.name, self.gapp.clock)  # a live run: refresh its details

    @work(thread=True, exclusive=True, group="sweeps", exit_on_error=False)
    def _read_sweeps(self, root: Path) -> None:
        sweeps = read_sweeps(root)
        self.app.call_from_thread(self._set_sweeps, sweeps)

    def _set_sweeps(self, sweeps: dict[str, SweepInfo]) -> None:
        if sweeps != self.sweeps:
            self.sweeps = sweeps
            self.expanded &= set(sweeps)
            self.refresh_rows()

    def _trials_of(self, sweep: str) -> list[str]:
        info = self.sweeps.get(sweep)
        names = {s.name for s in self.summaries}
        return [r for r in info.runs if r in names] if info else []

    def refresh_rows(self) -> None:
        table = self.query_one(RunTable)
        keep = (lambda s: matches(s, self.query_text)) if self.query_text else (lambda s: True)
        self.rows = rows = browser_rows(self.summaries, self.sweeps, self.expanded, keep, SORT_KEYS[self.sort_key], self.sort_reverse)
        self.visible_runs = [r.summary for r in rows if r.kind != "sweep"]
        now, frame = self.gapp.clock(), self.gapp.frame()
        table.show([(r.key, row_texts(r, expanded=r.sweep in self.expanded, now=now, frame=frame,
                                      marked=r.key in self.marked or (r.kind == "sweep" and self._all_marked(r.sweep))))
                    for r in rows])
        header = dict((k, h) for k, h, _ in COLUMNS)[self.sort_key]
        n, total = len(self.visible_runs) + sum(r.trials for r in rows if r.kind == "sweep" and r.sweep not in self.expanded), len(self.summaries)
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

    def _all_marked(self, sweep: str) -> bool:
        trials = self._trials_of(sweep)
        return bool(trials) and all(t in self.marked for t in trials)

    def _tick_spinner(self) -> None:
        if not any(r.summary.state == "running" for r in self.rows):
            return
        table = self.query_one(RunTable)
        frame = self.gapp.frame()
        for r in self.rows:
            if r.summary.state == "running":
                table.update_cell(r.key, "status", state_text("running", frame))
        if self.details.snap is not None and self.current_run and self.current_run.state == "running":
            self.details.render_summary()

    @property
    def current_run(self) -> RunSummary | None:
        name = self.query_one(RunTable).current_name
        return next((s for s in self.summaries if s.name == name), None)

    @property
    def current_sweep(self) -> str | None:
        """The sweep whose row is selected (None on a run's row)."""
        return sweep_of_key(self.query_one(RunTable).current_name)

    def _require(self) -> RunSummary | None:
        s = self.current_run
        if s is None and self.current_sweep is not None:
            self.notify(f"{self.current_sweep} is a sweep: Enter shows its trials, m compares them", severity="warning")
        elif s is None:
            self.notify("No run selected", severity="warning")
        return s

    # ---- details panel --------------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#runs-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._select(str(event.row_key.value) if event.row_key is not None else None)

    def _select(self, name: str | None) -> None:
        sweep = sweep_of_key(name)
        if sweep is not None:
            if self.details.name_shown != name and sweep in self.sweeps:
                self.details.show_text(name, f"sweep {sweep} · {len(self.sweeps[sweep].runs)} trials", sweep_details(self.sweeps[sweep].record))
            return
        if not self.details.show(name) or name is None:
            return
        self.details.render_summary()
        self.details.load(self.gapp.runs_dir, name, self.gapp.clock)

    # ---- actions ---------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if self.current_sweep is not None:
            self.action_toggle_sweep()
        else:
            self.action_open_dashboard()

    def action_toggle_sweep(self) -> None:
        """Expand the selected sweep onto its trials, or collapse it (from its row or a trial's)."""
        key = self.query_one(RunTable).current_name
        row = next((r for r in self.rows if r.key == key), None)
        if row is None or not row.sweep:
            self.notify("Not a sweep: x expands or collapses a sweep's row", severity="warning")
            return
        self.expanded.symmetric_difference_update({row.sweep})
        self.refresh_rows()
        self.query_one(RunTable).select_name(sweep_key(row.sweep))

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
        if s is not None:
            rename_run(self, s)

    def action_delete(self) -> None:
        s = self._require()
        if s is not None:
            delete_run(self, s)

    def action_mark(self) -> None:
        """Mark (or unmark) the selected run, or all of a sweep's trials, for comparison and move to the next row."""
        sweep = self.current_sweep
        s = self.current_run if sweep is None else None
        if sweep is not None:
            trials = set(self._trials_of(sweep))
            self.marked = self.marked - trials if self._all_marked(sweep) else self.marked | trials
        elif s is None:
            self._require()
            return
        else:
            self.marked.symmetric_difference_update({s.name})
        self.refresh_rows()
        table = self.query_one(RunTable)
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_compare(self) -> None:
        names = [s.name for s in self.visible_runs if s.name in self.marked]
        if not names:
            names = [s.name for s in self.summaries if s.name in self.marked]  # marked trials of a collapsed sweep
        if not names and self._sweep_trials():
            self.gapp.open_compare(self._sweep_trials(), sweep=self._selected_sweep())
            return
        if len(names) < 2:
            self.notify("Mark two or more runs with Space, then press m to compare them", severity="warning")
            return
        self.gapp.open_compare(names)

    def _selected_sweep(self) -> str | None:
        """The sweep of the selected row: a sweep's row or one of its trials."""
        key = self.query_one(RunTable).current_name
        row = next((r for r in self.rows if r.key == key), None)
        return row.sweep or None if row is not None else None

    def _sweep_trials(self) -> list[str]:
        """With nothing marked, `m` on a sweep or one of its trials compares all the
        sweep's trials, best first by its metric ([] when the selected row is no sweep's)."""
        from gptbench.sweeps.results import ranked

        sweep = self._selected_sweep()
        names = set(self._trials_of(sweep)) if sweep else set()
        return [t.run for t in ranked(self.sweeps[sweep].record) if t.run in names] if sweep else []

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
        serve = self.query_one(ServeStatus)
        if serve.serving:
            serve.stop()
            return
        s = self._require()
        if s is None:
            return
        if s.state == "corrupt":
            self.notify(f"{s.name} is corrupt: {s.error}", severity="error")
            return
        serve.start(self.gapp.runs_dir, s.name)
