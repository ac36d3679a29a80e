"""The training steps: batches, one optimizer step after another, logging and evaluations.

`train_until_done` drives a `Trainer` (`training.trainer`) until its `max_iters` or an
agreed stop. The loss is read back from the device once every `log_interval` steps (the
only host sync of a step), so the accelerator never waits on the host in between.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from gptbench.backends.optim import muon_blocks
from gptbench.backends.parallel import Collectives
from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError
from gptbench.runstore import HEARTBEAT_INTERVAL_S, RunState, TrainRecord
from gptbench.spec.duration import format_duration
from gptbench.spec.train import TrainConfig
from gptbench.training.schedule import lr_now
from gptbench.training.signals import StopFlag


class Diverged(UserError):
    """The loss stopped being a finite number."""


def optimizer_notes(t: TrainConfig, model_cfg: GPTConfig) -> list[str]:
    """Which optimizer trains what (Muon: the hidden matrices; AdamW: the rest)."""
    if t.optimizer != "muon":
        return []
    n = len(muon_blocks(model_cfg))
    return [f"Muon (peak lr {t.muon_lr:g}) trains the {n} hidden matrices; AdamW (peak lr {t.lr:g}) "
            "the embeddings, head, norms and biases"]


def parallel_lines(comm: Collectives, t: TrainConfig, block_size: int, local_accum: int) -> list[str]:
    """How the processes share a step, for the run's header."""
    par, world = comm.parallel, comm.world_size
    if world == 1 and not par.activation_checkpointing:
        return []
    ac = ", activation checkpointing" if par.activation_checkpointing else ""
    if world == 1:
        return [f"one process{ac}"]
    return [
        f"{world} processes ({par.strategy}, {comm.name}{ac}): global batch {world} ranks x {t.batch_size} sequences x "
        f"{local_accum} micro-batches = {world * t.batch_size * local_accum:,} sequences ({t.tokens_per_step(block_size):,} tokens) per step"
    ]


def step_batches(trainer: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's contiguous share of the step's micro-batches, drawn from the one seeded
    stream (the other ranks' shares are skipped, not read)."""
    from gptbench.data import get_batch, skip_batch

    t, T, A, rank = trainer.t, trainer.model_cfg.block_size, trainer.local_accum, trainer.comm.rank
    mine = range(rank * A, (rank + 1) * A)
    batches = []
    for i in range(t.grad_accum):
        if i in mine:
            batches.append(get_batch(trainer.data.train, t.batch_size, T, trainer.batch_rng))
        else:
            skip_batch(trainer.data.train, t.batch_size, T, trainer.batch_rng)
    return batches


def global_numbers(trainer: Any, loss: float) -> float:
    """The step's loss averaged over ranks, and every rank's peak memory (one sum)."""
    world, rank = trainer.comm.world_size, trainer.comm.rank
    memory = [0.0] * world
    memory[rank] = float(trainer.backend.peak_memory())
    if world == 1:
        trainer.peak_memory = [int(memory[0])]
        return loss
    sums = trainer.comm.sum([loss, *memory])
    trainer.peak_memory = [int(m) for m in sums[1:]]
    return sums[0] / world


def _adapt_threads(trainer: Any) -> None:
    if trainer.thread_policy is None:
        return
    switched = trainer.thread_policy.tick()
    if switched is not None:
        threads, others = switched
        trainer._log(f"other processes use {others:.1f} of {trainer.thread_policy.cores} cores: "
                     f"training on {threads} thread{'s' if threads > 1 else ''} now")


def budget_spent(trainer: Any, stop: StopFlag) -> tuple[bool, bool]:
    """(stop requested, time budget spent), agreed by every rank: with several processes
    one sum carries the requests and rank 0's elapsed time, so all stop at the same step
    and lay the schedule over the same clock."""
    t, p, comm = trainer.t, trainer.progress, trainer.comm
    if comm.world_size == 1:
        return stop.requested, t.max_time > 0 and p.elapsed >= t.max_time
    if t.max_time <= 0:
        return comm.any(stop.requested), False
    requested, elapsed = comm.sum([float(stop.requested), p.elapsed if comm.rank == 0 else 0.0])
    p.elapsed = elapsed
    return requested > 0, elapsed >= t.max_time


def train_until_done(trainer: Any, stop: StopFlag) -> bool:
    """Train until `max_iters` or the `max_time` budget (return False), or return True
    once every rank agreed to stop. Elapsed time is counted on `trainer.clock` per step,
    evaluations left out."""
    t, p, clock = trainer.t, trainer.progress, trainer.clock
    tokens_per_step = t.tokens_per_step(trainer.model_cfg.block_size)
    resumed_at = p.step
    last = window_t0 = clock()
    window_steps = 0
    while p.step < t.max_iters:
        requested, spent = budget_spent(trainer, stop)
        if spent:
            trainer._log(f"time budget of {format_duration(t.max_time)} spent at step {p.step}")
            return False
        # (a resumed run already evaluated the step its checkpoint was taken at)
        if p.step % t.eval_interval == 0 and (p.step != resumed_at or p.step == 0):
            trainer.eval_and_checkpoint(save=p.step > 0)
            last = window_t0 = clock()
            window_steps = 0
        if requested or (trainer.comm.world_size == 1 and stop.requested):  # (several: agreed above)
            return True
        lr = lr_now(p.step, p.elapsed, t)
        result = trainer.backend.train_step(step_batches(trainer), lr)
        p.step += 1
        window_steps += 1
        now = clock()
        p.elapsed += now - last
        last = now
        _adapt_threads(trainer)
        p.tokens_seen += tokens_per_step
        if p.step % t.log_interval == 0 or p.step == t.max_iters:
            loss = global_numbers(trainer, result.loss)  # the only host sync of the step, every log_interval
            if not math.isfinite(loss):
                raise Diverged(f"loss became {loss} at step {p.step}; lower --lr or raise --warmup-iters, and resume from the last checkpoint")
            now = clock()
            p.elapsed += now - last
            dt, last = now - window_t0, now
            trainer.tokens_per_sec = window_steps * tokens_per_step / dt if dt > 0 else None
            window_t0, window_steps = now, 0
            trainer._record(TrainRecord(p.step, loss, lr, result.grad_norm, trainer.tokens_per_sec, p.elapsed, time.time()))
            if time.time() - trainer._last_beat > HEARTBEAT_INTERVAL_S:
                trainer._status(RunState.RUNNING)
                trainer._last_beat = time.time()
    return False
