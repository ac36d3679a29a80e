"""The learning-rate schedule: linear warmup, cosine decay to a floor, and what a resume does with it.

With a training-time budget (`--max-time`) the same schedule is laid over time: its
position is `max(step, max_iters * elapsed / max_time)` instead of the step, so warm-up
lasts `warmup_iters / max_iters` of the budget and the cosine reaches `min_lr` when the
budget is spent (at `lr_decay_iters / max_iters` of it). `elapsed` is training time
(evaluations, checkpoints and start-up left out), checkpointed, so a resumed run continues
the schedule where it was. Should `max_iters` come first, the steps lead, as without a budget.
"""

from __future__ import annotations

import math
from typing import Any

from gptbench.spec.train import TrainConfig


def lr_at(step: float, t: TrainConfig) -> float:
    """Linear warmup to `lr`, cosine decay to `min_lr` at `lr_decay_iters`, then flat."""
    if not t.decay_lr:
        return t.lr
    if step < t.warmup_iters:
        return t.lr * (step + 1) / (t.warmup_iters + 1)
    decay_iters = t.lr_decay_iters or t.max_iters
    if step >= decay_iters:
        return t.min_lr
    ratio = (step - t.warmup_iters) / max(1, decay_iters - t.warmup_iters)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.lr - t.min_lr)


def position(step: int, elapsed: float, t: TrainConfig) -> float:
    """Where the schedule stands: the step, or with a budget the step the elapsed share
    of the budget stands for, whichever is further."""
    if t.max_time <= 0:
        return step
    return max(float(step), t.max_iters * min(1.0, elapsed / t.max_time))


def lr_now(step: int, elapsed: float, t: TrainConfig) -> float:
    """The learning rate of the next step, over steps or (with a budget) over time."""
    return lr_at(step, t) if t.max_time <= 0 else lr_at(position(step, elapsed, t), t)  # type: ignore[arg-type]


def schedule_notes(start: int, t: TrainConfig, saved_train: dict[str, Any]) -> list[str]:
    """What a resume will do with the learning rate, and how to re-plan it."""
    if not t.decay_lr:
        return [f"learning rate constant at {t.lr:g}"]
    if t.max_time > 0:
        return [f"the learning-rate schedule runs over the --max-time budget ({t.max_time:g}s of training time)"]
    end = t.lr_decay_iters or t.max_iters
    notes = [f"learning rate now {lr_at(start, t):.3g}; the cosine schedule reaches --min-lr {t.min_lr:g} at step {end}"]
    if t.max_iters > end and t.max_iters != saved_train.get("max_iters"):
        notes.append(
            f"steps {max(start, end)}-{t.max_iters} train at --min-lr; pass --lr-decay-iters {t.max_iters} to stretch the schedule to the new end"
        )
    return notes
