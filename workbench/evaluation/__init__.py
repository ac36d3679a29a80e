"""Evaluation jobs: score a model on multiple-choice tasks and text by log-likelihood.

`tasks.resolve_task` turns what a user names (`mc:FILE`, `bpb:FILE`, `hellaswag`, ...) into a
`Task`; `runner.evaluate` scores it on any backend through the backend contract
(`token_logprobs`), batched, and returns a `TaskResult` (acc, acc_norm, bpb, per-item
log-likelihoods). Definitions follow lm-evaluation-harness: see `scoring` and `results`.
"""

from gptbench.evaluation.items import Item, Task
from gptbench.evaluation.results import TaskResult, core_score

__all__ = ["Item", "Task", "TaskResult", "core_score"]
