"""What the TUI knows about runs, read from the run directories (no Textual here).

Everything in this module runs in worker threads, never on the UI thread, and is cheap to
repeat: the scanner re-reads a run only when the `stat()` of its `config.json` /
`status.json` changed (or when it is live and its pid/heartbeat must be re-checked), so
polling a directory of hundreds of runs every second costs a few hundred `stat` calls.
`metrics.jsonl` is only read for the one run whose details or dashboard is open, and then
incrementally through `JsonlTail`.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gptbench.runstore import CheckpointInfo, CorruptRunError, JsonlTail, Run, RunSummary, iter_jsonl_chunks, read_summary
from gptbench.runstore.evals import score_series
from gptbench.runstore.format import LIVE_STATES
from gptbench.sources import DamagedCheckpoint
from gptbench.tui.metricseries import MetricSeries

# Keys that always differ between runs and say nothing about how they differ.
DIFF_IGNORED = frozenset({"name", "created", "format_version", "command"})
DIFF_IGNORED_PREFIXES = ("param_breakdown.", "tokenizer.fingerprint", "data.cache")

Clock = Callable[[], float]
TAIL_FIRST_BYTES = 4 << 20  # a longer metrics.jsonl is shown from its last 4 MB first; the head follows


def _sig(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class RunScanner:
    """Stat-based change detection over a runs directory (thread-safe; one scan at a time)."""

    def __init__(self, root: Path, clock: Clock = time.time) -> None:
        self.root = Path(root)
        self.clock = clock
        self._cache: dict[str, tuple[tuple[Any, ...], RunSummary]] = {}
        self._last: list[RunSummary] | None = None
        self._lock = threading.Lock()

    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._cache.clear()
            else:
                self._cache.pop(name, None)

    def scan(self) -> tuple[list[RunSummary], bool]:
        """All runs sorted by name, and whether anything changed since the last scan."""
        with self._lock:
            try:
                names = sorted(
                    e.name for e in os.scandir(self.root) if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                )
            except OSError:  # missing or unreadable runs directory: no runs
                names = []
            out: list[RunSummary] = []
            cache: dict[str, tuple[tuple[Any, ...], RunSummary]] = {}
            for name in names:
                path = self.root / name
                sig = (_sig(path / "config.json"), _sig(path / "status.json"), _sig(path))
                hit = self._cache.get(name)
                if hit is not None and hit[0] == sig and hit[1].state not in LIVE_STATES:
                    summary = hit[1]
                else:
                    summary = read_summary(Run(path), self.clock())
                cache[name] = (sig, summary)
                out.append(summary)
            self._cache = cache
            changed = out != self._last
            self._last = out
            return out, changed


class TextTail:
    """The last `max_lines` lines of an append-only text file, read incrementally."""

    def __init__(self, path: Path, max_lines: int = 400) -> None:
        self.path = path
        self.offset = 0
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.total = 0  # lines ever read, so a consumer that missed a poll knows how many are new
        self._partial = b""

    def poll(self) -> list[str]:
        """New complete lines since the last poll (also kept in `lines`)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced or truncated: start again
            self.offset, self._partial = 0, b""
            self.lines.clear()
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            if self.offset == 0 and size > 256 * 1024:  # only the tail of a long log matters
                self.offset = size - 256 * 1024
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        self.offset += len(chunk)
        data = self._partial + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return []
        self._partial = data[end + 1 :]
        new = data[:end].decode("utf-8", errors="replace").split("\n")
        self.lines.extend(new)
        self.total += len(new)
        return new


@dataclass
class WatchSnapshot:
    """A consistent copy of what a `RunWatcher` knows, safe to hand to the UI thread while
    the watcher keeps reading in its worker."""

    name: str
    state: str
    summary: RunSummary  # what the run browser shows (state, step, error...), read with the rest
    status: dict[str, Any]
    config: dict[str, Any] | None
    config_error: str
    checkpoints: list[CheckpointInfo]
    series: MetricSeries
    log_lines: list[str]
    log_total: int
    damaged: list[DamagedCheckpoint] = field(default_factory=list)  # checkpoint files that cannot be read


