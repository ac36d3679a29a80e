"""Compare runs: train and val curves overlaid (one colour per run), each run's best val
loss and bits per byte, and a config diff that lists only the keys whose values differ,
every run's column fitted to the screen.

Losses of runs with different tokenizers are in different units (nats per token of
different tokens); bits per byte of raw text is tokenizer-independent, so the val chart
shows it when the runs' tokenizers differ (`b` switches).

Opened on a sweep, the table below the charts is the sweep's instead: one row per trial,
best first by the sweep's metric, with the swept settings, the result, state and step as
columns (from the sweep's record, re-read as the sweep goes on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Static

from gptbench.runstore import Run
from gptbench.tui.runsdata import Clock, RunWatcher, WatchSnapshot, config_diff
from gptbench.tui.widgets.charts import PALETTE, MetricChart, Series

MIN_VALUE_WIDTH = 8  # a run's column never gets narrower than this (the table scrolls instead)


def _tokenizer(config: dict) -> str:
    tok = config.get("tokenizer") or {}
    return str(tok.get("fingerprint") or tok.get("spec") or tok.get("kind") or "")


def cell_text(value: object, width: int) -> Text:
    """A config value in at most `width` cells; a long one (a path, a list) keeps its end,
    the part that tells runs apart."""
    if value is None:
        text = "—"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = str(value)
    if len(text) > width:
        text = "…" + text[-(width - 1):]
    return Text(text)


class CompareScreen(Screen):
    TITLE = "gptbench"
    HELP = """\\
