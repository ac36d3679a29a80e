"""The backend-agnostic training loop.

It owns the schedule, batching, evaluation and checkpoint timing; the backend owns the
model and optimizer; the run directory is written through `RunWriter` alone. Seeded and
deterministic on CPU: the batch RNG, the optimizer moments and the framework RNG are all
checkpointed, so a resumed run continues with exactly the losses an uninterrupted one
would have had.

A trainer claims its run before it reads any data, and everything it loads to resume is
validated first, so a damaged file, a changed corpus or an edited tokenizer is one line,
never a traceback or a silently different run. Eval batches come from their own generator
(seeded once per run), so evaluating never moves the training batch stream.

Every evaluation also reports `val_bpb`, the validation loss in bits per byte of text:
loss · tokens / (bytes · ln 2) over the validation split, which does not depend on the
tokenizer, so runs with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from gptbench.backends.base import Backend, backend_class, check_memory, create_backend, resolve_backend_name
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig, format_params
from gptbench.backends.weights import WeightsError, load_weights
from gptbench.config import MODEL_KEYS, RunConfig, TrainConfig
from gptbench.errors import ConfigError, UserError
from gptbench.runstore import (
    HEARTBEAT_INTERVAL_S,
    RUN_FORMAT_VERSION,
    CorruptRunError,
    EvalRecord,
    Run,
    RunState,
    RunStore,
    RunWriter,
    SampleRecord,
    TrainRecord,
    load_training_state,
)
from gptbench.runstore.format import record_dict, software_versions


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


class Reporter(Protocol):
    """What the loop tells its front end (rich progress bar, tests, nothing)."""

    def start(self, run: Run, total: int, step: int, lines: list[str]) -> None: ...
    def update(self, step: int, fields: dict[str, Any]) -> None: ...
    def log(self, message: str) -> None: ...
    def finish(self) -> None: ...


class QuietReporter:
    def start(self, run: Run, total: int, step: int, lines: list[str]) -> None: ...
    def update(self, step: int, fields: dict[str, Any]) -> None: ...
    def log(self, message: str) -> None: ...
    def finish(self) -> None: ...


class Diverged(UserError):
    """The loss stopped being a finite number."""


class _StopFlag:
    """SIGINT, SIGTERM and SIGHUP (the terminal closing) ask for a graceful stop at the next
    step boundary: a checkpoint, then status `stopped`. A second SIGINT aborts at once; the
    final status is still written. A signal the parent set to be ignored (nohup) stays so."""

    MESSAGE = b"\ngptbench: stopping after this step (a checkpoint is saved); press Ctrl-C again to abort\n"

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested and signum == signal.SIGINT:
            os.write(2, self.MESSAGE)  # async-signal-safe, unlike print()
        self.requested = True

    def __enter__(self) -> "_StopFlag":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread (tests): no signal handling
            self._old.clear()
        return self

    def quiet(self) -> None:
        """Ignore further Ctrl-C while the final status is written."""
        if self._old:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class TrainOutcome:
    run: Run
    state: str  # finished | stopped
    step: int
    best_val_loss: float | None
    best_val_bpb: float | None = None


def _check_fits(model_cfg: GPTConfig, t: TrainConfig, backend_name: str, device: str) -> None:
    available = backend_class(backend_name).available_memory(device)
    check_memory(
        model_cfg.training_bytes(t.batch_size), available,
        f"training this {format_params(model_cfg.num_params())}-parameter model with --batch-size {t.batch_size} "
        f"and --block-size {model_cfg.block_size}",
        "use a smaller model (--n-layer, --n-embd) or a smaller --batch-size (raise --grad-accum to keep the batch)",
    )


class Trainer:
    """Trains one run. Construct with `new_run` or `resume_run`, then `fit()`."""

    def __init__(
        self,
        writer: RunWriter,
        cfg: RunConfig,
        model_cfg: GPTConfig,
        data: Any,
        backend: Backend,
        reporter: Reporter,
        start_step: int = 0,
        created: float | None = None,
    ) -> None:
        self.writer = writer
        self.run = writer.run
        self.cfg = cfg
        self.t = cfg.train
        self.model_cfg = model_cfg
        self.data = data
        self.backend = backend
        self.reporter = reporter
        self.step = start_step
        self.created = created or time.time()
        self.best_val_loss: float | None = None
        self.elapsed = 0.0
        self.tokens_seen = 0
        self.tokens_per_sec: float | None = None
        self.batch_rng = np.random.default_rng(self.t.seed)
        self.val_bytes = split_bytes(data.val, data.tokenizer)
        # val loss (nats a token) -> bits a byte; None for a split of special tokens only
        self._bpb_per_nat = len(data.val) / (self.val_bytes * math.log(2)) if self.val_bytes else None
        self.backend.setup_optimizer(self.t.optim_config())
        self._eval_batches = self._make_eval_batches()
        self._last_beat = 0.0
        self._started = time.time()
        self._resume_notes: list[str] = []

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def new_run(cls, store: RunStore, cfg: RunConfig, reporter: Reporter | None = None) -> "Trainer":
        """Claim the run's name, then prepare data and the model; the run exists (config
        written) only once everything needed to train it has been built."""
        from gptbench.data import prepare_data

        reporter = reporter or QuietReporter()
        name = cfg.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        writer = RunWriter.create(store.root, name)
        try:
            from gptbench.data.sources import absolute_spec

            backend_name = resolve_backend_name(cfg.backend)
            cfg = replace(cfg, name=name, backend=backend_name, data=absolute_spec(cfg.data))
            data = prepare_data(
                cfg.data, cfg.tokenizer, block_size=cfg.model["block_size"], val_fraction=cfg.train.val_fraction,
                progress=reporter.log,
            )
            model_cfg = cfg.model_config(data.tokenizer.vocab_size)
            _check_fits(model_cfg, cfg.train, backend_name, cfg.device)
            backend = create_backend(model_cfg, backend_name, device=cfg.device, seed=cfg.train.seed, dtype=cfg.dtype, compile=cfg.compile)
            trainer = cls(writer, cfg, model_cfg, data, backend, reporter)
            writer.save_tokenizer(data.tokenizer)
            trainer._write_config()  # last: from here on the folder is a run
        except BaseException:
            writer.abandon()
            raise
        return trainer

    @classmethod
    def resume_run(
        cls,
        store: RunStore,
        name: str,
        overrides: dict[str, Any],
        reporter: Reporter | None = None,
        *,
        accept_changed_data: bool = False,
    ) -> "Trainer":
        """Continue a run from its last checkpoint (from step 0 when it has none).

        `overrides` may change training keys (max_iters, lr_decay_iters, ...), backend and
        device; model, data and tokenizer must not change. Every file is validated before
        it is used; the corpus must hash as it did (unless `accept_changed_data`)."""
        from gptbench.data import prepare_data
        from gptbench.loading import load_run_tokenizer

        reporter = reporter or QuietReporter()
        writer = RunWriter.open(store.root, name)
        try:
            run = writer.run
            if not run.exists():
                raise UserError(f"run {name!r} was killed while starting, before its config was written; start it again with --name {name}")
            saved = run.config()
            where = str(run.config_path)
            try:
                saved_model = GPTConfig.from_dict(saved["model"])
                train = {**saved["train"], **{k: v for k, v in overrides.get("train", {}).items() if v is not None}}
                t = TrainConfig.from_dict(train)
            except ConfigError as exc:
                raise CorruptRunError(f"{where}: {exc}") from None
            conflicts = []
            saved_optimizer = saved["train"].get("optimizer", "adamw")
            if t.optimizer != saved_optimizer:  # their checkpointed states are different tensors
                conflicts.append(f"optimizer={t.optimizer!r} (run has {saved_optimizer!r})")
            for key, value in overrides.get("model", {}).items():
                if value is not None and getattr(saved_model, key) != value:
                    conflicts.append(f"{key}={value!r} (run has {getattr(saved_model, key)!r})")
            for key in ("data", "tokenizer"):
                value = overrides.get(key)
                saved_value = saved[key].get("spec")
                if value is not None and value != saved_value:
                    conflicts.append(f"{key}={value!r} (run has {saved_value!r})")
            if conflicts:
                raise UserError(f"cannot resume {name!r} with a different " + ", ".join(conflicts) + "; start a new run instead")
            ckpts = run.checkpoints()
            ckpt = ckpts[-1] if ckpts else None
            start = ckpt.step if ckpt else 0
            for step, path, why in run.damaged_checkpoints():
                if step > start:
                    fallback = f"step {start}" if ckpt else "step 0"
                    raise CorruptRunError(f"{why}; delete {path.name} to resume from {fallback}")
            new_max = overrides.get("train", {}).get("max_iters")
            if start >= t.max_iters:
                if new_max is not None:
                    raise UserError(f"run {name!r} is at step {start}; --max-iters {t.max_iters} would not train it further; pass a --max-iters above {start}")
                raise UserError(f"run {name!r} already reached its --max-iters ({t.max_iters}) at step {start}; pass a larger --max-iters to train it further")
            backend_name = resolve_backend_name(overrides.get("backend") or saved["backend"])
            device = overrides.get("device") or ("auto" if backend_name != saved["backend"] else saved.get("device_request", "auto"))
            compile_ = overrides.get("compile")
            cfg = RunConfig(
                preset=saved.get("preset", "tiny"),
                model={k: v for k, v in saved_model.to_dict().items() if k in MODEL_KEYS},
                train=t,
                data=saved["data"].get("spec"),
                tokenizer=saved["tokenizer"].get("spec", "char"),
                backend=backend_name,
                device=device,
                dtype=overrides.get("dtype") or saved.get("dtype", "auto"),
                compile=compile_ if compile_ is not None else saved.get("compile"),
                name=name,
                command=saved.get("command"),
            )
            tokenizer = load_run_tokenizer(run)
            data = prepare_data(cfg.data, cfg.tokenizer, block_size=saved_model.block_size, val_fraction=t.val_fraction, tokenizer=tokenizer, progress=reporter.log)
            saved_sha, sha = saved["data"].get("sha256"), data.info.get("sha256")
            if saved_sha and sha != saved_sha and not accept_changed_data:
                raise UserError(
                    f"the corpus {cfg.data or 'default'} changed since run {name!r} was trained on it (sha256 {saved_sha[:12]}... is now {str(sha)[:12]}...); "
                    "restore it, or pass --accept-changed-data to continue on the new text"
                )
            if ckpt is not None:
                try:
                    model_cfg, weights = load_weights(ckpt.path)
                except WeightsError as exc:
                    raise CorruptRunError(f"{exc}; delete {ckpt.path.name} to resume from the checkpoint before it") from None
                if model_cfg.replace(dropout=saved_model.dropout) != saved_model:
                    raise CorruptRunError(f"{ckpt.path} holds a different model than {where} describes")
            else:
                model_cfg, weights = saved_model, None
            _check_fits(model_cfg, t, backend_name, device)
            backend = create_backend(model_cfg, backend_name, device=device, seed=t.seed, dtype=cfg.dtype, compile=cfg.compile)
            trainer = cls(writer, cfg, model_cfg, data, backend, reporter, start_step=start, created=saved.get("created"))
            if ckpt is not None:
                backend.set_weights(weights)
                trainer._install(load_training_state(ckpt, backend.optimizer_state_shapes(), backend.rng_state_shapes(), backend.name))
                trainer._resume_notes.append(f"resuming {name} at step {start} of {t.max_iters}")
            else:
                trainer._resume_notes.append(f"run {name} has no complete checkpoint: training it again from step 0 with its saved config")
            trainer._resume_notes.extend(_schedule_notes(start, t, saved["train"]))
            if sha != saved_sha and saved_sha:
                trainer._resume_notes.append("the corpus changed since the run started; continuing on the new text (--accept-changed-data)")
            writer.rewind(start if ckpt is not None else -1)  # from step 0, its eval is redone too
            trainer._write_config()
        except BaseException:
            writer.close()
            raise
        return trainer

    # ---- the run directory ------------------------------------------------------------
    def _write_config(self) -> None:
        cfg, tok = self.cfg, self.data.tokenizer
        self.writer.write_config({
            "format_version": RUN_FORMAT_VERSION,
            "name": self.run.name,
            "created": self.created,
            "preset": cfg.preset,
            "model": self.model_cfg.to_dict(),
            "train": cfg.train.to_dict(),
            "data": {**self.data.info, "val_bytes": self.val_bytes, "spec": cfg.data},
            "tokenizer": {"spec": cfg.tokenizer, "kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()},
            "backend": self.backend.name,
            "device": self.backend.device,
            "device_request": cfg.device,
            "dtype": cfg.dtype,
            "compile": self.backend.compile,
            "params": self.model_cfg.num_params(),
            "param_breakdown": self.model_cfg.param_breakdown(),
            "versions": software_versions(),
            "command": cfg.command,
        })

    def _status(self, state: RunState, **extra: Any) -> None:
        self.writer.set_status(
            state, started=self._started, step=self.step, max_iters=self.t.max_iters, best_val_loss=self.best_val_loss,
            best_val_bpb=self.bpb(self.best_val_loss), tokens_per_sec=self.tokens_per_sec, elapsed=self.elapsed, **extra,
        )

    def _log(self, message: str) -> None:
        self.writer.log(message)
        self.reporter.log(message)

    def _record(self, record: TrainRecord | EvalRecord | SampleRecord) -> None:
        self.writer.append_metric(record)
        self.reporter.update(self.step, record_dict(record))

    # ---- checkpoints ------------------------------------------------------------------
    def _save_checkpoint(self, val_loss: float | None) -> None:
        opt_tensors, opt_meta = self.backend.get_optimizer_state()
        rng = {f"rng.{k}": v for k, v in self.backend.get_rng_state().items()}
        trainer_state = {
            "step": self.step,
            "backend": self.backend.name,
            "optimizer": opt_meta,
            "batch_rng": self.batch_rng.bit_generator.state,
            "best_val_loss": self.best_val_loss,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
        }
        self.writer.save_checkpoint(
            self.step, self.model_cfg, self.backend.get_weights(), {**opt_tensors, **rng}, trainer_state,
            val_loss=val_loss, keep_last=self.t.keep_last,
        )

    def _optimizer_notes(self) -> list[str]:
        if self.t.optimizer != "muon":
            return []
        from gptbench.backends.base import muon_blocks

        n = len(muon_blocks(self.model_cfg))
        return [f"Muon (peak lr {self.t.muon_lr:g}) trains the {n} hidden matrices; AdamW (peak lr {self.t.lr:g}) "
                "the embeddings, head, norms and biases"]

    def _install(self, state: Any) -> None:
        self.backend.set_optimizer_state(state.optimizer, state.optimizer_meta)
        if state.rng:
            self.backend.set_rng_state(state.rng)
        trainer = state.trainer
        self.batch_rng.bit_generator.state = trainer["batch_rng"]
        self.best_val_loss = trainer["best_val_loss"]
        self.tokens_seen = trainer["tokens_seen"]
        self.elapsed = float(trainer["elapsed"])

    # ---- evaluation -------------------------------------------------------------------
    def _make_eval_batches(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        from gptbench.data import get_batch

        rng = np.random.default_rng([self.t.seed, 1])
        T = self.model_cfg.block_size
        return {
            split: [get_batch(getattr(self.data, split), self.t.batch_size, T, rng) for _ in range(self.t.eval_iters)]
            for split in ("train", "val")
        }

    def bpb(self, val_loss: float | None) -> float | None:
        """A validation loss (nats a token) in bits per byte of the validation text."""
        if val_loss is None or self._bpb_per_nat is None:
            return None
        return val_loss * self._bpb_per_nat

    def evaluate(self) -> dict[str, float]:
        return {split: float(np.mean([self.backend.eval_loss(x, y) for x, y in b])) for split, b in self._eval_batches.items()}

    def _sample_text(self) -> str:
        from gptbench.backends.generate import generate

        tok = self.data.tokenizer
        if tok.eot_id is not None:
            prompt: Any = [tok.eot_id]
        else:
            try:
                prompt = tok.encode("\n")
            except UserError:
                prompt = [0]
        params = SamplingParams(temperature=0.8, top_k=200, max_new_tokens=self.t.sample_tokens, seed=self.t.seed)
        return generate(self.backend, tok, prompt, params).text

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> TrainOutcome:
        """Train to `max_iters` (or a stop request). Every way out writes a final status:
        `finished`, `stopped` (resumable, checkpoint saved unless aborted) or `failed`
        (resumable from the last good checkpoint; the reason in status.json and log.txt)."""
        t = self.t
        self._started = time.time()
        tokens_per_step = t.tokens_per_step(self.model_cfg.block_size)
        b = self.model_cfg.param_breakdown()
        header = [
            f"run {self.run.name}: {format_params(self.model_cfg.num_params())} parameters "
            f"(embeddings {format_params(b['token_embeddings'] + b['position_embeddings'])}, "
            f"blocks {format_params(b['blocks'])}, head {'tied' if self.model_cfg.tie_embeddings else format_params(b['lm_head'])})",
            f"backend {self.backend.describe()}, {self.data.tokenizer.spec} tokenizer (vocab {self.data.tokenizer.vocab_size}), "
            f"{len(self.data.train):,} train / {len(self.data.val):,} val tokens, {tokens_per_step:,} tokens/step",
            *self._optimizer_notes(),
            *self._resume_notes,
            *self.backend.hints(),
        ]
        for line in header:
            self._log(line)
        self.reporter.start(self.run, t.max_iters, self.step, header)
        state = RunState.FINISHED
        with _StopFlag() as stop:
            try:
                self._status(RunState.RUNNING)
                self._loop(stop)
                if stop.requested and self.step < t.max_iters:
                    state = RunState.STOPPED
                    self._save_checkpoint(val_loss=None)
                    self._log(f"stopped at step {self.step}; checkpoint saved (continue with --resume {self.run.name})")
                else:
                    self._eval_and_checkpoint(save=True)
                self._status(state)
            except BaseException as exc:
                stop.quiet()
                self._fail(exc)
                raise
            finally:
                self.reporter.finish()
                self.writer.close()
        return TrainOutcome(self.run, state.value, self.step, self.best_val_loss, self.bpb(self.best_val_loss))

    def _loop(self, stop: _StopFlag) -> None:
        from gptbench.data import get_batch

        t, T = self.t, self.model_cfg.block_size
        tokens_per_step = t.tokens_per_step(T)
        resumed_at = self.step
        window_t0, window_steps = time.perf_counter(), 0
        while self.step < t.max_iters:
            # (a resumed run already evaluated the step its checkpoint was taken at)
            if self.step % t.eval_interval == 0 and (self.step != resumed_at or self.step == 0):
                self._eval_and_checkpoint(save=self.step > 0)
                window_t0, window_steps = time.perf_counter(), 0
            if stop.requested:
                return
            lr = lr_at(self.step, t)
            batches = [get_batch(self.data.train, t.batch_size, T, self.batch_rng) for _ in range(t.grad_accum)]
            result = self.backend.train_step(batches, lr)
            self.step += 1
            window_steps += 1
            self.tokens_seen += tokens_per_step
            if self.step % t.log_interval == 0 or self.step == t.max_iters:
                loss = result.loss  # the only host sync of the step, every log_interval
                if not math.isfinite(loss):
                    raise Diverged(f"loss became {loss} at step {self.step}; lower --lr or raise --warmup-iters, and resume from the last checkpoint")
                now = time.perf_counter()
                dt = now - window_t0
                self.elapsed += dt
                self.tokens_per_sec = window_steps * tokens_per_step / dt if dt > 0 else None
                window_t0, window_steps = now, 0
                self._record(TrainRecord(self.step, loss, lr, result.grad_norm, self.tokens_per_sec, self.elapsed, time.time()))
                if time.time() - self._last_beat > HEARTBEAT_INTERVAL_S:
                    self._status(RunState.RUNNING)
                    self._last_beat = time.time()

    def _eval_and_checkpoint(self, save: bool) -> None:
        t0 = time.perf_counter()
        losses = self.evaluate()
        val = losses["val"]
        if not (math.isfinite(val) and math.isfinite(losses["train"])):
            raise Diverged(f"the evaluation loss became {val} at step {self.step}; lower --lr or raise --warmup-iters, and resume from the last checkpoint")
        if self.best_val_loss is None or val < self.best_val_loss:
            self.best_val_loss = val
        ppl = math.exp(min(val, 50.0))
        bpb = self.bpb(val)
        self._record(EvalRecord(self.step, losses["train"], val, ppl, self.elapsed, time.time(), val_bpb=bpb))
        bits = f", val {bpb:.4f} bits/byte" if bpb is not None else ""
        self._log(f"step {self.step}: train loss {losses['train']:.4f}, val loss {val:.4f}, val ppl {ppl:.2f}{bits}")
        if save:
            self._save_checkpoint(val)
        if self.t.sample_tokens:
            text = self._sample_text()
            self._record(SampleRecord(self.step, text, time.time()))
            self._log(f"sample at step {self.step}:\n{text}")
        self._status(RunState.RUNNING, eval_seconds=time.perf_counter() - t0)

    def _fail(self, exc: BaseException) -> None:
        """Record why the run ended early in status.json and log.txt. Never raises: the
        original error is what the user must see (a full disk may refuse these too)."""
        last = self.run.checkpoints()
        where = f"the last checkpoint is step {last[-1].step}" if last else "no checkpoint was saved"
        if isinstance(exc, KeyboardInterrupt):
            state, msg = RunState.STOPPED, f"aborted at step {self.step} by a second Ctrl-C; {where}; continue with --resume {self.run.name}"
        else:
            reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            state, msg = RunState.FAILED, f"{reason} ({where})"
        for action in (lambda: self._status(state, error=msg), lambda: self.writer.log(msg)):
            try:
                action()
            except OSError:
                pass


def _schedule_notes(start: int, t: TrainConfig, saved_train: dict[str, Any]) -> list[str]:
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


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """The UTF-8 length of each token's text, int64 [vocab_size]; 0 for the end-of-text
    token, which marks a document boundary rather than standing for text. Every gptbench
    tokenizer decodes a sequence to the concatenation of its tokens' bytes, so a split's
    text length is a sum over this table."""
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for i in range(tokenizer.vocab_size):
        if i != tokenizer.eot_id:
            lengths[i] = len(tokenizer.decode_bytes([i]))
    return lengths


def split_bytes(tokens: np.ndarray, tokenizer: Any, chunk: int = 1 << 24) -> int:
    """UTF-8 bytes of the text a split decodes to, exactly, without decoding it: a token
    histogram (chunk by chunk over the memmap) times `token_byte_lengths`."""
    lengths = token_byte_lengths(tokenizer)
    total = 0
    for i in range(0, len(tokens), chunk):
        counts = np.bincount(np.asarray(tokens[i : i + chunk], dtype=np.int64), minlength=len(lengths))
        total += int(counts[: len(lengths)] @ lengths)
    return total


def full_split_loss(backend: Backend, data: np.ndarray, block_size: int, batch_size: int = 64) -> float:
    """Mean loss over every non-overlapping window of a split (the quality benchmark's metric)."""
    n = (len(data) - 1) // block_size
    starts = np.arange(n) * block_size
    total, count = 0.0, 0
    idx = np.arange(block_size)
    for i in range(0, n, batch_size):
        s = starts[i : i + batch_size]
        x = np.asarray(data[s[:, None] + idx], dtype=np.int64)
        y = np.asarray(data[s[:, None] + idx + 1], dtype=np.int64)
        total += backend.eval_loss(x, y) * len(s)
        count += len(s)
    return total / count
