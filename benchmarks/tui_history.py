"""Big-history cases of benchmarks/tui.py (issue 25 part 3); run them through tui.py:

    python benchmarks/tui.py --only history            # 2,000 runs, a 1M-record run, a growing file
    python benchmarks/tui.py --only history --quick    # the same paths at 1/10 the size

4. `gptbench runs` wall time with 2,000 runs in the directory (median of 5). Target <= 1 s.
   (The TUI's first paint with 2,000 runs is case 3, `startup`, at --runs 2000.)
5. Opening the dashboard of a run with 1,000,000 metric records: Enter on the run browser
   to the first painted loss chart (the file's last 4 MB), and to the whole history drawn
   (min/max per pixel column: the x axis spans every step). Target <= 1 s to the first.
6. The same run growing at 50 records/s (a thread appends through `RunWriter` and keeps its
   heartbeat) while its dashboard is open: key-to-repaint latency of `l` (median, p95;
   target p95 < 50 ms), and the bytes the app reads per second against the bytes appended
   per second (/proc/PID/io rchar: tailing reads only what was appended, plus status/log).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BRAILLE = tuple(chr(c) for c in range(0x2801, 0x2900))
FULL_TICKS = ("200k", "250k", "400k", "500k", "20k", "25k", "40k", "50k")  # ticks of the whole 0..N axis, never of its tail


def bench_runs_cli(root: Path, n_runs: int, reps: int) -> dict[str, Any]:
    """`gptbench runs` wall time (a fresh process each time, output to a pipe 120 wide)."""
    env = {**os.environ, "COLUMNS": "120"}
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(root), "runs"], env=env,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode or done.stdout.count("│ run-") != n_runs:
            raise RuntimeError(f"gptbench runs failed or listed the wrong runs: {done.stderr[-500:]}")
    return {"runs": n_runs, "reps": reps, "median_s": statistics.median(times), "all_s": times, "target_s": 1.0}


def train_line(step: int, loss: float, t0: float) -> str:
    """A train record exactly as `RunWriter.append_metric` writes it (json.dumps of TrainRecord)."""
    return (f'{{"step": {step}, "loss": {loss!r}, "lr": 0.0006, "grad_norm": 0.5, "tokens_per_sec": 12345.0, '
            f'"elapsed": {step * 0.1!r}, "time": {t0 + step * 0.1!r}, "type": "train"}}\n')


def make_big_run(root: Path, name: str, records: int) -> Path:
    """A `running` run owned by this process (its pid, a fresh heartbeat) with `records`
    train records (an eval every 1,000 steps, a loss spike at 65% of the way)."""
    sys.path.insert(0, str(REPO / "tests" / "tui"))
    from tui_fixtures import write_run

    run = write_run(root, name, state="running", step=0, max_iters=2 * records, pid=os.getpid(), heartbeat=time.time())
    t0 = time.time() - records * 0.1
    spike = int(records * 0.654321)
    with open(run / "metrics.jsonl", "w") as f:
        for start in range(1, records + 1, 10_000):
            lines = []
            for s in range(start, min(start + 10_000, records + 1)):
                loss = 50.0 if s == spike else round(1.0 + 3.0 / (1.0 + s / 5000) + 0.02 * ((s * 7919) % 13) / 13, 5)
                lines.append(train_line(s, loss, t0))
                if s % 1000 == 0:
                    lines.append(f'{{"step": {s}, "train_loss": {loss!r}, "val_loss": {loss + 0.1!r}, "val_ppl": 3.0, '
                                 f'"elapsed": {s * 0.1!r}, "time": {t0 + s * 0.1!r}, "val_bpb": 1.5, "type": "eval"}}\n')
            f.write("".join(lines))
    return run


class Grower:
    """Appends train records at `rate`/s through `RunWriter` and keeps the run's heartbeat."""

    def __init__(self, root: Path, name: str, first_step: int, rate: float) -> None:
        self.root, self.name, self.step, self.rate = root, name, first_step, rate
        self.appended_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Grower":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from gptbench.runstore import RunState, RunWriter, TrainRecord

        writer = RunWriter.open(self.root, self.name)
        t0, n, beat = time.time(), 0, 0.0
        try:
            while not self._stop.is_set():
                due = int((time.time() - t0) * self.rate)
                while n < due:
                    self.step += 1
                    rec = TrainRecord(self.step, 1.1 + 0.01 * (n % 7), 6e-4, 0.5, 12345.0, self.step * 0.1, time.time())
                    before = writer.run.metrics_path.stat().st_size
                    writer.append_metric(rec)
                    self.appended_bytes += writer.run.metrics_path.stat().st_size - before
                    n += 1
                if time.time() - beat > 1.0:
                    writer.set_status(RunState.RUNNING, pid=os.getpid(), host=os.uname().nodename, heartbeat=time.time(),
                                      step=self.step, max_iters=4 * self.step, tokens_per_sec=12345.0, elapsed=self.step * 0.1)
                    beat = time.time()
                time.sleep(0.005)
        finally:
            writer.close()


