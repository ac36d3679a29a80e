"""The start screen: every run in the runs directory, live, with details and actions."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static, Tree
from textual.widgets.tree import TreeNode

from gptbench.backends.spec import format_params
from gptbench.errors import UserError
from gptbench.runstore import Run, RunSummary
from gptbench.tui.launcher import LAUNCH_DIR
from gptbench.tui.runsdata import RunWatcher, WatchSnapshot, fmt_age, fmt_duration, fmt_loss, fmt_rate, state_reason
from gptbench.tui.screens.modals import ConfirmScreen, rename_screen
from gptbench.tui.widgets.charts import PALETTE, MetricChart, Series
from gptbench.tui.widgets.runtable import COLUMNS, SORT_KEYS, RunTable, matches, row_cells, state_text

if TYPE_CHECKING:
    from gptbench.tui.app import GPTBenchApp

MAX_WATCHERS = 16  # details-panel watchers kept for quick re-selection


def summary_table(s: RunSummary, snap: WatchSnapshot | None, now: float, frame: int = 0) -> Table:
    """The key facts of a run as a two-column grid; a run that failed, crashed, went
    stale or is corrupt says why right under its status."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("status", state_text(s.state, frame))
    reason = state_reason(s, snap.status if snap else None, now)
    if reason:
        grid.add_row("reason", Text(reason, style="red"))
    if s.state in ("corrupt", "starting") or (s.state == "crashed" and not s.created):
        return grid  # nothing else is known about it
    if s.converted:
        grid.add_row("step", f"converted at step {s.step:,}" if s.step else "converted (no training here)")
    else:
        pct = f" ({100 * s.step / s.max_iters:.0f}%)" if s.max_iters else ""
        grid.add_row("step", f"{s.step:,} / {s.max_iters:,}{pct}")
    grid.add_row("best val", fmt_loss(s.best_val_loss))
    cfg = snap.config if snap else None
    shape = ""
    if cfg and isinstance(cfg.get("model"), dict):
        m = cfg["model"]
        shape = f" · {m.get('n_layer')}L {m.get('n_head')}H {m.get('n_embd')}d ctx {m.get('block_size')}"
    grid.add_row("params", (format_params(s.params) if s.params else "-") + shape)
    for label, value in lineage_rows(cfg):
        grid.add_row(label, value)
    grid.add_row("backend", " · ".join(x for x in (s.backend, s.device) if x) or "-")
    if s.world_size > 1:
        grid.add_row("processes", f"{s.world_size} ({s.strategy or 'ddp'})")
    grid.add_row("tokenizer", s.tokenizer or "-")
    grid.add_row("corpus", s.corpus or "-")
    if s.created:
        grid.add_row("created", f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s.created))} ({fmt_age(s.created, now)})")
    grid.add_row("duration", f"{fmt_duration(s.duration)} · {fmt_rate(s.tokens_per_sec)} tok/s")
    if snap and snap.checkpoints:
        with_val = [c for c in snap.checkpoints if c.val_loss is not None]
        best = min(with_val, key=lambda c: c.val_loss).step if with_val else snap.checkpoints[-1].step
        grid.add_row("checkpoints", f"{len(snap.checkpoints)} (best: step-{best})")
    return grid


