"""The backend-agnostic training loop.

It owns the schedule, batching, evaluation, checkpointing and the run directory; the
backend owns the model and optimizer. Seeded and deterministic on CPU: the batch RNG, the
optimizer moments and the framework RNG are all checkpointed, so a resumed run continues
with exactly the losses an uninterrupted one would have had.

Eval batches come from their own generator (seeded once per run), so evaluating never
moves the training batch stream, and eval losses are comparable across steps.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from gptbench.backends.base import Backend, OptimConfig, create_backend, resolve_backend_name
from gptbench.backends.config import GPTConfig, format_params
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.weights import WeightsError, load_tensors, load_weights, save_tensors, save_weights
from gptbench.config import MODEL_KEYS, RunConfig, TrainConfig
from gptbench.errors import UserError
from gptbench.fsutil import atomic_write_json
from gptbench.runstore import RUN_FORMAT_VERSION, Run, RunLock, RunStore

HEARTBEAT_INTERVAL_S = 2.0


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


class _StopFlag:
    """SIGINT/SIGTERM ask for a graceful stop at the next step boundary (checkpoint, status
    `stopped`); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopFlag":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread (tests): no signal handling
            self._old.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class TrainOutcome:
    run: Run
    state: str  # finished | stopped
    step: int
    best_val_loss: float | None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("gptbench", "numpy", "torch", "mlx", "tiktoken"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class Trainer:
    """Trains one run. Construct with `new_run` or `resume_run`, then `fit()`."""

    def __init__(
        self,
        run: Run,
        cfg: RunConfig,
        model_cfg: GPTConfig,
        data: Any,
        backend: Backend,
        lock: RunLock,
        reporter: Reporter,
        start_step: int = 0,
        created: float | None = None,
    ) -> None:
        self.run = run
        self.cfg = cfg
        self.t = cfg.train
        self.model_cfg = model_cfg
        self.data = data
        self.backend = backend
        self.lock = lock
        self.reporter = reporter
        self.step = start_step
        self.created = created or time.time()
        self.best_val_loss: float | None = None
        self.elapsed = 0.0
        self.tokens_seen = 0
        self.tokens_per_sec: float | None = None
        self.batch_rng = np.random.default_rng(self.t.seed)
        self.backend.setup_optimizer(
            OptimConfig(weight_decay=self.t.weight_decay, beta1=self.t.beta1, beta2=self.t.beta2, grad_clip=self.t.grad_clip)
        )
        self._eval_batches = self._make_eval_batches()
        self._last_beat = 0.0

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def new_run(cls, store: RunStore, cfg: RunConfig, reporter: Reporter | None = None) -> "Trainer":
        from gptbench.data import prepare_data

        reporter = reporter or QuietReporter()
        name = cfg.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = store.run(name)
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"run {name!r} already exists in {store.root}; use --resume {name} or choose another --name")
        backend_name = resolve_backend_name(cfg.backend)
        cfg = replace(cfg, name=name, backend=backend_name)
        data = prepare_data(
            cfg.data, cfg.tokenizer, block_size=cfg.model["block_size"], val_fraction=cfg.train.val_fraction,
            progress=reporter.log,
        )
        model_cfg = cfg.model_config(data.tokenizer.vocab_size)
        backend = create_backend(model_cfg, backend_name, device=cfg.device, seed=cfg.train.seed, dtype=cfg.dtype, compile=cfg.compile)
        lock = RunLock(run).acquire()
        try:
            trainer = cls(run, cfg, model_cfg, data, backend, lock, reporter)
            trainer._write_config()
            data.tokenizer.save(run.path)
        except BaseException:
            lock.release()
            raise
        return trainer

    @classmethod
    def resume_run(
        cls,
        store: RunStore,
        name: str,
        overrides: dict[str, Any],
        reporter: Reporter | None = None,
    ) -> "Trainer":
        """Continue a run from its last checkpoint. `overrides` may change training keys
        (e.g. max_iters), backend and device; model, data and tokenizer must not change."""
        from gptbench.data import prepare_data
        from gptbench.tokenizers.registry import load_tokenizer

        reporter = reporter or QuietReporter()
        run = store.existing(name)
        lock = RunLock(run).acquire()
        try:
            saved = run.config()
            conflicts = []
            for key, value in overrides.get("model", {}).items():
                if value is not None and saved["model"].get(key) != value:
                    conflicts.append(f"{key}={value!r} (run has {saved['model'].get(key)!r})")
            for key in ("data", "tokenizer"):
                value = overrides.get(key)
                saved_value = saved[key].get("spec")
                if value is not None and value != saved_value:
                    conflicts.append(f"{key}={value!r} (run has {saved_value!r})")
            if conflicts:
                raise UserError(
                    f"cannot resume {name!r} with a different " + ", ".join(conflicts)
                    + "; start a new run instead"
                )
            ckpt = run.checkpoint("last")
            train = dict(saved["train"])
            train.update({k: v for k, v in overrides.get("train", {}).items() if v is not None})
            t = TrainConfig.from_dict(train)
            backend_name = resolve_backend_name(overrides.get("backend") or saved["backend"])
            cfg = RunConfig(
                preset=saved.get("preset", "tiny"),
                model={k: v for k, v in saved["model"].items() if k in MODEL_KEYS},
                train=t,
                data=saved["data"].get("spec"),
                tokenizer=saved["tokenizer"].get("spec", "char"),
                backend=backend_name,
                device=overrides.get("device") or ("auto" if backend_name != saved["backend"] else saved.get("device_request", "auto")),
                dtype=overrides.get("dtype") or saved.get("dtype", "auto"),
                compile=bool(overrides.get("compile") or saved.get("compile", False)),
                name=name,
            )
            tokenizer = load_tokenizer(run.path)
            data = prepare_data(cfg.data, cfg.tokenizer, block_size=cfg.model["block_size"], val_fraction=t.val_fraction, tokenizer=tokenizer, progress=reporter.log)
            model_cfg, weights = load_weights(ckpt.path)
            backend = create_backend(model_cfg, backend_name, device=cfg.device, seed=t.seed, dtype=cfg.dtype, compile=cfg.compile)
            backend.set_weights(weights)
            trainer = cls(run, cfg, model_cfg, data, backend, lock, reporter, start_step=ckpt.step, created=saved.get("created"))
            trainer._load_state(ckpt.state_path)
            trainer._write_config()
        except BaseException:
            lock.release()
            raise
        return trainer

    # ---- run directory ----------------------------------------------------------------
    def _write_config(self) -> None:
        cfg = self.cfg
        atomic_write_json(
            self.run.config_path,
            {
                "format_version": RUN_FORMAT_VERSION,
                "name": self.run.name,
                "created": self.created,
                "preset": cfg.preset,
                "model": self.model_cfg.to_dict(),
                "train": cfg.train.to_dict(),
                "data": {**self.data.info, "spec": cfg.data},
                "tokenizer": {"spec": cfg.tokenizer, "kind": self.data.tokenizer.kind, "vocab_size": self.data.tokenizer.vocab_size},
                "backend": self.backend.name,
                "device": self.backend.device,
                "device_request": cfg.device,
                "dtype": cfg.dtype,
                "compile": cfg.compile,
                "params": self.model_cfg.num_params(),
                "param_breakdown": self.model_cfg.param_breakdown(),
                "versions": package_versions(),
                "command": cfg.extra.get("command"),
            },
        )

    def _status(self, state: str, **extra: Any) -> None:
        atomic_write_json(
            self.run.status_path,
            {
                "state": state,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "heartbeat": time.time(),
                "started": self._started,
                "step": self.step,
                "max_iters": self.t.max_iters,
                "best_val_loss": self.best_val_loss,
                "tokens_per_sec": self.tokens_per_sec,
                "elapsed": self.elapsed,
                **extra,
            },
        )

    def _metric(self, record: dict[str, Any]) -> None:
        with open(self.run.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _log(self, message: str) -> None:
        with open(self.run.log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.reporter.log(message)

    # ---- checkpoints --------------------------------------------------------------------
    def _save_checkpoint(self, val_loss: float | None) -> None:
        ckdir = self.run.checkpoints_dir
        weights_path = ckdir / f"step-{self.step}.safetensors"
        save_weights(weights_path, self.model_cfg, self.backend.get_weights(), step=str(self.step))
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
        save_tensors(ckdir / f"step-{self.step}.state.safetensors", {**opt_tensors, **rng}, {"trainer": json.dumps(trainer_state)})
        index = [{"step": c.step, "val_loss": c.val_loss} for c in self.run.checkpoints() if c.step != self.step]
        index.append({"step": self.step, "val_loss": val_loss})
        index.sort(key=lambda e: e["step"])
        keep = {e["step"] for e in index[-max(1, self.t.keep_last) :]}
        with_val = [e for e in index if e["val_loss"] is not None]
        if with_val:
            keep.add(min(with_val, key=lambda e: e["val_loss"])["step"])
        atomic_write_json(self.run.index_path, [e for e in index if e["step"] in keep])
        for e in index:
            if e["step"] not in keep:
                for suffix in (".safetensors", ".state.safetensors"):
                    (ckdir / f"step-{e['step']}{suffix}").unlink(missing_ok=True)

    def _load_state(self, path: Any) -> None:
        try:
            tensors, meta = load_tensors(path)
            state = json.loads(meta["trainer"])
        except (KeyError, json.JSONDecodeError):
            raise WeightsError(f"{path} is not a gptbench trainer state file") from None
        rng = {k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")}
        opt = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
        self.backend.set_optimizer_state(opt, state.get("optimizer", {}))
        if state.get("backend") == self.backend.name:
            self.backend.set_rng_state(rng)  # framework RNGs do not translate across backends
        self.batch_rng.bit_generator.state = state["batch_rng"]
        self.best_val_loss = state.get("best_val_loss")
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.elapsed = float(state.get("elapsed", 0.0))

    # ---- evaluation -------------------------------------------------------------------
    def _make_eval_batches(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        from gptbench.data import get_batch

        rng = np.random.default_rng([self.t.seed, 1])
        T = self.model_cfg.block_size
        return {
            split: [get_batch(getattr(self.data, split), self.t.batch_size, T, rng) for _ in range(self.t.eval_iters)]
            for split in ("train", "val")
        }

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

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainOutcome:
        from gptbench.data import get_batch

        t, T = self.t, self.model_cfg.block_size
        self._started = time.time()
        tokens_per_step = t.tokens_per_step(T)
        b = self.model_cfg.param_breakdown()
        header = [
            f"run {self.run.name}: {format_params(self.model_cfg.num_params())} parameters "
            f"(embeddings {format_params(b['token_embeddings'] + b['position_embeddings'])}, "
            f"blocks {format_params(b['blocks'])}, head {'tied' if self.model_cfg.tie_embeddings else format_params(b['lm_head'])})",
            f"backend {self.backend.describe()}, {self.data.tokenizer.spec} tokenizer (vocab {self.data.tokenizer.vocab_size}), "
            f"{len(self.data.train):,} train / {len(self.data.val):,} val tokens, {tokens_per_step:,} tokens/step",
        ]
        for line in header:
            self._log(line)
        self.reporter.start(self.run, t.max_iters, self.step, header)
        self._status("running")
        state = "finished"
        resumed_at = self.step
        try:
            with _StopFlag() as stop:
                window_t0, window_steps = time.perf_counter(), 0
                while self.step < t.max_iters:
                    # (a resumed run already evaluated the step its checkpoint was taken at)
                    if self.step % t.eval_interval == 0 and (self.step != resumed_at or self.step == 0):
                        self._eval_and_checkpoint(save=self.step > 0)
                        window_t0, window_steps = time.perf_counter(), 0
                    if stop.requested:
                        state = "stopped"
                        break
                    lr = lr_at(self.step, t)
                    batches = [get_batch(self.data.train, t.batch_size, T, self.batch_rng) for _ in range(t.grad_accum)]
                    result = self.backend.train_step(batches, lr)
                    self.step += 1
                    window_steps += 1
                    self.tokens_seen += tokens_per_step
                    if self.step % t.log_interval == 0 or self.step == t.max_iters:
                        loss = result.loss  # the only host sync of the step, every log_interval
                        if not math.isfinite(loss):
                            raise UserError(f"loss became {loss} at step {self.step}; lower --lr or raise --warmup-iters")
                        now = time.perf_counter()
                        dt = now - window_t0
                        self.elapsed += dt
                        self.tokens_per_sec = window_steps * tokens_per_step / dt if dt > 0 else None
                        window_t0, window_steps = now, 0
                        rec = {"type": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": result.grad_norm,
                               "tokens_per_sec": self.tokens_per_sec, "elapsed": self.elapsed, "time": time.time()}
                        self._metric(rec)
                        self.reporter.update(self.step, rec)
                        if time.time() - self._last_beat > HEARTBEAT_INTERVAL_S:
                            self._status("running")
                            self._last_beat = time.time()
                if state == "finished":
                    self._eval_and_checkpoint(save=True)
                else:
                    self._save_checkpoint(val_loss=None)
                    self._log(f"stopped at step {self.step}; checkpoint saved (resume with --resume {self.run.name})")
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self._status("stopped" if isinstance(exc, KeyboardInterrupt) else "failed", error=msg)
            self.reporter.finish()
            self.lock.release()
            raise
        self._status(state)
        self.reporter.finish()
        self.lock.release()
        return TrainOutcome(self.run, state, self.step, self.best_val_loss)

    def _eval_and_checkpoint(self, save: bool) -> None:
        t0 = time.perf_counter()
        losses = self.evaluate()
        val = losses["val"]
        if self.best_val_loss is None or val < self.best_val_loss:
            self.best_val_loss = val
        rec = {"type": "eval", "step": self.step, "train_loss": losses["train"], "val_loss": val,
               "val_ppl": math.exp(min(val, 50.0)), "elapsed": self.elapsed, "time": time.time()}
        self._metric(rec)
        self.reporter.update(self.step, rec)
        self._log(f"step {self.step}: train loss {losses['train']:.4f}, val loss {val:.4f}, val ppl {rec['val_ppl']:.2f}")
        if save:
            self._save_checkpoint(val)
        if self.t.sample_tokens:
            text = self._sample_text()
            self._metric({"type": "sample", "step": self.step, "text": text, "time": time.time()})
            self._log(f"sample at step {self.step}:\n{text}")
        self._status("running", eval_seconds=time.perf_counter() - t0)


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

