"""The run lock: one process writes a run at a time, and a crash never leaves it locked.

An exclusive, non-blocking flock on `<run>/.lock`, held by the run's owner (`RunWriter`)
for its whole life; readers only probe it, to tell a live run from a crashed one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gptbench.runstore.format import LOCK


class RunLock:
    """An exclusive, non-blocking flock on `<run>/.lock`. The kernel drops it when the
    process dies, so a crash never leaves a run locked."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def is_locked(path: Path) -> bool:
    """Whether a live process holds the run's lock (checked without keeping it)."""
    if not (Path(path) / LOCK).exists():
        return False
    probe = RunLock(path)
    try:
        if probe.try_acquire():
            probe.release()
            return False
    except OSError:
        return False
    return True
