"""Evaluation jobs: score a model on multiple-choice tasks and text by log-likelihood, and a
chat run on generative tasks by exact match.

`tasks.resolve_task` turns what a user names (`mc:FILE`, `bpb:FILE`, `gen:FILE`,
`hellaswag`, ...) into a `Task`; `runner.evaluate` scores it on any backend through the
backend contract (`token_logprobs`, an item's choices sharing their context where the
backend `shares_context`; generation for `gen:`), batched, and returns a `TaskResult` (acc,
acc_norm, bpb, per-item log-likelihoods or answers). Definitions follow
lm-evaluation-harness: see `scoring`, `results` and `generative`.
"""

from gptbench.evaluation.items import Item, Task
from gptbench.evaluation.results import TaskResult, core_score

__all__ = ["Item", "Task", "TaskResult", "core_score"]
