"""`--eval-task` during training: the named tasks scored at every evaluation and recorded.

The tasks are read and every item encoded when the trainer is built (before the run's
config is written), so a bad task file leaves no run behind. Every rank scores (under FSDP
a forward is collective); rank 0 records the scores in the run (`runstore.evals`), one
record per task and evaluated step.
"""

from __future__ import annotations

from pathlib import Path

from gptbench.evaluation.results import TaskResult
from gptbench.evaluation.runner import Prepared, evaluate, prepare
from gptbench.evaluation.tasks import resolve_task, split_tasks
from gptbench.runstore.evals import record_scores


class TaskScorer:
    """The run's eval tasks, ready to score on its training backend."""

    def __init__(self, spec: str, backend, tokenizer) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.prepared: list[Prepared] = [prepare(backend, tokenizer, resolve_task(name)) for name in split_tasks(spec)]

    def score(self) -> list[TaskResult]:
        return [evaluate(self.backend, self.tokenizer, p) for p in self.prepared]

    @staticmethod
    def record(run_dir: Path, name: str, step: int, results: list[TaskResult]) -> str:
        """Record `results` at `step` in the run; returns the line to log."""
        record_scores(run_dir, f"{name}@step-{step}", results, step=step)
        return f"step {step}: " + "; ".join(map(log_part, results))


def log_part(r: TaskResult) -> str:
    if r.kind == "bpb":
        return f"{r.task} bpb {r.bpb:.4f}"
    if r.kind == "gen":
        return f"{r.task} exact match {r.acc:.4f}"
    return f"{r.task} acc {r.acc:.4f} acc_norm {r.acc_norm:.4f}"
