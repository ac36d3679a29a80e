"""What the screens may ask of the app that hosts them, as a protocol.

Screens reach the app through `self.app`; typing that as this protocol instead of the app
class keeps the import graph one-way (the app imports its screens, never the reverse), so
a screen can be read, and tested, without the whole app behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from textual.signal import Signal

    from gptbench.runstore import RunStore, RunSummary
    from gptbench.tui.launcher import Launch, Launcher
    from gptbench.tui.runsdata import Clock


class WorkbenchHost(Protocol):
    """The app's state and actions that screens use (see `gptbench.tui.app.GPTBenchApp`)."""

    runs_dir: Path
    backend: str
    device: str
    clock: "Clock"
    store: "RunStore"
    launcher: "Launcher"
    summaries: "list[RunSummary]"
    scanned: bool
    runs_signal: "Signal[list[RunSummary]]"

    @property
    def runs_dir_label(self) -> str: ...
    def frame(self) -> int: ...
    def request_scan(self) -> None: ...
    def after_scan(self, callback: Callable[[], None]) -> None: ...
    def open_dashboard(self, name: str) -> None: ...
    def open_compare(self, names: list[str], sweep: str | None = None) -> None: ...
    def open_chat(self, name: str | None = None) -> None: ...
    def start_training(self, name: str, flags: list[str], *, open_dashboard: bool = True) -> "Launch": ...
    def ask_resume(self, name: str, step: int, max_iters: int, state: str, *, open_dashboard: bool = True) -> None: ...
    def stop_run(self, name: str) -> bool: ...
