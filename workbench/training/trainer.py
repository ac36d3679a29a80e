"""The Trainer: the backend-agnostic training loop over an opened run.

It owns the schedule, batching, evaluation and checkpoint timing; the backend owns the
model and optimizer; the run directory is written through `RunWriter` alone. Seeded and
deterministic on CPU: the batch RNG, the optimizer moments and the framework RNG are all
checkpointed (`training.state`), so a resumed run continues with exactly the losses an
uninterrupted one would have had.

Data parallel (several processes, `Collectives` from the backend's `connect`): every rank
draws the step's `grad_accum` micro-batches (the spec's count is global: micro-batches per
optimizer step over all ranks) from the one seeded stream and trains on its contiguous
share, so a run's batches do not depend on how many processes train it, and it resumes on
any number that divides `grad_accum`. Logged train losses are averaged over ranks and eval
batches are split across ranks and summed, so the numbers are those of one process on the
same batches; stop requests are agreed at every step, so all ranks stop at the same step
and save one checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from gptbench.backends.parallel import Collectives
from gptbench.backends.spec import format_params
from gptbench.errors import UserError
from gptbench.runstore import EvalRecord, Run, RunState, RunStore, SampleRecord, TrainRecord, load_training_state
from gptbench.runstore.format import record_dict
from gptbench.runstore.specfile import RunFacts, config_document
from gptbench.spec.run import RunSpec
from gptbench.training.distributed import check_world, from_rank0
from gptbench.training.evaluation import Evaluator
from gptbench.training.taskscores import TaskScorer
from gptbench.training.opening import Opened, open_new
from gptbench.training.reporting import QuietReporter, Reporter
from gptbench.training.resuming import open_resumed
from gptbench.training.loop import Diverged, optimizer_notes, parallel_lines, train_until_done
from gptbench.training.signals import StopFlag
from gptbench.trackers.base import metrics_of, scores_of
from gptbench.training.state import OptimizerState, Progress, RngState, collect, restore


@dataclass
class TrainOutcome:
    run: Run
    state: str  # finished | stopped
    step: int
    best_val_loss: float | None
    best_val_bpb: float | None = None


class Trainer:
    """Trains one run. Construct with `new_run` or `resume_run`, then `fit()`.

    With several processes every rank builds a Trainer; only rank 0 has a `writer` (the
    run directory's owner) and a reporter that shows anything."""

    def __init__(self, opened: Opened, reporter: Reporter, comm: Collectives) -> None:
        self.writer, self.run, self.spec = opened.writer, opened.run, opened.spec
        self.t, self.model_cfg, self.data, self.backend = opened.spec.train, opened.spec.model, opened.data, opened.backend
        self.reporter, self.comm = reporter, comm
        check_world(self.t, comm, self.spec.name or "")
        self.local_accum = self.t.grad_accum // comm.world_size  # this rank's micro-batches per step
        self.created = opened.created or time.time()
        self.init_from = opened.init_from  # the source reference (lineage) of a fine-tuned run
        self.progress = Progress(step=opened.start_step)
        self.batch_rng = np.random.default_rng(self.t.seed)
        self.tokens_per_sec: float | None = None
        self.peak_memory: list[int] | None = None  # bytes, per rank, as of the last log
        self.backend.setup_optimizer(self.t.optim_config())
        self.evaluator = Evaluator(self.data, self.backend, comm, self.t.batch_size, self.model_cfg.block_size, self.t.eval_iters, self.t.seed)
        self.components = [OptimizerState(self.backend), RngState(self.backend, comm.rank)]
        self.scorer = TaskScorer(self.t.eval_task, self.backend, self.data.tokenizer) if self.t.eval_task else None
        self._last_beat = 0.0
        self._started = time.time()
        self._resume_notes: list[str] = list(opened.notes)
        self.trackers: list[Any] = []  # gptbench.trackers, rank 0, opened once the run's config is written
        self.clock: Callable[[], float] = time.perf_counter  # training time (tests inject their own)
        self.thread_policy: Any = None  # a gptbench.backends.cpu.ThreadPolicy, set by `gptbench train`

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def best_val_loss(self) -> float | None:
        return self.progress.best_val_loss

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def new_run(cls, store: RunStore, spec: RunSpec, reporter: Reporter | None = None, comm: Collectives | None = None) -> "Trainer":
        """Claim the run's name, prepare data and the model, then write its config: the
        folder is a run only once everything needed to train it has been built."""
        from gptbench.trackers import parse_log_to, require

        reporter, comm = reporter or QuietReporter(), comm or Collectives()
        require(parse_log_to(spec.runtime.log_to))  # before anything is created
        opened = open_new(store, spec, reporter, comm)
        try:
            trainer = cls(opened, reporter, comm)
            if opened.writer is not None:
                opened.writer.save_tokenizer(opened.data.tokenizer)
                trainer._open_trackers(trainer._write_config())  # last: from here on the folder is a run
        except BaseException:
            if opened.writer is not None:
                opened.writer.abandon()
            raise
        return trainer

    @classmethod
    def resume_run(cls, store: RunStore, name: str, overrides: Mapping[str, Any], reporter: Reporter | None = None, *,
                   accept_changed_data: bool = False, comm: Collectives | None = None) -> "Trainer":
        """Continue run `name` from its last checkpoint with `overrides` (setting paths ->
        values) applied; see `training.resuming`."""
        reporter, comm = reporter or QuietReporter(), comm or Collectives()
        opened, ckpt = open_resumed(store, name, overrides, reporter, comm, accept_changed_data)
        try:
            trainer = cls(opened, reporter, comm)
            if opened.resumed:
                trainer._install_checkpoint(ckpt)
                trainer._check_budget_left(name)
                trainer._resume_notes.insert(0, f"resuming {name} at step {trainer.step} of {trainer.t.max_iters}")
            if opened.writer is not None:
                opened.writer.rewind(trainer.step if opened.resumed else -1)  # from step 0, its eval is redone too
                trainer._open_trackers(trainer._write_config())
        except BaseException:
            if opened.writer is not None:
                opened.writer.close()
            raise
        return trainer

    def _install_checkpoint(self, ckpt: Any) -> None:
        """A checkpoint's training state, read by rank 0 and installed on every rank."""
        def read_state() -> tuple[Any, Any]:
            state = load_training_state(ckpt, self.backend.optimizer_state_shapes(), self.backend.rng_state_shapes(), self.backend.name)
            return state, {"trainer": state.trainer, "optimizer_meta": state.optimizer_meta}

        state, shared = from_rank0(self.comm, read_state)
        tensors = {"optimizer": state.optimizer, "rng": state.rng} if state is not None else {}
        header = {**shared["trainer"], "optimizer": shared["optimizer_meta"]}
        restore(self.progress, self.components, tensors, header)
        self.batch_rng.bit_generator.state = self.progress.batch_rng

    def _check_budget_left(self, name: str) -> None:
        t, spent = self.t, self.progress.elapsed
        if t.max_time > 0 and spent >= t.max_time:
            raise UserError(f"run {name!r} already spent its --max-time budget ({spent:.0f}s of {t.max_time:g}s); "
                            "pass a larger --max-time to train it further")

    # ---- the run directory (rank 0 only) ----------------------------------------------
    def _write_config(self) -> dict[str, Any]:
        tok, par, lora = self.data.tokenizer, self.comm.parallel, self.backend.lora
        assert self.writer is not None
        facts = RunFacts(
            created=self.created, backend=self.backend.name, device=self.backend.device, compile=self.backend.compile,
            tokenizer_kind=tok.kind, vocab_size=tok.vocab_size, fingerprint=tok.fingerprint(),
            data={**self.data.info, "val_bytes": self.evaluator.val_bytes},
            # how the latest session trained it; train.grad_accum is the global count
            parallel={"world_size": par.world_size, "strategy": par.strategy_name, "comm": self.comm.name,
                      "grad_accum_per_process": self.local_accum, "activation_checkpointing": par.activation_checkpointing},
            init_from=self.init_from, trainable_params=lora.num_params(self.model_cfg) if lora else None,
        )
        doc = config_document(self.spec, facts)
        self.writer.write_config(doc)
        return doc

    def _open_trackers(self, config: dict[str, Any]) -> None:
        """Rank 0's mirrors of the metrics (`--log-to`); a missing tracker stops the run
        before it starts (the caller abandons the new run)."""
        from gptbench.trackers import open_trackers, parse_log_to

        self.trackers = open_trackers(parse_log_to(self.spec.runtime.log_to), self.run.path, self.run.name, config)

    def _status(self, state: RunState, **extra: Any) -> None:
        if self.writer is None:
            return
        par, p = self.comm.parallel, self.progress
        self.writer.set_status(
            state, started=self._started, step=p.step, max_iters=self.t.max_iters, best_val_loss=p.best_val_loss,
            best_val_bpb=self.evaluator.bpb(p.best_val_loss), tokens_per_sec=self.tokens_per_sec, elapsed=p.elapsed,
            world_size=par.world_size, strategy=par.strategy_name, comm=self.comm.name, backend=self.backend.name,
            **({"peak_memory": self.peak_memory} if self.peak_memory else {}), **extra,
        )

    def _log(self, message: str) -> None:
        if self.writer is not None:
            self.writer.log(message)
        self.reporter.log(message)

    def _record(self, record: TrainRecord | EvalRecord | SampleRecord) -> None:
        if self.writer is not None:
            self.writer.append_metric(record)
        values = record_dict(record)
        self._mirror(metrics_of(values) if self.trackers else None)
        self.reporter.update(self.step, values)

    def _mirror(self, metrics: tuple[int, dict[str, float]] | None) -> None:
        for tracker in self.trackers if metrics else ():
            tracker.log(*metrics)  # type: ignore[misc]

    def _save_checkpoint(self, val_loss: float | None) -> None:
        """Collective: every rank helps gather the state; rank 0 writes it."""
        self.progress.batch_rng = self.batch_rng.bit_generator.state
        state, header = collect(self.progress, self.backend.name, self.components)
        lora = self.backend.lora  # a LoRA checkpoint holds the adapters (LoRA: one process)
        weights = self.backend.get_adapters() if lora else self.backend.get_weights()
        if self.writer is None:
            return
        self.writer.save_checkpoint(
            self.step, self.model_cfg, weights, state, header,
            val_loss=val_loss, keep_last=self.t.keep_last, lora=lora, base=self.init_from if lora else None,
        )

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> TrainOutcome:
        """Train to `max_iters` (or a stop request). Every way out writes a final status:
        `finished`, `stopped` (resumable, checkpoint saved unless aborted) or `failed`
        (resumable from the last good checkpoint; the reason in status.json and log.txt)."""
        self._started = time.time()
        header = self._header_lines()
        for line in header:
            self._log(line)
        self.reporter.start(self.run, self.t.max_iters, self.step, header)
        state = RunState.FINISHED
        with StopFlag() as stop:
            try:
                self._status(RunState.RUNNING)
                stopped = train_until_done(self, stop)
                if stopped and self.step < self.t.max_iters:
                    state = RunState.STOPPED
                    self._save_checkpoint(val_loss=None)
                    self._log(f"stopped at step {self.step}; checkpoint saved (continue with --resume {self.run.name})")
                else:
                    self.eval_and_checkpoint(save=True)
                self._status(state)
            except BaseException as exc:
                stop.quiet()
                self._fail(exc)
                raise
            finally:
                self.reporter.finish()
                for tracker in self.trackers:
                    tracker.close()
                if self.writer is not None:
                    self.writer.close()
        return TrainOutcome(self.run, state.value, self.step, self.best_val_loss, self.evaluator.bpb(self.best_val_loss))

    def _header_lines(self) -> list[str]:
        m, tok = self.model_cfg, self.data.tokenizer
        b = m.param_breakdown()
        return [
            f"run {self.run.name}: {format_params(m.num_params())} parameters "
            f"(embeddings {format_params(b['token_embeddings'] + b['position_embeddings'])}, "
            f"blocks {format_params(b['blocks'])}, head {'tied' if m.tie_embeddings else format_params(b['lm_head'])})",
            f"backend {self.backend.describe()}, {tok.spec} tokenizer (vocab {tok.vocab_size}), "
            f"{len(self.data.train):,} train / {len(self.data.val):,} val tokens, {self.t.tokens_per_step(m.block_size):,} tokens/step",
            *optimizer_notes(self.t, m), *parallel_lines(self.comm, self.t, m.block_size, self.local_accum),
            *self._resume_notes, *self.backend.hints(),
        ]

    def eval_and_checkpoint(self, save: bool) -> None:
        t0 = time.perf_counter()
        losses = self.evaluator.losses()
        val = losses["val"]
        if not (math.isfinite(val) and math.isfinite(losses["train"])):
            raise Diverged(f"the evaluation loss became {val} at step {self.step}; lower --lr or raise --warmup-iters, and resume from the last checkpoint")
        if self.best_val_loss is None or val < self.best_val_loss:
            self.progress.best_val_loss = val
        ppl = math.exp(min(val, 50.0))
        bpb = self.evaluator.bpb(val)
        self._record(EvalRecord(self.step, losses["train"], val, ppl, self.progress.elapsed, time.time(), val_bpb=bpb))
        bits = f", val {bpb:.4f} bits/byte" if bpb is not None else ""
        self._log(f"step {self.step}: train loss {losses['train']:.4f}, val loss {val:.4f}, val ppl {ppl:.2f}{bits}")
        if save:
            self._save_checkpoint(val)
        if self.scorer is not None:
            self._score_tasks()
        if self.t.sample_tokens:
            text = self.evaluator.sample(self.t.sample_tokens)  # on every rank: under FSDP each forward is collective
            self._record(SampleRecord(self.step, text, time.time()))
            self._log(f"sample at step {self.step}:\n{text}")
        self._status(RunState.RUNNING, eval_seconds=time.perf_counter() - t0)

    def _score_tasks(self) -> None:
        """`--eval-task`: score on every rank, record (rank 0) and log."""
        results = self.scorer.score()  # type: ignore[union-attr]
        if self.writer is not None:
            self._log(TaskScorer.record(self.run.path, self.run.name, self.step, results))
            self._mirror(scores_of(self.step, results) if self.trackers else None)

    def _fail(self, exc: BaseException) -> None:
        """Record why the run ended early in status.json and log.txt (rank 0). Never
        raises: the original error is what the user must see (a full disk may refuse these too)."""
        if self.writer is None:
            return
        last = self.run.checkpoints()
        where = f"the last checkpoint is step {last[-1].step}" if last else "no checkpoint was saved"
        if isinstance(exc, KeyboardInterrupt):
            state, msg = RunState.STOPPED, f"aborted at step {self.step} by a second Ctrl-C; {where}; continue with --resume {self.run.name}"
        else:
            reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            if self.comm.world_size > 1:  # a collective's error: its first sentence says enough
                from gptbench.training.ranks import short_reason

                reason = f"rank {self.comm.rank}: {reason if isinstance(exc, UserError) else short_reason(exc)}"
            state, msg = RunState.FAILED, f"{reason} ({where})"
        for action in (lambda: self._status(state, error=msg), lambda: self.writer.log(msg)):
            try:
                action()
            except OSError:
                pass