def read_bytes(pid: int) -> int:
    """Bytes the process has read through read() and friends (/proc/PID/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/PID/io")


def open_dashboard(term: Any, name: str) -> tuple[float, float, str]:
    """Enter on the selected run; seconds to the first loss chart and to the whole history."""
    t0 = time.perf_counter()
    term.keys("Enter")
    shown = term.wait(lambda s: f"Dashboard · {name}" in s and "loss" in s and any(c in s for c in BRAILLE), 120,
                      "the first chart", poll=0.005)
    first = time.perf_counter() - t0
    term.wait(lambda s: any(t in s for t in FULL_TICKS), 300, "the whole history", poll=0.02)
    return first, time.perf_counter() - t0, shown


def bench_history(work: Path, term_cls: Callable[..., Any], press: Callable[[Any, int], dict[str, Any]],
                  records: int, presses: int, grow_seconds: float) -> dict[str, Any]:
    """Cases 5 and 6 on one 1M-record run (built once: about 190 MB)."""
    root = work / "runs-history"
    name = "big"
    t = time.perf_counter()
    run = make_big_run(root, name, records)
    print(f"  wrote {records:,} records ({(run / 'metrics.jsonl').stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s",
          flush=True)
    out: dict[str, Any] = {"records": records}
    term = term_cls("hist")
    with Grower(root, name, records, 0.0):  # only the heartbeat: the run stays `running`
        term.start([sys.executable, "-m", "gptbench", "--runs-dir", str(root)])
        try:
            term.wait(lambda s: name in s and "1 run" in s, 60, "the run listed", poll=0.05)
            first, whole, _ = open_dashboard(term, name)
            out["open"] = {"first_chart_s": first, "whole_history_s": whole, "target_first_s": 1.0}
            print(f"  dashboard: first chart {first:.2f}s, whole history {whole:.2f}s", flush=True)
        finally:
            term.kill()
    term = term_cls("grow")
    with Grower(root, name, records, 50.0) as grower:
        term.start([sys.executable, "-m", "gptbench", "--runs-dir", str(root)])
        try:
            term.wait(lambda s: name in s and "1 run" in s, 60, "the run listed", poll=0.05)
            open_dashboard(term, name)
            time.sleep(3)  # the first full read is not tailing
            pid = term.pid()
            rchar0, app0, t0 = read_bytes(pid), grower.appended_bytes, time.time()
            stats = press(term, presses)
            remaining = grow_seconds - (time.time() - t0)
            if remaining > 0:
                time.sleep(remaining)
            dt = time.time() - t0
            out["growing"] = {**stats, "rate_records_s": 50.0, "seconds": dt, "app_read_bytes_s": (read_bytes(pid) - rchar0) / dt,
                              "appended_bytes_s": (grower.appended_bytes - app0) / dt, "target_p95_ms": 50}
        finally:
            term.kill()
    return out


def print_rows(out: dict[str, Any]) -> None:
    if "runs_cli" in out:
        r = out["runs_cli"]
        label = f"gptbench runs, {r['runs']} runs"
        print(f"{label:<44} {r['median_s']:>13.2f}s {'<= 1s':>10}")
    h = out.get("history")
    if h:
        n = h["records"]
        print(f"{f'dashboard of a {n:,}-record run: 1st chart':<44} {h['open']['first_chart_s']:>13.2f}s {'<= 1s':>10}")
        print(f"{'  ... whole history drawn (min/max per column)':<44} {h['open']['whole_history_s']:>13.2f}s {'':>10}")
        g = h["growing"]
        print(f"{'growing 50 rec/s: key -> repaint, median':<44} {g['median_ms']:>12.1f}ms {'':>10}")
        print(f"{'growing 50 rec/s: key -> repaint, p95':<44} {g['p95_ms']:>12.1f}ms {'< 50ms':>10}")
        print(f"{'  app reads / appended (bytes/s)':<44} {g['app_read_bytes_s']:>7,.0f}/{g['appended_bytes_s']:,.0f} {'':>10}")
