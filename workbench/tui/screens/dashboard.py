"""The live dashboard of one run: loss / learning-rate / throughput charts, progress and
ETA, the latest sample and the log tail. Works for new, running, finished, failed and
converted runs alike, because it only reads the run directory (and, for a run this app
just launched, the trainer's output file until the run directory exists)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, ProgressBar, Static

from gptbench.runstore import Run
from gptbench.tui.runsdata import Clock, RunWatcher, WatchSnapshot, fmt_duration, fmt_loss, fmt_rate, state_reason
from gptbench.tui.widgets.charts import PALETTE, MetricChart, Series
from gptbench.tui.widgets.logpane import LogPane
from gptbench.tui.widgets.runtable import state_text

if TYPE_CHECKING:
    from gptbench.tui.host import WorkbenchHost

POLL_INTERVAL_S = 1.0
CHART_INTERVAL_S = 2.0  # charts redraw at most this often (status and log follow every poll)
SIDE_CHARTS_EVERY = 5  # learning rate and tokens/s: every 5th loss-chart redraw
SIDE_CHART_GAP_S = 0.2  # ...each in its own frame, this long after the one before,
STAGGER_FROM_POINTS = 20_000  # ...once the curves are this long (a build then costs ~10 ms)
ENDED_STATES = ("finished", "stopped", "failed", "crashed")


class RunPolled(Message):
    """A fresh snapshot of the watched run. Snapshots are cumulative, so a pending one can
    be replaced by a newer one without losing anything: bursts of metrics coalesce."""

    def __init__(self, snap: WatchSnapshot) -> None:
        super().__init__()
        self.snap = snap

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunPolled)


class LaunchPolled(Message):
    """Output of a trainer this app started whose run directory does not exist yet."""

    def __init__(self, lines: list[str], returncode: int | None, error: str) -> None:
        super().__init__()
        self.lines, self.returncode, self.error = lines, returncode, error

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LaunchPolled)


def progress_of(snap: WatchSnapshot) -> tuple[int, int]:
    """(step reached, planned steps) from the status, falling back to metrics and config."""
    st, s = snap.status, snap.series
    step = st.get("step")
    if not isinstance(step, int):
        step = int(s.train_step[-1]) if len(s.train_step) else 0
    max_iters = st.get("max_iters") or (snap.config or {}).get("train", {}).get("max_iters") or 0
    return int(step), int(max_iters)


def ran_for(status: dict[str, Any]) -> float:
    """How long the trainer ran: its training time, or (when it ended before its first
    timing window, e.g. NaN at the first log step) the wall time between its start and
    its last status."""
    elapsed = float(status.get("elapsed") or 0.0)
    started, beat = status.get("started"), status.get("heartbeat")
    wall = float(beat) - float(started) if isinstance(started, (int, float)) and isinstance(beat, (int, float)) else 0.0
    return max(elapsed, wall)


class DashboardScreen(Screen):
    TITLE = "gptbench"
    HELP = """\\
