"""The run browser's serving control: starts and stops one `gptbench serve` process and shows its address and request count."""

from __future__ import annotations

import subprocess
from pathlib import Path

from textual import work
from textual.widgets import Static

from gptbench.tui.serving import ServeProcess


class ServeStatus(Static):
    """A toolbar line, hidden while nothing is served. The process is watched from a
    thread worker, so the TUI never waits on it."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__("", id=id)
        self.server: ServeProcess | None = None

    def on_mount(self) -> None:
        self.display = False

    @property
    def serving(self) -> bool:
        return self.server is not None and self.server.running

    def start(self, runs_dir: Path, run: str) -> None:
        self.server = ServeProcess(runs_dir, run)
        self._show(f"starting a server for {run}…")
        self._watch(self.server)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        self._show(f"stopping the server for {server.run}…")
        self._end(server)

    def _show(self, text: str | None) -> None:
        self.update(text or "")
        self.display = bool(text)

    @work(thread=True, group="serve")
    def _end(self, server: ServeProcess) -> None:
        rc = server.stop()
        self.app.call_from_thread(self._show, None)
        self.app.call_from_thread(self.app.notify, f"server for {server.run} stopped (exit {rc})")

    @work(thread=True, group="serve")
    def _watch(self, server: ServeProcess) -> None:
        """Wait for its address, then show it with the request count until it ends."""
        server.ready.wait()
        while self.server is server and server.running:
            n = server.requests()
            count = "" if n is None else f" · {n} request{'s' if n != 1 else ''}"
            self.app.call_from_thread(self._show, f"serving {server.run} at {server.address}{count} · v stops")
            try:
                server.proc.wait(1.0)  # a second between counts, or at once when it exits
            except subprocess.TimeoutExpired:
                pass
        if self.server is server:  # it ended by itself (a bad run, a busy port)
            self.server = None
            self.app.call_from_thread(self._show, None)
            self.app.call_from_thread(self.app.notify, f"server for {server.run} exited: {server.error or 'no output'}",
                                      severity="error")

    def on_unmount(self) -> None:
        if self.server is not None:
            self.server.stop()
