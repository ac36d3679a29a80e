"""A `gptbench serve` process for the run browser (no Textual here): start it, read its address, count its requests, stop it.

Like training, serving never runs on the TUI's event loop: the server is its own process
(`python -m gptbench serve --port 0`, in a new session so Ctrl+C in the terminal does not
reach it), whose first line names the address it listens on; `/health` reports how many
requests it has served. Stopping sends SIGTERM, which the server answers with a graceful exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path


class ServeProcess:
    """One server for one run."""

    def __init__(self, runs_dir: Path, run: str) -> None:
        self.run = run
        self.address: str | None = None  # http://127.0.0.1:PORT/v1 once it listens
        self.error: str | None = None  # its last stderr line, if it exited before listening
        self.ready = threading.Event()  # set when it listens or has exited
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gptbench", "serve", "--run", run, "--port", "0", "--runs-dir", str(runs_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for line in self.proc.stdout:
            if self.address is None and " at http" in line:
                self.address = line.split(" at ", 1)[1].split()[0]
                self.ready.set()
        err = self.proc.stderr.read().strip().splitlines()
        self.error = err[-1] if err else None
        self.ready.set()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def requests(self) -> int | None:
        """Requests served so far (None when it does not answer). Blocks up to a second:
        call it off the event loop."""
        if self.address is None or not self.running:
            return None
        try:
            with urllib.request.urlopen(self.address.removesuffix("/v1") + "/health", timeout=1) as r:
                return int(json.loads(r.read())["requests"])
        except (OSError, ValueError, KeyError):
            return None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait for the graceful exit (killed if it does not come)."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