class RunWatcher:
    """Incremental view of one run for a dashboard or the details panel: status, curves,
    log tail. `poll()` runs in a worker thread; it holds a lock so two overlapping polls
    never read the same bytes twice, and returns a snapshot (or None if nothing changed)."""

    def __init__(self, run: Run, clock: Clock = time.time) -> None:
        self.run = run
        self.clock = clock
        self.series = MetricSeries()
        self.metrics = JsonlTail(run.metrics_path)
        self.log = TextTail(run.log_path)
        self.status: dict[str, Any] = {}
        self.state = "unknown"
        self.summary = RunSummary(run.name, "unknown")
        self.config: dict[str, Any] | None = None
        self.config_error = ""
        self.checkpoints: list[CheckpointInfo] = []
        self.damaged: list[DamagedCheckpoint] = []
        self._ckpt_sig: tuple[int, int] | None = None
        self._polled = False
        self._head_end = 0  # bytes at the start of metrics.jsonl not read yet (see TAIL_FIRST_BYTES)
        self._head_restarts = 0
        self.lock = threading.Lock()

    def poll(self, force: bool = False) -> WatchSnapshot | None:
        with self.lock:
            changed = force or not self._polled
            if not self._polled:  # a long file: its end now, the rest on the next poll
                self._head_end, self._head_restarts = self.metrics.start_near_end(TAIL_FIRST_BYTES), self.metrics.restarts
            elif self._head_end:
                changed = self._read_head() or changed
            self._polled = True
            if self.config is None and self.run.config_path.exists():
                try:
                    self.config, self.config_error = self.run.config(), ""
                except CorruptRunError as exc:
                    self.config_error = str(exc)
                changed = True
            try:
                status = self.run.status()
            except CorruptRunError:
                status = {}
            summary = read_summary(self.run, self.clock()) if self.run.path.is_dir() else RunSummary(self.run.name, "missing")
            if status != self.status or summary != self.summary:
                self.status, self.summary, self.state, changed = status, summary, summary.state, True
            if self.series.extend(self.metrics.poll()):
                changed = True
            scores = score_series(self.run.path)  # --eval-task / gptbench eval, charted with the losses
            if scores != self.series.scores:
                self.series.scores, self.series.version, changed = scores, self.series.version + 1, True
            sig = _sig(self.run.checkpoints_dir)  # a checkpoint appears or goes: the folder changes
            if sig != self._ckpt_sig:
                self._ckpt_sig, self.checkpoints, changed = sig, self.run.checkpoints(), True
                self.damaged = DamagedCheckpoint.found_in(self.run)
            new_lines = self.log.poll()
            if not (changed or new_lines):
                return None
            series = self.series.copy()
            return WatchSnapshot(
                self.run.name, self.state, self.summary, dict(self.status), self.config, self.config_error,
                list(self.checkpoints), series, list(self.log.lines), self.log.total, list(self.damaged),
            )

    def _read_head(self) -> bool:
        """Read the start of a long metrics file that the first poll skipped, a chunk at a
        time, and put it before what has been read since (unless the file was replaced)."""
        head = MetricSeries()
        for records in iter_jsonl_chunks(self.run.metrics_path, 0, self._head_end):
            head.extend(records)
        self._head_end = 0
        if self.metrics.restarts != self._head_restarts:
            return False  # rewritten meanwhile: the tail reader has read it all again
        self.series.prepend(head)
        return True


# ---- config diff ------------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 4}} -> {"model.n_layer": 4}; lists stay values."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flatten(v, key + "."))
            else:
                out[key] = v
    return out


def config_diff(configs: dict[str, dict[str, Any] | None]) -> list[tuple[str, list[Any]]]:
    """Keys whose values differ between the given runs' configs (missing = None), sorted;
    bookkeeping keys (name, created, command...) are left out."""
    flat = {name: flatten(cfg or {}) for name, cfg in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values()))) if flat else []
    rows = []
    for key in keys:
        if key in DIFF_IGNORED or key.startswith(DIFF_IGNORED_PREFIXES):
            continue
        values = [f.get(key) for f in flat.values()]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str) for v in values):
            rows.append((key, values))
    return rows


# ---- run states ----------------------------------------------------------------------------
def state_reason(summary: RunSummary, status: dict[str, Any] | None = None, now: float | None = None) -> str:
    """Why a run is in a state that needs explaining ('' when it needs none): the recorded
    error of a failed, aborted or corrupt run, the reader's reason for a crashed one, or
    what a missing heartbeat means."""
    if summary.error:
        return summary.error
    if summary.state == "crashed":
        return ("its trainer process is gone (killed, or the machine restarted) without a final status; "
                "r resumes it from its last checkpoint")
    if summary.state == "stale":
        beat = (status or {}).get("heartbeat")
        age = fmt_duration((now if now is not None else time.time()) - beat) if isinstance(beat, (int, float)) else "minutes"
        return f"no heartbeat for {age}: its trainer is hung, or runs on another machine"
    if summary.state == "failed":
        return "no reason was recorded; see log.txt"
    return ""


# ---- formatting ---------------------------------------------------------------------------
def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def fmt_age(created: float, now: float) -> str:
    if not created:
        return "-"
    d = now - created
    if d < 45:
        return "just now"
    if d < 3600:
        return f"{int(d // 60)}m ago"
    if d < 86400:
        return f"{int(d // 3600)}h ago"
    if d < 30 * 86400:
        return f"{int(d // 86400)}d ago"
    return time.strftime("%Y-%m-%d", time.localtime(created))


def fmt_loss(v: float | None) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def fmt_rate(v: float | None) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v / 1000:.1f}k" if v >= 10_000 else f"{v:,.0f}"