def lineage_rows(cfg: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Where a fine-tuned run started (source, kind, sha256 prefix, path) and its LoRA
    settings; nothing for a run trained from scratch."""
    rows: list[tuple[str, str]] = []
    source = cfg.get("init_from") if isinstance(cfg, dict) else None
    if isinstance(source, dict):
        sha = str(source.get("sha256") or "")[:12]
        rows.append(("from", f"{source.get('label') or source.get('spec')} ({source.get('kind')}) · sha256 {sha}… · {source.get('path')}"))
    lora = cfg.get("lora") if isinstance(cfg, dict) else None
    if isinstance(lora, dict):
        trainable = cfg.get("trainable_params")
        counted = f" · {format_params(trainable)} trainable" if isinstance(trainable, int) else ""
        targets = ",".join(lora.get("targets") or [])
        rows.append(("LoRA", f"rank {lora.get('rank')} · alpha {lora.get('alpha'):g} · {targets}{counted}"))
    return rows


CONFIG_ORDER = ("model", "train", "data", "tokenizer")


def fill_tree(node: TreeNode, obj: Any, expand: tuple[str, ...] = ()) -> None:
    """A config as a tree: the main sections first, then scalars, then bookkeeping."""
    if isinstance(obj, dict):
        def order(item: tuple[str, Any]) -> tuple[int, int, str]:
            key, value = item
            rank = CONFIG_ORDER.index(key) if key in CONFIG_ORDER else len(CONFIG_ORDER)
            return (rank, isinstance(value, dict), key)

        for key, value in sorted(obj.items(), key=order):
            if isinstance(value, dict):
                child = node.add(Text(str(key), style="bold"), expand=key in expand)
                fill_tree(child, value)
            else:
                node.add_leaf(Text.assemble((f"{key} ", "dim"), (repr(value) if isinstance(value, str) else str(value), "")))


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
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summaries: list[RunSummary] = []
        self.visible_runs: list[RunSummary] = []
        self.query_text = ""
        self.sort_key = "created"
        self.sort_reverse = True
        self.marked: set[str] = set()
        self._watchers: OrderedDict[str, RunWatcher] = OrderedDict()
        self._details_name: str | None = None
        self._details_snap: WatchSnapshot | None = None
        self._suspended = False
        self._stale = False

    @property
    def gapp(self) -> "GPTBenchApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="runs-toolbar"):
            yield Input(placeholder="/ filter: name, status, backend, tokenizer, corpus…", id="filter")
            yield Static("", id="runs-count")
        with Vertical(id="runs-body"):
            yield RunTable(id="runs-table")
            yield Static("", id="runs-empty")
            with Horizontal(id="details"):
                with Vertical(id="details-left"):
                    yield Static("", id="details-title")
                    yield Static("", id="details-summary")
                yield MetricChart("loss", id="details-chart", empty="no metrics yet")
                yield Tree("config", id="details-config")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#details-config", Tree).show_root = False
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
        current = self.current_run
        if current is not None and current.name == self._details_name and current.state in ("running", "starting", "new"):
            self.load_details(current.name)  # a live run: refresh its details

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
        self.query_one("#details").display = bool(rows)
        if not rows:
            self._clear_details()
        elif self._details_name != table.current_name:
            self._select(table.current_name)

    def _tick_spinner(self) -> None:
        if not any(s.state == "running" for s in self.visible_runs):
            return
        table = self.query_one(RunTable)
        frame = self.gapp.frame()
        for s in self.visible_runs:
            if s.state == "running":
                table.update_cell(s.name, "status", state_text("running", frame))
        if self._details_snap is not None and self.current_run and self.current_run.state == "running":
            self._render_summary()

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
        if name == self._details_name:
            return
        self._details_name = name
        self._details_snap = None
        if name is None:
            self._clear_details()
            return
        self._render_summary()
        self.load_details(name)

    def _clear_details(self) -> None:
        self._details_name, self._details_snap = None, None
        self.query_one("#details-title", Static).update("")
        self.query_one("#details-summary", Static).update("")
        self.query_one("#details-chart", MetricChart).set_series([])
        self.query_one("#details-config", Tree).clear()

    @work(thread=True, exclusive=True, group="details", exit_on_error=False)
    def load_details(self, name: str) -> None:
        watcher = self._watchers.get(name)
        if watcher is None:
            watcher = RunWatcher(Run(self.gapp.runs_dir / name), self.gapp.clock)
            self._watchers[name] = watcher
            while len(self._watchers) > MAX_WATCHERS:
                self._watchers.popitem(last=False)
        else:
            self._watchers.move_to_end(name)
        snap = watcher.poll(force=True)
        if snap is not None:
            self.app.call_from_thread(self._show_details, snap)

    def _show_details(self, snap: WatchSnapshot) -> None:
        if snap.name != self._details_name:
            return
        config_changed = self._details_snap is None or self._details_snap.config is not snap.config
        self._details_snap = snap
        self._render_summary()
        s = snap.series
        self.query_one("#details-chart", MetricChart).set_series(
            [Series("train", s.train_step, s.train_loss, PALETTE[0]), Series("val", s.eval_step, s.val_loss, PALETTE[1], smooth=False)]
        )
        if config_changed:
            tree = self.query_one("#details-config", Tree)
            tree.clear()
            if snap.config is not None:
                fill_tree(tree.root, snap.config, expand=("model", "train"))
            elif snap.config_error:
                tree.root.add_leaf(Text(snap.config_error, style="red"))

    def _render_summary(self) -> None:
        s = self.current_run
        if s is None or s.name != self._details_name:
            return
        title = Text(s.name, style="bold")
        self.query_one("#details-title", Static).update(title)
        self.query_one("#details-summary", Static).update(
            Group(summary_table(s, self._details_snap, self.gapp.clock(), self.gapp.frame()))
        )

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
            self._details_name = None
            self._watchers.pop(s.name, None)
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
            self._watchers.pop(s.name, None)
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
        if len(names) < 2:
            self.notify("Mark two or more runs with Space, then press m to compare them", severity="warning")
            return
        self.gapp.open_compare(names)

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
