"""Scores: per item, per task, and the CORE-style aggregate over tasks.

`acc` picks the choice with the highest summed log-likelihood; `acc_norm` divides each by
its continuation's length in characters first. That is lm-evaluation-harness's definition
(`completion_len = len(choice)`), kept so the numbers agree with it; for ASCII text it is
the length in bytes. Ties go to the first choice (numpy's argmax), as there.

The aggregate is nanochat's CORE idea: each task's accuracy centred on its chance level,
`(acc - 1/choices) / (1 - 1/choices)` (chance = 0, perfect = 1), averaged over the
multiple-choice tasks that were run; `core_tasks` names them, since it covers only those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class ItemScore:
    """One item's log-likelihood per choice and what it predicts."""

    index: int
    answer: int
    logliks: tuple[float, ...]
    lengths: tuple[int, ...]  # characters of each continuation
    truncated: bool  # a context was cut from the left to fit the block size

    @property
    def pred(self) -> int:
        return int(np.argmax(self.logliks))

    @property
    def pred_norm(self) -> int:
        return int(np.argmax(np.asarray(self.logliks) / np.asarray(self.lengths, dtype=np.float64)))

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "answer": self.answer, "logliks": list(self.logliks), "pred": self.pred,
                "pred_norm": self.pred_norm, "truncated": self.truncated}


@dataclass(frozen=True)
class TaskResult:
    """One task's scores on one model."""

    task: str
    kind: str  # "mc" | "bpb" | "gen"
    n: int  # items (or, for text, tokens scored)
    acc: float | None = None  # for "gen": the exact-match rate
    acc_norm: float | None = None
    chance: float | None = None  # mean 1/choices
    truncated: int = 0  # items (windows) whose context was cut
    shots: int = 0
    bpb: float | None = None
    items: tuple[Any, ...] = field(default=(), repr=False)  # ItemScore (mc) or generative.GenScore (gen)

    @classmethod
    def from_items(cls, task: str, items: Sequence[ItemScore], shots: int) -> "TaskResult":
        n = len(items)
        return cls(task, "mc", n, acc=sum(s.pred == s.answer for s in items) / n,
                   acc_norm=sum(s.pred_norm == s.answer for s in items) / n,
                   chance=float(np.mean([1 / len(s.logliks) for s in items])),
                   truncated=sum(s.truncated for s in items), shots=shots, items=tuple(items))

    @property
    def centered(self) -> float | None:
        """Accuracy centred on chance: 0 at chance, 1 when every item is right."""
        if self.acc is None or self.chance is None:
            return None
        return (self.acc - self.chance) / (1 - self.chance)

    def to_dict(self) -> dict[str, Any]:
        """What `--json` prints and the run records: acc, acc_norm and n (bpb for text; acc,
        the exact-match rate, for a generative task)."""
        out: dict[str, Any] = {"kind": self.kind, "n": self.n, "truncated": self.truncated}
        if self.kind == "mc":
            out.update(acc=self.acc, acc_norm=self.acc_norm, centered=self.centered, shots=self.shots)
        elif self.kind == "gen":
            out.update(acc=self.acc, shots=self.shots)
        else:
            out.update(bpb=self.bpb)
        return out


def core_tasks(results: Sequence[TaskResult]) -> list[str]:
    return [r.task for r in results if r.kind == "mc"]


def core_score(results: Sequence[TaskResult]) -> float | None:
    """Mean centred accuracy over the multiple-choice tasks in `results` (None without one)."""
    centred = [r.centered for r in results if r.kind == "mc" and r.centered is not None]
    return float(np.mean(centred)) if centred else None