Train and val loss of the marked runs, one colour per run, their best val loss and bits per
byte, and the config keys whose values differ (long values keep their end). **b** switches
the val chart between loss and bits per byte (the default when the runs' tokenizers
differ), **l** toggles a log scale, **+**/**-** change the smoothing of the train curves.
"""
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("b", "toggle_bpb", "Bits/byte"),
        Binding("l", "toggle_log", "Log scale"),
        Binding("plus,equals_sign", "smooth(1)", "Smooth", key_display="+/-"),
        Binding("minus", "smooth(-1)", "Smooth less", show=False),
    ]

    def __init__(self, names: list[str], runs_dir: Path, clock: Clock, sweep: str | None = None) -> None:
        super().__init__()
        self.names = names
        self.runs_dir, self.sweep = runs_dir, sweep
        self.record: Any = None  # the sweep's gptbench.sweeps.record.SweepRecord, once read
        self.sub_title = f"Compare · sweep {sweep} · {len(names)} trials" if sweep else "Compare · " + ", ".join(names)
        self.watchers = [RunWatcher(Run(runs_dir / n), clock) for n in names]
        self.snaps: dict[str, WatchSnapshot] = {}
        self._poller: Timer | None = None
        self._diff_width = 0
        self.show_bpb: bool | None = None  # None: decided from the tokenizers once configs arrive

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="compare-charts"):
            yield MetricChart("train loss", xlabel="step", id="compare-train", log_scalable=True, smoothable=True, smoothing_index=1)
            yield MetricChart("val loss", xlabel="step", id="compare-val", log_scalable=True)
        with Vertical(id="compare-diff-box"):
            yield Static("", id="compare-diff-title")
            yield DataTable(id="compare-diff", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.load()
        self._poller = self.set_interval(1.0, self.load)

    def on_screen_suspend(self) -> None:
        if self._poller is not None:
            self._poller.pause()

    def on_screen_resume(self) -> None:
        if self._poller is not None:
            self._poller.resume()

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def load(self) -> None:
        snaps = {}
        for w in self.watchers:
            snap = w.poll()
            if snap is not None:
                snaps[w.run.name] = snap
        record = self._read_record()
        if snaps or record != self.record:
            self.app.call_from_thread(self._show, snaps, record)

    def _read_record(self) -> Any:
        from gptbench.errors import UserError
        from gptbench.sweeps.record import load

        try:
            return load(self.runs_dir, self.sweep) if self.sweep else None
        except UserError:
            return self.record

    def _show(self, snaps: dict[str, WatchSnapshot], record: Any = None) -> None:
        config_changed = any(n not in self.snaps or self.snaps[n].config is not s.config for n, s in snaps.items())
        config_changed |= record != self.record
        self.snaps.update(snaps)
        self.record = record
        if self.show_bpb is None and all(self.snaps.get(n) is not None and self.snaps[n].config for n in self.names):
            self.show_bpb = len({_tokenizer(self.snaps[n].config) for n in self.names}) > 1
        self._show_curves()
        if config_changed or snaps:
            self._show_diff()

    def _show_curves(self) -> None:
        train, val = [], []
        for i, name in enumerate(self.names):
            snap = self.snaps.get(name)
            if snap is None:
                continue
            color = PALETTE[i % len(PALETTE)]
            s = snap.series
            train.append(Series(name, s.train_step, s.train_loss, color))
            val.append(Series(name, s.eval_step, s.val_bpb if self.show_bpb else s.val_loss, color, smooth=False))
        self.query_one("#compare-train", MetricChart).set_series(train)
        val_chart = self.query_one("#compare-val", MetricChart)
        val_chart.set_title("val bits/byte" if self.show_bpb else "val loss")
        val_chart.set_series(val)

    def _show_diff(self) -> None:
        if self.record is not None:
            self._show_trials()
            return
        table = self.query_one("#compare-diff", DataTable)
        configs = {n: (self.snaps[n].config if n in self.snaps else None) for n in self.names}
        results = self._results()
        rows = [*results, *config_diff(configs)]
        key_width = max([len("key"), *(len(k) for k, _ in rows)])
        # every run's column gets an equal share of what the key column and a vertical
        # scrollbar leave (2 cells of padding per column)
        room = (table.size.width or self.size.width) - (key_width + 2) - table.styles.scrollbar_size_vertical
        width = max(MIN_VALUE_WIDTH, room // max(1, len(self.names)) - 2)
        self._diff_width = table.size.width
        table.clear(columns=True)
        table.add_column("key", key="key", width=key_width)
        for i, name in enumerate(self.names):
            label = Text(name if len(name) <= width else name[: width - 1] + "…", style=f"bold rgb{PALETTE[i % len(PALETTE)]}")
            table.add_column(label, key=name, width=width)
        for key, values in rows:
            table.add_row(key, *(cell_text(v, width) for v in values), key=key)
        differ = len(rows) - len(results)
        title = (f"best results and config diff: {differ} key{'s differ' if differ != 1 else ' differs'}" if differ
                 else "best results and config diff: the configs are identical")
        self.query_one("#compare-diff-title", Static).update(Text(title, style="bold"))

    def _show_trials(self) -> None:
        """A sweep's trials, best first, one column per swept setting (each run's name in
        its curve's colour)."""
        from gptbench.sweeps.results import METRIC_LABEL, table_rows
        from gptbench.sweeps.space import short_key

        table = self.query_one("#compare-diff", DataTable)
        header, rows = table_rows(self.record)
        rows = [r for r in rows if r[1] in self.names]
        colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(self.names)}
        table.clear(columns=True)
        for i, title in enumerate(header):
            table.add_column(title, key=f"col{i}")
        for r in rows:
            table.add_row(*(Text(c, style=f"bold rgb{colour[c]}") if i == 1 else Text(c) for i, c in enumerate(r)), key=r[1])
        self._diff_width = table.size.width
        swept = ", ".join(short_key(p) for p in self.record.swept)
        title = f"sweep {self.record.name}: {len(rows)} trials, best first by {METRIC_LABEL[self.record.metric]} · swept: {swept}"
        self.query_one("#compare-diff-title", Static).update(Text(title, style="bold"))

    def _results(self) -> list[tuple[str, list[object]]]:
        """The best val loss and bits per byte of each run (from its metrics), and its eval
        score when any run has one (`gptbench eval`, `--eval-task`)."""
        loss, bpb, score = [], [], []
        for name in self.names:
            snap = self.snaps.get(name)
            s = snap.series if snap is not None else None
            loss.append(f"{min(s.val_loss):.4f}" if s and len(s.val_loss) else None)
            finite = [v for v in (s.val_bpb if s else []) if v == v]
            bpb.append(f"{min(finite):.4f}" if finite else None)
            score.append(f"{snap.summary.score:.3f}" if snap is not None and snap.summary.score is not None else None)
        scored = [("score (centred acc)", score)] if any(v is not None for v in score) else []
        return [("best val loss", loss), ("best val bits/byte", bpb), *scored]

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self._refit_diff)  # the table has its new size after this layout

    def _refit_diff(self) -> None:
        if self.snaps and self.query_one("#compare-diff", DataTable).size.width != self._diff_width:
            self._show_diff()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_toggle_bpb(self) -> None:
        self.show_bpb = not self.show_bpb
        self._show_curves()

    def action_toggle_log(self) -> None:
        for chart in self.query(MetricChart).results(MetricChart):
            chart.toggle_log_scale()

    def action_smooth(self, delta: int) -> None:
        for chart in self.query(MetricChart).results(MetricChart):
            chart.change_smoothing(delta)
