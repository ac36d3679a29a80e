"""The learning-rate schedule: linear warmup, cosine decay to a floor, and what a resume does with it."""

from __future__ import annotations

import math
from typing import Any

from gptbench.spec.train import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
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


def schedule_notes(start: int, t: TrainConfig, saved_train: dict[str, Any]) -> list[str]:
    """What a resume will do with the learning rate, and how to re-plan it."""
    if not t.decay_lr:
        return [f"learning rate constant at {t.lr:g}"]
    end = t.lr_decay_iters or t.max_iters
    notes = [f"learning rate now {lr_at(start, t):.3g}; the cosine schedule reaches --min-lr {t.min_lr:g} at step {end}"]
    if t.max_iters > end and t.max_iters != saved_train.get("max_iters"):
        notes.append(
            f"steps {max(start, end)}-{t.max_iters} train at --min-lr; pass --lr-decay-iters {t.max_iters} to stretch the schedule to the new end"
        )
    return notes
