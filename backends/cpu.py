"""The CPU thread policy: run torch on as many threads as the cores other processes leave free.

torch's OpenMP threads spin at every barrier, which is the fastest way to use a quiet
machine and the slowest way to share a busy one: a thread that has lost its core to
another process makes its partner spin until the scheduler brings it back. Measured on
the 2-core dev VM (tiny preset, 100 steps of 12x64 tokens, tokens/s):

    setting                          alone     beside `yes > /dev/null`
    2 threads, default spin          23-25k    6-7.5k   (0.27-0.30x)
    2 threads, OMP_WAIT_POLICY=PASSIVE 15-19k   13-14k
    2 threads, GOMP_SPINCOUNT=1000   21-22k    11k
    1 thread                         15k       15k      (0.62x of 2 threads alone)

and beside a process busy part of the time, 2 threads stay ahead of 1 until it takes
about 0.6 of a core. No fixed setting is both fastest alone and safe beside a busy
process, so gptbench keeps torch's spinning default and adapts the thread count (the
`gptbench train` command while training; a torch backend on its own while generating,
where beside a busy process 2 threads decode 19 tokens/s at the gpt2 shape and 1 thread 47):
every second it reads how much CPU other processes used (`/proc/stat` minus this
process's own time) and trains on the cores they leave free (a core counts as taken from
half a core of use on), switching after two seconds of the same answer so a blip does
not flap. The user's own choice (`--threads`, `OMP_NUM_THREADS`) is never overridden;
where `/proc/stat` does not exist (macOS) the thread count stays as torch set it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

from gptbench import paths

USER_THREAD_VARIABLES = (paths.TORCH_THREADS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
INTERVAL_S = 1.0  # how often the others' load is measured
SWITCH_AFTER = 2  # consecutive measurements that must agree before the count changes


def user_chose_threads() -> bool:
    """Whether the user fixed the thread count (a flag or an environment variable)."""
    return any(os.environ.get(name, "").strip() for name in USER_THREAD_VARIABLES)


def threads_for(cores: int, others: float) -> int:
    """The threads to train on when other processes use `others` cores of `cores`."""
    return max(1, min(cores, cores - math.ceil(others - 0.5)))


class CpuMeter:
    """How many cores other processes used since the last reading (Linux /proc)."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last = self._read()

    @staticmethod
    def available() -> bool:
        return os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")

    def _read(self) -> tuple[int, int, float]:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])  # utime + stime, every thread of this process
        return busy, own, time.monotonic()

    def others(self) -> float:
        busy, own, now = self._read()
        b0, o0, t0 = self._last
        self._last = (busy, own, now)
        elapsed = max(now - t0, 1e-6)
        return max(0.0, ((busy - b0) - (own - o0)) / self._tick / elapsed)


class ThreadPolicy:
    """Adapts a backend's CPU threads while it trains or generates; `tick()` once per step
    or token (cheap: it reads /proc only once a second)."""

    def __init__(self, set_threads: Callable[[int], None], cores: int, threads: int) -> None:
        self.set_threads = set_threads
        self.cores = cores
        self.threads = threads
        self.meter = CpuMeter()
        self._next = time.monotonic() + INTERVAL_S
        self._wanted, self._agree = threads, 0
        self.switches: list[tuple[float, int]] = []  # (time, threads) of every change, for the log

    @classmethod
    def for_backend(cls, backend: object) -> "ThreadPolicy | None":
        """The policy for a backend that trains on this machine's CPU with a thread count
        nobody fixed; None otherwise (a GPU, MLX, several processes, the user's choice)."""
        get = getattr(backend, "cpu_threads", None)
        if get is None or get() is None or user_chose_threads() or not CpuMeter.available():
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cores < 2:
            return None
        return cls(backend.set_cpu_threads, cores, get())

    def tick(self) -> tuple[int, float] | None:
        """Measure (once a second) and switch when due; returns (threads, others' cores)
        when the count changed, else None."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + INTERVAL_S
        others = self.meter.others()
        want = threads_for(self.cores, others)
        if want == self.threads:
            self._agree = 0
            return None
        self._agree = self._agree + 1 if want == self._wanted else 1
        self._wanted = want
        if self._agree < SWITCH_AFTER:
            return None
        self.threads, self._agree = want, 0
        self.set_threads(want)
        self.switches.append((time.time(), want))
        return want, others
