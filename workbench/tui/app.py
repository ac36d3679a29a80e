"""The gptbench workbench: run browser, training dashboard and chat, in one Textual app.

The app owns three things every screen shares: the runs directory scanner (polled once a
second in a thread worker; screens subscribe to `runs_signal`), the launcher of training
processes, and navigation. Screens only read run files in workers and never train or
generate on the event loop.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.signal import Signal

from gptbench.errors import UserError
from gptbench.runstore import Run, RunStore, RunSummary, read_summary
from gptbench.tui.launcher import Launch, Launcher
from gptbench.tui.runsdata import Clock, RunScanner
from gptbench.tui.screens.runs import RunsScreen

if TYPE_CHECKING:
    from gptbench.tui.screens.chat import ChatScreen

MODE_TITLES = {"runs": "Runs", "train": "Train", "chat": "Chat"}


class RunsScanned(Message):
    """The run list changed. Only the newest pending scan matters, so scans coalesce."""

    def __init__(self, summaries: list[RunSummary], seq: int) -> None:
        super().__init__()
        self.summaries, self.seq = summaries, seq

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsScanned)


class LaunchEnded(Message):
    def __init__(self, launch: Launch) -> None:
        super().__init__()
        self.launch = launch


def _train_screen() -> Screen:
    from gptbench.tui.screens.train import TrainScreen

    return TrainScreen()


class GPTBenchApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "gptbench"
    # Only the Runs screen is imported at startup; the others load on first use. The chat
    # mode is added per app in __init__: its screen is created with the run to chat with.
    MODES = {"runs": RunsScreen, "train": _train_screen}
    DEFAULT_MODE = "runs"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    # F2-F4 stay out of the footer (it must fit 80 columns); F1 help and Ctrl+P list them.
    BINDINGS = [
        Binding("f1,question_mark", "help", "Help"),
        Binding("f2", "go('runs')", "Runs", show=False),
        Binding("f3", "go('train')", "Train", show=False),
        Binding("f4", "go('chat')", "Chat", show=False),
    ]

    def __init__(
        self,
        runs_dir: Path,
        backend: str = "auto",
        *,
        device: str = "auto",
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        startup: Callable[["GPTBenchApp"], None] | None = None,
    ) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir).absolute()
        self.backend = backend
        self.device = device
        self.clock: Clock = clock or time.time
        self.poll_interval = poll_interval
        self.store = RunStore(self.runs_dir)
        self.scanner = RunScanner(self.runs_dir, self.clock)
        self.launcher = Launcher(self.runs_dir)
        self.summaries: list[RunSummary] = []
        self.scanned = False
        self.runs_signal: Signal[list[RunSummary]] = Signal(self, "runs")
        self._scan_lock = threading.Lock()
        self._scan_busy = False
        self._scan_wanted = False
        self._scan_seq = 0  # scans started
        self._after_scan: list[tuple[int, Callable[[], None]]] = []
        self.chat_screen: ChatScreen | None = None  # the chat mode's screen, once created
        self._startup = startup
        self.add_mode("chat", self._chat_mode_screen)

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def runs_dir_label(self) -> str:
        """The runs directory as the user would type it (relative when under the cwd)."""
        try:
            return str(self.runs_dir.relative_to(Path.cwd())) or "."
        except (ValueError, OSError):  # elsewhere, or the cwd was deleted
            home = Path.home()
            try:
                return "~/" + str(self.runs_dir.relative_to(home))
            except ValueError:
                return str(self.runs_dir)

    def frame(self) -> int:
        """Animation frame for live indicators, from the (injectable) clock."""
        return int(self.clock() * 2)

    def on_mount(self) -> None:
        self.set_interval(self.poll_interval, self.request_scan)
        self.request_scan()
        if self._startup is not None:
            self.call_after_refresh(self._startup, self)

    # ---- scanning (worker thread) ------------------------------------------------------------------
    def request_scan(self) -> None:
        """Scan the runs directory soon, in the worker. Requests while a scan is running
        are folded into one more scan after it, so no change is missed or scanned twice."""
        with self._scan_lock:
            self._scan_wanted = True
            if self._scan_busy:
                return
            self._scan_busy = True
        self._scan_worker()

    def after_scan(self, callback: Callable[[], None]) -> None:
        """Run `callback` once a scan that started after this call has been applied (e.g.
        select a renamed run)."""
        with self._scan_lock:
            self._after_scan.append((self._scan_seq + 1, callback))
        self.scanner.invalidate()
        self.request_scan()

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan_worker(self) -> None:
        while True:
            with self._scan_lock:
                if not self._scan_wanted:
                    self._scan_busy = False
                    return
                self._scan_wanted = False
                self._scan_seq += 1
                seq = self._scan_seq
            try:
                summaries, changed = self.scanner.scan()
                for launch in self.launcher.reap():
                    self.post_message(LaunchEnded(launch))
            except Exception as exc:  # never let a scan error kill the poller
                self.log.error(f"scan failed: {exc!r}")
                continue
            if changed or not self.scanned or self._after_scan:
                self.post_message(RunsScanned(summaries, seq))

    def on_runs_scanned(self, msg: RunsScanned) -> None:
        self.summaries = msg.summaries
        self.scanned = True
        self.runs_signal.publish(msg.summaries)
        due = [cb for seq, cb in self._after_scan if seq <= msg.seq]
        self._after_scan = [(seq, cb) for seq, cb in self._after_scan if seq > msg.seq]
        for cb in due:
            cb()

    def on_launch_ended(self, msg: LaunchEnded) -> None:
        launch = msg.launch
        if launch.returncode == 0:
            self.notify(f"Training {launch.name} finished", title="Run finished")
            return
        state = read_summary(Run(self.runs_dir / launch.name)).state
        if state == "stopped":
            self.notify(f"{launch.name} stopped; its checkpoint is saved", title="Run stopped")
        else:
            self.notify(launch.error_line(), title=f"Training {launch.name} failed", severity="error", timeout=12)

    # ---- navigation ----------------------------------------------------------------------------
    def open_dashboard(self, name: str) -> None:
        from gptbench.tui.screens.dashboard import DashboardScreen

        screen = DashboardScreen(name, self.runs_dir, self.clock)
        if isinstance(self.screen, DashboardScreen):
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def open_compare(self, names: list[str], sweep: str | None = None) -> None:
        from gptbench.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(names, self.runs_dir, self.clock, sweep=sweep))

    def _chat_mode_screen(self) -> Screen:
        return self._chat(None)

    def _chat(self, run: str | None) -> "ChatScreen":
        from gptbench.tui.screens.chat import ChatScreen

        if self.chat_screen is None:
            self.chat_screen = ChatScreen(run)
        elif run is not None:
            self.chat_screen.open_run(run)
        return self.chat_screen

    def open_chat(self, name: str | None = None) -> None:
        """Show the chat screen, chatting with `name` (or with the run it had)."""
        self._chat(name)
        self.switch_mode("chat")

    async def action_go(self, mode: str) -> None:
        """F2/F3/F4: the mode's own screen (Runs, the Train form, Chat), closing any
        dashboard, comparison or dialog opened on top of it."""
        if self.current_mode != mode:
            await self.switch_mode(mode)
        while len(self.screen_stack) > 1:
            await self.pop_screen()

    def action_help(self) -> None:
        from gptbench.tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        title = self.screen.sub_title or MODE_TITLES.get(self.current_mode, "")
        self.push_screen(HelpScreen(self.screen, title, self.runs_dir_label))

    # ---- run actions ---------------------------------------------------------------------------
    def start_training(self, spec: Any, *, open_dashboard: bool = True) -> Launch:
        """Launch `gptbench train --no-ui` for a new run's spec and (by default) open its dashboard."""
        name = spec.name
        launch = self.launcher.start(spec)
        self.notify(f"Started training {name} (pid {launch.proc.pid})", title="Training")
        self.request_scan()
        if open_dashboard:
            self.open_dashboard(name)
        return launch

    def resume_run(self, name: str, max_iters: int | None = None, *, open_dashboard: bool = True) -> Launch:
        from gptbench.tui.launcher import resume_request

        launch = self.launcher.start(resume_request(self.runs_dir / name, max_iters))
        self.notify(f"Resuming {name}" + (f" until step {max_iters:,}" if max_iters else ""), title="Training")
        self.scanner.invalidate(name)
        self.request_scan()
        if open_dashboard:
            self.open_dashboard(name)
        return launch

    def ask_resume(self, name: str, step: int, max_iters: int, state: str, *, open_dashboard: bool = True) -> None:
        from gptbench.tui.screens.modals import resume_screen

        def done(value: str | None) -> None:
            if value is not None:
                self.resume_run(name, int(value), open_dashboard=open_dashboard)

        self.push_screen(resume_screen(name, step, max_iters, state), done)

    def stop_run(self, name: str) -> bool:
        """Ask a running trainer to stop gracefully (it checkpoints, then marks `stopped`)."""
        try:
            sent = Run(self.runs_dir / name).request_stop()
        except (OSError, UserError) as exc:
            self.notify(f"Could not stop {name}: {exc}", severity="error")
            return False
        if sent:
            self.notify(f"Stopping {name}: it saves a checkpoint, then stops", title="Stop")
        else:
            self.notify(f"{name} is not running", severity="warning")
        self.request_scan()
        return sent

    # ---- command palette -------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every action of the current screen (from its bindings) plus navigation."""
        for mode, title in MODE_TITLES.items():
            yield SystemCommand(f"Go to {title}", f"Switch to the {title} screen", partial(self.run_action, f"go({mode!r})"))
        yield SystemCommand("Help", "Show keys and how the app works", self.action_help)
        seen: set[str] = {"Help"}
        for key, active in screen.active_bindings.items():
            b = active.binding
            if not b.description or b.description in seen or b.system or active.node is self:
                continue  # the app's own keys (F1-F4) are the entries above
            if active.node is not screen and not b.show:
                continue  # a widget's own navigation keys (cursor up, page down...)
            seen.add(b.description)
            yield SystemCommand(b.description, f"{screen.sub_title or screen.title} · key {key}", partial(self._run_binding, active.node, b.action))
        yield from super().get_system_commands(screen)

    async def _run_binding(self, node: object, action: str) -> None:
        await self.run_action(action, node)  # type: ignore[arg-type]


def create_app(
    runs_dir: Path | str | None = None,
    backend: str = "auto",
    *,
    device: str = "auto",
    clock: Clock | None = None,
    poll_interval: float = 1.0,
    startup: Callable[[GPTBenchApp], None] | None = None,
) -> GPTBenchApp:
    """The app on a runs directory (default: $GPTBENCH_RUNS_DIR or ./runs).

    `clock` freezes "created 3m ago" and the live indicator for deterministic snapshots;
    `startup` runs once the first screen is painted (e.g. start a training run).
    """
    root = Path(runs_dir) if runs_dir is not None else RunStore().root
    if root.exists() and not root.is_dir():
        raise UserError(f"runs directory {root} is a file; pass a folder with --runs-dir")
    return GPTBenchApp(root, backend, device=device, clock=clock, poll_interval=poll_interval, startup=startup)