The dashboard only reads the run's files, so it works for runs started anywhere and closing
it never stops training. **s** stops the run gracefully (it saves a checkpoint first),
**r** resumes a stopped, failed or finished run with a new step budget, **c** chats with
its best checkpoint. **l** toggles a log scale on the loss chart, **+**/**-** change the
smoothing of the training curves.
"""
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "stop", "Stop"),
        Binding("r", "resume", "Resume"),
        Binding("l", "toggle_log", "Log scale"),
        Binding("plus,equals_sign", "smooth(1)", "Smooth", key_display="+/-"),
        Binding("minus", "smooth(-1)", "Smooth less", show=False),
        Binding("c", "chat", "Chat with run", show=False),
    ]

    def __init__(self, name: str, runs_dir: Path, clock: Clock) -> None:
        super().__init__()
        self.run_name = name
        self.sub_title = f"Dashboard · {name}"
        self.watcher = RunWatcher(Run(runs_dir / name), clock)
        self.snap: WatchSnapshot | None = None
        self._log_shown = 0
        self._launch_shown = 0
        self._busy = False
        self._poller: Timer | None = None
        self._series_version = -1
        self._charts_at = 0.0  # monotonic time of the last chart rebuild
        self._charts_timer: Timer | None = None
        self._chart_round = 0
        self._shown: dict[str, str] = {}  # selector -> markup last shown
        self._sample_shown: tuple[int, str] | None = None

    @property
    def gapp(self) -> "WorkbenchHost":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="dash-status"):
            with Horizontal(id="dash-status-row"):
                yield Static(Text(self.run_name, style="bold"), id="dash-title")
                yield Static(state_text("starting"), id="dash-state")
                # a determinate bar from the start: an indeterminate one animates at 60 fps
                yield ProgressBar(total=1, show_eta=False, id="dash-progress")
            yield Static("", id="dash-eta")
            yield Static("", id="dash-reason")
        with Horizontal(id="dash-charts"):
            yield MetricChart("loss", xlabel="step", id="chart-loss", empty="waiting for the first metrics…",
                              log_scalable=True, smoothable=True, smoothing_index=1)
            with Vertical(id="dash-side"):
                yield MetricChart("learning rate", id="chart-lr", empty="waiting…")
                yield MetricChart("tokens/s", id="chart-tps", empty="waiting…", smoothable=True, smoothing_index=1)
        with Horizontal(id="dash-bottom"):
            with VerticalScroll(id="dash-sample", can_focus=False):
                yield Static("", id="sample-text")
            yield LogPane(id="dash-log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#dash-sample").border_title = "latest sample"
        self.query_one("#dash-log").border_title = "log"
        self._poller = self.set_interval(POLL_INTERVAL_S, self.poll)
        self.poll()

    def on_screen_suspend(self) -> None:
        # hidden (another mode, or a dialog on top): no polling, the trainer needs the CPU
        if self._poller is not None:
            self._poller.pause()

    def on_screen_resume(self) -> None:
        if self._poller is not None:
            self._poller.resume()
            self.poll()

    # ---- polling (worker thread) -------------------------------------------------------------
    def poll(self) -> None:
        if self._busy:
            return
        self._busy = True
        self._poll_worker()

    @work(thread=True, exclusive=True, group="dashboard-poll", exit_on_error=False)
    def _poll_worker(self) -> None:
        try:
            if self.watcher.run.path.is_dir():
                snap = self.watcher.poll()
                if snap is not None:
                    self.post_message(RunPolled(snap))
            else:
                launch = self.gapp.launcher.get(self.run_name)
                if launch is not None:
                    rc = launch.proc.poll()
                    self.post_message(LaunchPolled(launch.output_tail(50), rc, launch.error_line() if rc else ""))
        finally:
            self._busy = False

    def on_launch_polled(self, msg: LaunchPolled) -> None:
        log = self.query_one(LogPane)
        if len(msg.lines) != self._launch_shown:
            log.replace(msg.lines)
            self._launch_shown = len(msg.lines)
        if msg.returncode is not None and msg.returncode != 0:
            self._set_static("#dash-state", Text("✖ failed to start", style="bold red"))
            self._set_reason(msg.error)
        else:
            self._set_static("#dash-state", state_text("starting"))

    def on_run_polled(self, msg: RunPolled) -> None:
        self.show_snapshot(msg.snap)

    # ---- rendering (UI thread) -----------------------------------------------------------------
    def show_snapshot(self, snap: WatchSnapshot) -> None:
        """Update only what changed: every widget update costs a repaint, and while a run
        trains each millisecond the app spends is taken from the trainer."""
        self.snap = snap
        s = snap.series
        self._set_static("#dash-state", state_text(snap.state, self.gapp.frame()))
        step, max_iters = progress_of(snap)
        bar = self.query_one("#dash-progress", ProgressBar)
        if bar.display == snap.summary.converted:
            bar.display = not snap.summary.converted
        if max_iters and (bar.total, bar.progress) != (max_iters, min(step, max_iters)):
            bar.update(total=max_iters, progress=min(step, max_iters))
        self._set_static("#dash-eta", self._eta_text(snap, step, max_iters))
        reason = state_reason(snap.summary, snap.status, self.gapp.clock())
        self._set_reason(reason)
        if s.version != self._series_version:
            self._schedule_charts()
        if s.sample_step is not None and (s.sample_step, s.sample_text) != self._sample_shown:
            self._sample_shown = (s.sample_step, s.sample_text)
            self.query_one("#dash-sample").border_title = f"sample at step {s.sample_step:,}"
            self.query_one("#sample-text", Static).update(Text(s.sample_text))
        log = self.query_one(LogPane)
        new = min(snap.log_total - self._log_shown, len(snap.log_lines))
        if self._log_shown == 0 and self._launch_shown:
            log.replace([])  # the trainer's output until now: its log.txt takes over
            self._launch_shown = 0
        if new > 0:
            log.append(snap.log_lines[-new:])
        self._log_shown = snap.log_total
        log.set_reason(reason)

    def _set_static(self, selector: str, text: Text) -> bool:
        if self._shown.get(selector) == text.markup:
            return False
        self._shown[selector] = text.markup
        self.query_one(selector, Static).update(text)
        return True

    def _set_reason(self, reason: str) -> None:
        """Why the run ended or needs attention, under the progress line (wrapped, red)."""
        if self._set_static("#dash-reason", Text(f"✖ {reason}" if reason else "", style="red")):
            self.query_one("#dash-reason").display = bool(reason)

    def _eta_text(self, snap: WatchSnapshot, step: int, max_iters: int) -> Text:
        st, s = snap.status, snap.series
        if snap.summary.converted:
            source = ((snap.config or {}).get("converted_from") or {}).get("source", "another format")
            at = f" at step {step:,}" if step else ""
            return Text(f"converted from {source}{at} · no training metrics")
        tps = st.get("tokens_per_sec")
        if tps is None and len(s.tokens_per_sec):
            tps = float(s.tokens_per_sec[-1])
        parts = [f"step {step:,}/{max_iters:,}" if max_iters else f"step {step:,}", f"best val {fmt_loss(st.get('best_val_loss'))}",
                 f"{fmt_rate(tps)} tok/s"]
        if snap.summary.world_size > 1:
            parts.insert(0, f"{snap.summary.world_size} processes ({snap.summary.strategy or 'ddp'})")
        if snap.state == "running":
            sps = s.steps_per_sec()
            eta = fmt_duration((max_iters - step) / sps) if sps and max_iters > step else "…"
            parts.append(f"ETA {eta}")
        elif snap.state in ENDED_STATES:
            parts.append(f"{snap.state} after {fmt_duration(ran_for(st))}")
        return Text("  ·  ".join(parts))

    def _schedule_charts(self) -> None:
        """Rebuild the charts now, or once CHART_INTERVAL_S after the last rebuild: plotting
        is the app's main cost while a run trains, and the trainer needs the CPU more."""
        if self._charts_timer is not None:
            return
        wait = CHART_INTERVAL_S - (time.monotonic() - self._charts_at)
        if wait <= 0:
            self._update_charts()
        else:
            self._charts_timer = self.set_timer(wait, self._update_charts)

    def _update_charts(self) -> None:
        self._charts_timer = None
        if self.snap is None:
            return
        self._charts_at = time.monotonic()
        self._series_version = self.snap.series.version
        s = self.snap.series
        self.query_one("#chart-loss", MetricChart).set_series(
            [
                Series("train", s.train_step, s.train_loss, PALETTE[0]),
                Series("val", s.eval_step, s.val_loss, PALETTE[1], smooth=False),
                *(Series(f"acc {task}" if not task.startswith("bpb:") else f"bpb {task[4:]}", list(steps), list(values),
                         PALETTE[(4 + i) % len(PALETTE)], smooth=False) for i, (task, (steps, values)) in enumerate(s.scores.items())),
            ]
        )
        # the side charts change slowly: while a run trains they redraw every SIDE_CHARTS_EVERY-th
        # time, one frame apart, so that a key press never waits behind three chart builds
        self._chart_round += 1
        if self._chart_round % SIDE_CHARTS_EVERY == 1 or self.snap.state != "running" or SIDE_CHARTS_EVERY == 1:
            lr = [Series("lr", s.train_step, s.lr, PALETTE[2], smooth=False)]
            tps = [Series("tok/s", s.train_step, s.tokens_per_sec, PALETTE[3])]
            if len(s.train_step) < STAGGER_FROM_POINTS:
                self.query_one("#chart-lr", MetricChart).set_series(lr)
                self.query_one("#chart-tps", MetricChart).set_series(tps)
            else:
                self.set_timer(SIDE_CHART_GAP_S, lambda: self.query_one("#chart-lr", MetricChart).set_series(lr))
                self.set_timer(2 * SIDE_CHART_GAP_S, lambda: self.query_one("#chart-tps", MetricChart).set_series(tps))

    # ---- actions ------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_toggle_log(self) -> None:
        for chart in self.query(MetricChart).results(MetricChart):
            chart.toggle_log_scale()

    def action_smooth(self, delta: int) -> None:
        for chart in self.query(MetricChart).results(MetricChart):
            chart.change_smoothing(delta)

    def action_stop(self) -> None:
        state = self.snap.state if self.snap else "starting"
        if state != "running":
            self.notify(f"{self.run_name} is not running ({state})", severity="warning")
            return
        self.gapp.stop_run(self.run_name)

    def action_resume(self) -> None:
        if self.snap is None:
            self.notify(f"{self.run_name} has not started yet", severity="warning")
            return
        step, max_iters = progress_of(self.snap)
        self.gapp.ask_resume(self.run_name, step, max_iters, self.snap.state, open_dashboard=False)

    def action_chat(self) -> None:
        self.gapp.open_chat(self.run_name)
