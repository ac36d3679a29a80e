"""Running a sweep's trials: `gptbench train --no-ui` subprocesses, N at a time, resumable, median-rule pruning.

A trial is an ordinary run started with its spec passed whole as flags; the record is
saved after every change of state, so a sweep killed at any moment continues with
`gptbench sweep --resume NAME`: finished, failed and pruned trials are kept, an interrupted
trial's run is resumed from its last checkpoint (`train --resume`), a run still training
from the killed sweep is waited for, and a run killed before its config was written is
started again.

Median rule (`--early-stop`, as in Google Vizier): at each evaluation of a running trial,
if at least three finished trials evaluated at the same step and this trial's best value of
the metric so far is worse than their median best up to that step, it is stopped (its run
keeps a checkpoint and can be resumed by hand) and recorded as `pruned`.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from gptbench.runstore import Run, RunStore, is_locked, iter_jsonl, read_summary
from gptbench.sweeps.record import DONE, SweepRecord, Trial, save, sweep_dir
from gptbench.sweeps.results import METRIC_LABEL, metric_value, settings_text

MIN_FOR_MEDIAN = 3
POLL_S = 0.2


@dataclass
class Running:
    trial: Trial
    proc: subprocess.Popen[bytes] | None  # None: a run still training from an earlier sweep process
    out: IO[bytes] | None = None
    seen_step: int = -1  # the last evaluation the median rule looked at
    pruned: bool = False


@dataclass
class SweepRunner:
    root: Path
    record: SweepRecord
    parallel: int = 1
    say: Callable[[str], None] = print
    python: list[str] = field(default_factory=lambda: [sys.executable, "-m", "gptbench"])

    def run(self) -> SweepRecord:
        """Run every trial not done yet; returns the record (saved after each change)."""
        todo = [t for t in self.record.trials if t.state not in DONE]
        running: list[Running] = []
        try:
            while todo or running:
                while todo and len(running) < self.parallel:
                    started = self._start(todo.pop(0))
                    if started is not None:
                        running.append(started)
                time.sleep(POLL_S)
                for r in list(running):
                    if self.record.early_stop and r.proc is not None and not r.pruned:
                        self._median_rule(r)
                    if self._ended(r):
                        running.remove(r)
                        self._finish(r)
        except BaseException:
            self._interrupt(running)
            raise
        return self.record

    # ---- one trial -----------------------------------------------------------------------
    def _command(self, trial: Trial) -> list[str] | None:
        """How to (re)start a trial's run; None when it needs no process (finished already,
        or adopted: still training from an earlier sweep process)."""
        run = Run(self.root / trial.run)
        base = [*self.python, "--runs-dir", str(self.root), "train", "--no-ui"]
        if not run.path.exists():
            return base + trial.argv
        if is_locked(run.path):
            return None
        if not run.exists():  # killed before its config was written: start it again
            RunStore(self.root).delete(trial.run)
            return base + trial.argv
        if read_summary(run).state == "finished":
            return None
        return base + ["--resume", trial.run]

    def _start(self, trial: Trial) -> Running | None:
        command = self._command(trial)
        trial.state, trial.started = "running", trial.started or time.time()
        save(self.root, self.record)
        if command is None:
            if is_locked(self.root / trial.run):
                self.say(f"waiting for {trial.run}: still training from an earlier sweep process")
            return Running(trial, None)
        out = open(sweep_dir(self.root, self.record.name) / f"trial-{trial.index:03d}.out", "ab")
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        return Running(trial, proc, out)

    def _ended(self, r: Running) -> bool:
        if r.proc is not None:
            return r.proc.poll() is not None
        return not is_locked(self.root / r.trial.run)

    def _finish(self, r: Running) -> None:
        if r.out is not None:
            r.out.close()
        t = r.trial
        s = read_summary(Run(self.root / t.run))
        t.result = {"best_val_bpb": s.best_val_bpb, "best_val_loss": s.best_val_loss, "step": s.step,
                    "duration": s.duration, **({"error": s.error} if s.error else {})}
        t.state = "finished" if s.state == "finished" else "pruned" if r.pruned else "failed"
        t.ended = time.time()
        save(self.root, self.record)
        self.say(self._line(t))

    def _line(self, t: Trial) -> str:
        done = sum(x.state in DONE for x in self.record.trials)
        v = metric_value(t, self.record.metric)
        value = f"{METRIC_LABEL[self.record.metric]} {v:.4f}" if v is not None else "no evaluation"
        why = f": {t.result['error']}" if t.state == "failed" and t.result.get("error") else ""
        took = f", {t.ended - t.started:.1f}s" if t.ended and t.started else ""
        return f"[{done}/{len(self.record.trials)}] {t.run}  {settings_text(t)}  {t.state}{why}  {value} (step {t.result.get('step', 0)}{took})"

    def _interrupt(self, running: list[Running]) -> None:
        """The sweep itself was stopped: stop its trials (each saves a checkpoint) and
        record them as stopped, to be resumed with the sweep."""
        for r in running:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGINT)
        for r in running:
            if r.proc is not None:
                try:
                    r.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                if r.out is not None:
                    r.out.close()
            r.trial.state = "stopped"
        save(self.root, self.record)

    # ---- the median rule -------------------------------------------------------------------
    def _median_rule(self, r: Running) -> None:
        evals = [e for e in iter_jsonl(Run(self.root / r.trial.run).metrics_path) if e.get("type") == "eval" and e.get("step", 0) > 0]
        if not evals or evals[-1]["step"] == r.seen_step:
            return
        step = r.seen_step = evals[-1]["step"]
        mine = best_until(evals, step, self.record.metric)
        others = [best_until(self._curve(t), step, self.record.metric, exact=True)
                  for t in self.record.trials if t.state == "finished"]
        values = [v for v in others if v is not None]
        if mine is None or len(values) < MIN_FOR_MEDIAN:
            return
        median = statistics.median(values)
        if mine > median and r.proc is not None and r.proc.poll() is None:
            r.pruned = True
            r.proc.send_signal(signal.SIGINT)
            self.say(f"pruning {r.trial.run} at step {step}: {mine:.4f} is worse than the median {median:.4f} of {len(values)} finished trials")

    def _curve(self, trial: Trial) -> list[dict[str, Any]]:
        return [e for e in iter_jsonl(Run(self.root / trial.run).metrics_path) if e.get("type") == "eval"]


def best_until(evals: list[dict[str, Any]], step: int, metric: str, exact: bool = False) -> float | None:
    """The best (lowest) metric over evaluations up to `step`; with `exact`, None unless
    one was at `step` itself."""
    if exact and not any(e.get("step") == step for e in evals):
        return None
    values = [e.get(metric) if e.get(metric) is not None else e.get("val_loss") for e in evals if e.get("step", 0) <= step]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return min(values) if values else None
