"""Memory probing: how much a process has used and how much the machine has free, so work
that cannot fit is refused before anything is built.

Why a module of its own: the trainer, `convert` and every backend ask it, and none of them
needs a framework for it (a backend adds its accelerator's own numbers on top)."""

from __future__ import annotations

import os
import resource
import sys

from gptbench.errors import UserError


def peak_rss() -> int:
    """This process's peak resident memory in bytes (what a CPU rank costs)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def system_available_memory() -> int | None:
    """MemAvailable on Linux, physical memory on macOS; None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(needed: int, available: int | None, what: str, fix: str) -> None:
    """Refuse, before building anything, work that cannot fit in memory (UserError)."""
    if available is not None and needed > available:
        raise UserError(f"{what} needs about {needed / 2**30:,.1f} GiB but only {available / 2**30:,.1f} GiB is available; {fix}")
