"""Graceful stops: SIGINT, SIGTERM and SIGHUP end training at the next step boundary."""

from __future__ import annotations

import os
import signal
from typing import Any


class StopFlag:
    """SIGINT, SIGTERM and SIGHUP (the terminal closing) ask for a graceful stop at the next
    step boundary: a checkpoint, then status `stopped`. A second SIGINT aborts at once; the
    final status is still written. A signal the parent set to be ignored (nohup) stays so."""

    MESSAGE = b"\ngptbench: stopping after this step (a checkpoint is saved); press Ctrl-C again to abort\n"

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested and signum == signal.SIGINT:
            os.write(2, self.MESSAGE)  # async-signal-safe, unlike print()
        self.requested = True

    def __enter__(self) -> "StopFlag":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread (tests): no signal handling
            self._old.clear()
        return self

    def quiet(self) -> None:
        """Ignore further Ctrl-C while the final status is written."""
        if self._old:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
