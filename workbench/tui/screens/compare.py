"""Compare runs: train and val loss curves overlaid (one colour per run) and a config diff
that lists only the keys whose values differ."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from gptbench.runstore import Run
from gptbench.tui.runsdata import Clock, RunWatcher, WatchSnapshot, config_diff
from gptbench.tui.widgets.charts import PALETTE, SMOOTHING_LEVELS, MetricChart, Series


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


class CompareScreen(Screen):
    TITLE = "gptbench"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("l", "toggle_log", "Log scale"),
        Binding("plus,equals_sign", "smooth(1)", "Smooth +"),
        Binding("minus", "smooth(-1)", "Smooth -"),
    ]

    def __init__(self, names: list[str], runs_dir: Path, clock: Clock) -> None:
        super().__init__()
        self.names = names
        self.sub_title = "Compare · " + ", ".join(names)
        self.watchers = [RunWatcher(Run(runs_dir / n), clock) for n in names]
        self.snaps: dict[str, WatchSnapshot] = {}
        self.log_y = False
        self.smooth_index = 1

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="compare-charts"):
            yield MetricChart("train loss", xlabel="step", id="compare-train")
            yield MetricChart("val loss", xlabel="step", id="compare-val")
        with Vertical(id="compare-diff-box"):
            yield Static("", id="compare-diff-title")
            yield DataTable(id="compare-diff", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self._apply_options()
        self.load()
        self.set_interval(1.0, self.load)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def load(self) -> None:
        snaps = {}
        changed = False
        for w in self.watchers:
            snap = w.poll()
            if snap is not None:
                changed = True
                snaps[w.run.name] = snap
        if changed:
            self.app.call_from_thread(self._show, snaps)

    def _show(self, snaps: dict[str, WatchSnapshot]) -> None:
        config_changed = any(n not in self.snaps or self.snaps[n].config is not s.config for n, s in snaps.items())
        self.snaps.update(snaps)
        train, val = [], []
        for i, name in enumerate(self.names):
            snap = self.snaps.get(name)
            if snap is None:
                continue
            color = PALETTE[i % len(PALETTE)]
            s = snap.series
            train.append(Series(name, s.train_step, s.train_loss, color))
            val.append(Series(name, s.eval_step, s.val_loss, color, smooth=False))
        self.query_one("#compare-train", MetricChart).set_series(train)
        self.query_one("#compare-val", MetricChart).set_series(val)
        if config_changed:
            self._show_diff()

    def _show_diff(self) -> None:
        table = self.query_one("#compare-diff", DataTable)
        table.clear(columns=True)
        table.add_column("key", key="key")
        for i, name in enumerate(self.names):
            table.add_column(Text(name, style=f"bold rgb{PALETTE[i % len(PALETTE)]}"), key=name)
        configs = {n: (self.snaps[n].config if n in self.snaps else None) for n in self.names}
        rows = config_diff(configs)
        for key, values in rows:
            table.add_row(key, *(_cell(v) for v in values), key=key)
        title = f"config diff: {len(rows)} key{'s' if len(rows) != 1 else ''} differ" if rows else "config diff: the configs are identical"
        self.query_one("#compare-diff-title", Static).update(Text(title, style="bold"))

    def _apply_options(self) -> None:
        sm = SMOOTHING_LEVELS[self.smooth_index]
        suffix = f" · smoothing {sm:g}" if sm else ""
        self.query_one("#compare-train", MetricChart).set_options(log_y=self.log_y, smoothing=sm, title=f"train loss{suffix}")
        self.query_one("#compare-val", MetricChart).set_options(log_y=self.log_y, title="val loss")

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._apply_options()

    def action_smooth(self, delta: int) -> None:
        self.smooth_index = max(0, min(len(SMOOTHING_LEVELS) - 1, self.smooth_index + delta))
        self._apply_options()
