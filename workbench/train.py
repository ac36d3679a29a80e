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

Data parallel (several processes, `Collectives` from the backend's `connect`): rank 0
alone claims or opens the run, prepares the data and writes the run directory; it then
broadcasts the resolved config (or its error), and the other ranks take the same corpus
from the token cache. Every rank draws the step's `grad_accum` micro-batches (the config's
count is global: micro-batches per optimizer step over all ranks) from the one seeded
stream and trains on its contiguous share, so a run's batches do not depend on how many
processes train it, and it resumes on any number that divides `grad_accum`. Logged train
losses are averaged over ranks and eval batches are split across ranks and summed, so the
numbers are those of one process on the same batches; stop requests are agreed at every
step, so all ranks stop at the same step and save one checkpoint.

Every evaluation also reports `val_bpb`, the validation loss in bits per byte of text:
loss · tokens / (bytes · ln 2) over the validation split, which does not depend on the
tokenizer, so runs with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from gptbench.backends.base import Backend, Collectives, Parallel, backend_class, check_memory, create_backend, resolve_backend_name
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig, format_params
from gptbench.backends.lora import LORA_ONE_PROCESS, LoRAConfig
from gptbench.backends.weights import WeightsError
from gptbench.config import MODEL_KEYS, RunConfig, TrainConfig
from gptbench.errors import ConfigError, UserError
from gptbench.sources import ModelWeights, load_checkpoint
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


class PeerFailed(UserError):
    """Rank 0 could not start or resume the run: it reports why, so the other ranks exit
    without a word (status 2 after a user error, else 1)."""

    quiet = True

    def __init__(self, user_error: bool) -> None:
        super().__init__("")
        self.exit_code = 2 if user_error else 1


def _from_rank0(comm: Collectives, produce: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """Run `produce` on rank 0 alone and send the JSON half of its result to the others.

    `produce` returns (what rank 0 keeps, what every rank gets); the other ranks receive
    (None, the JSON half). An exception on rank 0 is re-raised there and becomes a quiet
    `PeerFailed` on the others, so no rank waits for a plan that will never come."""
    if comm.world_size == 1:
        return produce()
    if comm.rank == 0:
        try:
            kept, shared = produce()
        except BaseException as exc:
            comm.broadcast({"error": type(exc).__name__, "user": isinstance(exc, UserError)})
            raise
        comm.broadcast({"ok": shared})
        return kept, shared
    message = comm.broadcast(None)
    if "error" in message:
        raise PeerFailed(bool(message.get("user")))
    return None, message["ok"]


def _config_dict(cfg: RunConfig) -> dict[str, Any]:
    return asdict(cfg)


def _config_from(data: dict[str, Any]) -> RunConfig:
    return RunConfig(**{**data, "train": TrainConfig.from_dict(data["train"])})


def _data_plan(data: Any) -> dict[str, Any]:
    """What the other ranks need to load the corpus rank 0 prepared, and to check it."""
    return {"cache": data.info.get("cache"), "sha256": data.info.get("sha256"), "fingerprint": data.tokenizer.fingerprint()}


def _shared_data(comm: Collectives, cfg: RunConfig, block_size: int, data: Any, plan: dict[str, Any]) -> Any:
    """Rank 0's prepared corpus on every rank. The others read it from the token cache
    rank 0 filled (read-only), the first rank of every other machine before the rest (it
    may have to tokenize into its own cache), each checking the corpus hash and the
    tokenizer fingerprint against rank 0's. Collective."""
    if comm.world_size == 1:
        return data
    for first in (True, False):
        if comm.rank != 0 and (comm.parallel.local_rank == 0) == first:
            data = _peer_data(cfg, block_size, plan)
        comm.barrier()
    return data


def _peer_data(cfg: RunConfig, block_size: int, plan: dict[str, Any]) -> Any:
    from gptbench.data import prepare_data
    from gptbench.tokenizers.registry import load_tokenizer

    tokenizer = None
    cache = Path(plan["cache"]) if plan.get("cache") else None
    if cache is not None and (cache / "index.json").is_file():  # rank 0's machine: its very entry
        try:
            tokenizer = load_tokenizer(cache)
        except UserError:
            tokenizer = None
        if tokenizer is not None and tokenizer.fingerprint() != plan["fingerprint"]:
            tokenizer = None
    data = prepare_data(cfg.data, cfg.tokenizer, block_size=block_size, val_fraction=cfg.train.val_fraction, tokenizer=tokenizer)
    if data.tokenizer.fingerprint() != plan["fingerprint"]:
        raise UserError(f"this rank built a different {cfg.tokenizer} tokenizer than rank 0 from {cfg.data or 'the default corpus'}; give every machine the same corpus and tokenizer files")
    if plan.get("sha256") and data.info.get("sha256") != plan["sha256"]:
        raise UserError(f"the corpus {cfg.data or 'default'} differs between this machine and rank 0's (sha256); give every machine the same data")
    return data


def _check_world(t: TrainConfig, comm: Collectives, name: str) -> None:
    """The step's micro-batches must split evenly over the ranks."""
    world = comm.world_size
    if t.grad_accum % world:
        raise UserError(
            f"run {name!r} takes {t.grad_accum} micro-batches per step, which {world} processes cannot share evenly; "
            f"use a number of processes that divides {t.grad_accum}, or pass --grad-accum to set each process's count (that changes the batch)"
        )


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


def _prepare_finetune(store: RunStore, cfg: RunConfig, comm: Collectives, reporter: Reporter) -> tuple[Any, RunConfig, Any]:
    """Rank 0 of a new fine-tuning run: resolve `--init-from`, derive the model from it (the
    explicit model keys checked against it), take its tokenizer and prepare the corpus.
    Returns (source, the config with the source's full model and tokenizer, data)."""
    from gptbench.data import prepare_data
    from gptbench.finetune import choose_tokenizer, derive_config
    from gptbench.sources import resolve_init_source

    lora = LoRAConfig.from_dict(cfg.lora) if cfg.lora else None
    if lora is not None and comm.world_size > 1:
        raise UserError(LORA_ONE_PROCESS)
    source = resolve_init_source(cfg.init_from or "", store, progress=reporter.log)
    model_cfg = derive_config(source.config, cfg.model, source.label)
    tokenizer = choose_tokenizer(source, cfg.tokenizer)
    if lora is not None:
        lora.modules(model_cfg)  # targets this model lacks fail before any data is read
    data = prepare_data(cfg.data, tokenizer.spec, block_size=model_cfg.block_size, val_fraction=cfg.train.val_fraction,
                        tokenizer=tokenizer, progress=reporter.log)
    # the whole model, vocab_size included (it may exceed the tokenizer's): the other ranks build it from this
    return source, replace(cfg, tokenizer=tokenizer.spec, model=model_cfg.to_dict()), data


def _check_fits(model_cfg: GPTConfig, t: TrainConfig, backend_name: str, device: str, parallel: Parallel = Parallel(),
                lora: LoRAConfig | None = None) -> None:
    """Refuse, before building it, a model that cannot fit in one rank's share of memory."""
    available = backend_class(backend_name).available_memory(device, processes=parallel.local_world_size)
    shards = parallel.world_size if parallel.distributed and parallel.strategy == "fsdp" else 1
    procs = f" on each of {parallel.local_world_size} processes" if parallel.local_world_size > 1 else ""
    needed = model_cfg.training_bytes(t.batch_size, shards=shards, checkpointed=parallel.activation_checkpointing)
    if lora is not None:  # frozen base: no gradients or moments for it, only for the adapters
        needed += 16 * lora.num_params(model_cfg) - 12 * model_cfg.num_params()
    check_memory(
        needed, available,
        f"training this {format_params(model_cfg.num_params())}-parameter model with --batch-size {t.batch_size} "
        f"and --block-size {model_cfg.block_size}{procs}",
        "use a smaller model (--n-layer, --n-embd) or a smaller --batch-size (raise --grad-accum to keep the batch)"
        + (", or --activation-checkpointing" if not parallel.activation_checkpointing else ""),
    )


class Trainer:
    """Trains one run. Construct with `new_run` or `resume_run`, then `fit()`.

    With several processes every rank builds a Trainer; only rank 0 has a `writer` (the
    run directory's owner) and a reporter that shows anything."""

    def __init__(
        self,
        writer: RunWriter | None,
        cfg: RunConfig,
        model_cfg: GPTConfig,
        data: Any,
        backend: Backend,
        reporter: Reporter,
        start_step: int = 0,
        created: float | None = None,
        comm: Collectives | None = None,
        run: Run | None = None,
    ) -> None:
        self.writer = writer
        self.run = writer.run if writer is not None else run
        self.cfg = cfg
        self.t = cfg.train
        self.model_cfg = model_cfg
        self.data = data
        self.backend = backend
        self.reporter = reporter
        self.comm = comm or Collectives()
        _check_world(self.t, self.comm, cfg.name or "")
        self.local_accum = self.t.grad_accum // self.comm.world_size  # this rank's micro-batches per step
        self.step = start_step
        self.created = created or time.time()
        self.init_from: dict[str, Any] | None = None  # the source reference (lineage) of a fine-tuned run
        self.best_val_loss: float | None = None
        self.elapsed = 0.0
        self.tokens_seen = 0
        self.tokens_per_sec: float | None = None
        self.peak_memory: list[int] | None = None  # bytes, per rank, as of the last log
        self.batch_rng = np.random.default_rng(self.t.seed)
        self.val_bytes = split_bytes(data.val, data.tokenizer)
        # val loss (nats a token) -> bits a byte; None for a split of special tokens only
        self._bpb_per_nat = len(data.val) / (self.val_bytes * math.log(2)) if self.val_bytes else None
        self.backend.setup_optimizer(self.t.optim_config())
        self._eval_batches = self._make_eval_batches()
        self._last_beat = 0.0
        self._started = time.time()
        self._resume_notes: list[str] = []
        self.thread_policy: Any = None  # a gptbench.backends.cpu.ThreadPolicy, set by `gptbench train`

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def new_run(cls, store: RunStore, cfg: RunConfig, reporter: Reporter | None = None, comm: Collectives | None = None) -> "Trainer":
        """Claim the run's name, then prepare data and the model; the run exists (config
        written) only once everything needed to train it has been built. Collective: rank 0
        claims and prepares, then every rank builds its backend."""
        from gptbench.data import prepare_data

        reporter = reporter or QuietReporter()
        comm = comm or Collectives()
        writer: RunWriter | None = None
        source: Any = None  # rank 0, fine-tuning: the resolved --init-from (its weights)

        def claim_and_prepare() -> tuple[Any, Any]:
            nonlocal writer, cfg, source
            from gptbench.data.sources import absolute_spec

            name = cfg.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
            writer = RunWriter.create(store.root, name)
            backend_name = resolve_backend_name(cfg.backend)
            cfg = replace(cfg, name=name, backend=backend_name, data=absolute_spec(cfg.data))
            _check_world(cfg.train, comm, name)
            if cfg.init_from:
                source, cfg, data = _prepare_finetune(store, cfg, comm, reporter)
            else:
                data = prepare_data(
                    cfg.data, cfg.tokenizer, block_size=cfg.model["block_size"], val_fraction=cfg.train.val_fraction,
                    progress=reporter.log,
                )
            model_cfg = cfg.model_config(data.tokenizer.vocab_size)
            _check_fits(model_cfg, cfg.train, backend_name, cfg.device, comm.parallel, LoRAConfig.from_dict(cfg.lora) if cfg.lora else None)
            return data, {"cfg": _config_dict(cfg), "data": _data_plan(data)}

        try:
            data, plan = _from_rank0(comm, claim_and_prepare)
            cfg = _config_from(plan["cfg"])
            data = _shared_data(comm, cfg, cfg.model["block_size"], data, plan["data"])
            model_cfg = cfg.model_config(data.tokenizer.vocab_size)
            backend = create_backend(model_cfg, cfg.backend, device=cfg.device, seed=cfg.train.seed, dtype=cfg.dtype,
                                     compile=cfg.compile, parallel=comm.parallel)
            if cfg.init_from:  # rank 0's source weights, on every rank (collective)
                from gptbench.sources import fit_tensors

                backend.set_weights(fit_tensors(source.model.merged(), source.config, model_cfg, source.label) if source is not None else {})
                if cfg.lora:
                    backend.apply_lora(LoRAConfig.from_dict(cfg.lora))
            trainer = cls(writer, cfg, model_cfg, data, backend, reporter, comm=comm, run=Run(Path(store.root) / str(cfg.name)))
            if source is not None:
                trainer.init_from = source.reference()
                lora = backend.lora
                kind = f"LoRA r{lora.rank} ({format_params(lora.num_params(model_cfg))} trainable)" if lora else "all weights training"
                trainer._resume_notes.append(f"initialised from {source.label} ({source.kind}, sha256 {trainer.init_from['sha256'][:12]}...); {kind}")
            if writer is not None:
                writer.save_tokenizer(data.tokenizer)
                trainer._write_config()  # last: from here on the folder is a run
        except BaseException:
            if writer is not None:
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
        comm: Collectives | None = None,
    ) -> "Trainer":
        """Continue a run from its last checkpoint (from step 0 when it has none).

        `overrides` may change training keys (max_iters, lr_decay_iters, ...), backend and
        device; model, data and tokenizer must not change. Every file is validated before
        it is used; the corpus must hash as it did (unless `accept_changed_data`).
        `grad_accum` is the step's global micro-batch count: a run resumes on any number of
        processes that divides it. Collective: rank 0 reads and checks everything, every
        rank builds its backend, and rank 0's checkpoint is installed on all."""
        from gptbench.data import prepare_data
        from gptbench.sources import load_run_tokenizer

        reporter = reporter or QuietReporter()
        comm = comm or Collectives()
        writer: RunWriter | None = None

        def open_and_check() -> tuple[Any, Any]:
            nonlocal writer
            writer = RunWriter.open(store.root, name)
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
            _check_world(t, comm, name)
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
                init_from=(saved.get("init_from") or {}).get("spec"),
                lora=saved.get("lora"),
            )
            tokenizer = load_run_tokenizer(run)
            data = prepare_data(cfg.data, cfg.tokenizer, block_size=saved_model.block_size, val_fraction=t.val_fraction, tokenizer=tokenizer, progress=reporter.log)
            saved_sha, sha = saved["data"].get("sha256"), data.info.get("sha256")
            if saved_sha and sha != saved_sha and not accept_changed_data:
                raise UserError(
                    f"the corpus {cfg.data or 'default'} changed since run {name!r} was trained on it (sha256 {saved_sha[:12]}... is now {str(sha)[:12]}...); "
                    "restore it, or pass --accept-changed-data to continue on the new text"
                )
            lora = LoRAConfig.from_dict(saved["lora"]) if saved.get("lora") else None
            if lora is not None and comm.world_size > 1:
                raise UserError(LORA_ONE_PROCESS)
            init_from = saved.get("init_from")
            if ckpt is not None:
                try:
                    stored = load_checkpoint(ckpt.path)  # a LoRA checkpoint brings its base (hash-checked)
                except WeightsError as exc:
                    raise CorruptRunError(f"{exc}; delete {ckpt.path.name} to resume from the checkpoint before it") from None
                model_cfg = stored.config
                if model_cfg.replace(dropout=saved_model.dropout) != saved_model or stored.lora != lora:
                    raise CorruptRunError(f"{ckpt.path} holds a different model than {where} describes")
            elif init_from:  # killed before its first checkpoint: start again from its source
                from gptbench.sources import fit_tensors, load_reference

                origin = load_reference(init_from, f"run {name!r}")
                model_cfg = saved_model
                stored = ModelWeights(model_cfg, fit_tensors(origin.merged(), origin.config, model_cfg, str(init_from.get("label"))), lora)
            else:
                model_cfg, stored = saved_model, None
            _check_fits(model_cfg, t, backend_name, device, comm.parallel, lora)
            notes = [] if ckpt is not None else [f"run {name} has no complete checkpoint: training it again from step 0 with its saved config"]
            notes.extend(_schedule_notes(start, t, saved["train"]))
            if sha != saved_sha and saved_sha:
                notes.append("the corpus changed since the run started; continuing on the new text (--accept-changed-data)")
            kept = (data, ckpt, stored)
            shared = {"cfg": _config_dict(cfg), "model": model_cfg.to_dict(), "data": _data_plan(data), "start": start,
                      "checkpoint": ckpt is not None, "weights": stored is not None, "init_from": init_from,
                      "created": saved.get("created"), "notes": notes}
            return kept, shared

        try:
            kept, plan = _from_rank0(comm, open_and_check)
            data, ckpt, stored = kept if kept is not None else (None, None, None)
            cfg = _config_from(plan["cfg"])
            model_cfg = GPTConfig.from_dict(plan["model"])
            data = _shared_data(comm, cfg, model_cfg.block_size, data, plan["data"])
            backend = create_backend(model_cfg, cfg.backend, device=cfg.device, seed=cfg.train.seed, dtype=cfg.dtype,
                                     compile=cfg.compile, parallel=comm.parallel)
            if cfg.lora:  # before the optimizer: it must see only the adapters
                backend.apply_lora(LoRAConfig.from_dict(cfg.lora))
            trainer = cls(writer, cfg, model_cfg, data, backend, reporter, start_step=plan["start"], created=plan["created"],
                          comm=comm, run=Run(Path(store.root) / name))
            trainer.init_from = plan["init_from"]
            if plan["weights"]:  # rank 0's checkpoint (or source) weights, on every rank (collective)
                backend.set_weights(stored.tensors if stored is not None else {})
                if stored is not None and stored.adapters is not None:
                    backend.set_adapters(stored.adapters)  # LoRA: one process only
            if plan["checkpoint"]:
                def read_state() -> tuple[Any, Any]:
                    state = load_training_state(ckpt, backend.optimizer_state_shapes(), backend.rng_state_shapes(), backend.name)
                    return state, {"trainer": state.trainer, "optimizer_meta": state.optimizer_meta}

                state, shared_state = _from_rank0(comm, read_state)
                trainer._install(
                    state.optimizer if state is not None else {}, shared_state["optimizer_meta"],
                    state.rng if state is not None else {}, shared_state["trainer"],
                )
                trainer._resume_notes.append(f"resuming {name} at step {trainer.step} of {cfg.train.max_iters}")
            trainer._resume_notes.extend(plan["notes"])
            if writer is not None:
                writer.rewind(trainer.step if plan["checkpoint"] else -1)  # from step 0, its eval is redone too
                trainer._write_config()
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        return trainer

    # ---- the run directory (rank 0 only) ----------------------------------------------
    def _write_config(self) -> None:
        cfg, tok = self.cfg, self.data.tokenizer
        par = self.comm.parallel
        assert self.writer is not None
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
            # how the latest session trained it; train.grad_accum is the global count
            "parallel": {"world_size": par.world_size, "strategy": par.strategy_name, "comm": self.comm.name,
                         "grad_accum_per_process": self.local_accum, "activation_checkpointing": par.activation_checkpointing},
            **({"init_from": self.init_from} if self.init_from else {}),
            **({"lora": self.backend.lora.to_dict(), "trainable_params": self.backend.lora.num_params(self.model_cfg)} if self.backend.lora else {}),
        })

    def _status(self, state: RunState, **extra: Any) -> None:
        if self.writer is None:
            return
        par = self.comm.parallel
        self.writer.set_status(
            state, started=self._started, step=self.step, max_iters=self.t.max_iters, best_val_loss=self.best_val_loss,
            best_val_bpb=self.bpb(self.best_val_loss), tokens_per_sec=self.tokens_per_sec, elapsed=self.elapsed,
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
        self.reporter.update(self.step, record_dict(record))

    # ---- checkpoints ------------------------------------------------------------------
    def _save_checkpoint(self, val_loss: float | None) -> None:
        """Collective: every rank helps gather the state; rank 0 writes it."""
        opt_tensors, opt_meta = self.backend.get_optimizer_state()
        lora = self.backend.lora  # a LoRA checkpoint holds the adapters (LoRA: one process)
        weights = self.backend.get_adapters() if lora else self.backend.get_weights()
        if self.writer is None:
            return
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
            self.step, self.model_cfg, weights, {**opt_tensors, **rng}, trainer_state,
            val_loss=val_loss, keep_last=self.t.keep_last, lora=lora, base=self.init_from if lora else None,
        )

    def _optimizer_notes(self) -> list[str]:
        if self.t.optimizer != "muon":
            return []
        from gptbench.backends.base import muon_blocks

        n = len(muon_blocks(self.model_cfg))
        return [f"Muon (peak lr {self.t.muon_lr:g}) trains the {n} hidden matrices; AdamW (peak lr {self.t.lr:g}) "
                "the embeddings, head, norms and biases"]

    def _install(self, optimizer: dict[str, np.ndarray], optimizer_meta: dict[str, Any], rng: dict[str, np.ndarray], trainer: dict[str, Any]) -> None:
        """A checkpoint's training state; collective (rank 0 holds the tensors). Rank 0
        continues its framework RNG; the others keep the dropout stream of their rank."""
        self.backend.set_optimizer_state(optimizer, optimizer_meta)
        if rng and self.comm.rank == 0:
            self.backend.set_rng_state(rng)
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
        """Mean loss over each split's fixed eval batches. Ranks take every world-th batch
        and their sums are added up, so the result is one process's mean; every rank runs
        as many forwards (a rank short of batches repeats one, with weight 0), because
        under FSDP a forward is collective."""
        world, rank = self.comm.world_size, self.comm.rank
        totals = []
        for batches in self._eval_batches.values():
            total = 0.0
            for k in range(-(-len(batches) // world)):
                i = rank + k * world
                if i < len(batches):
                    total += self.backend.eval_loss(*batches[i])
                else:
                    self.backend.eval_loss(*batches[0])
            totals.append(total)
        totals = self.comm.sum(totals) if world > 1 else totals
        return {split: total / len(b) for (split, b), total in zip(self._eval_batches.items(), totals)}

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
            *self._parallel_lines(),
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
                stopped = self._loop(stop)
                if stopped and self.step < t.max_iters:
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
                if self.writer is not None:
                    self.writer.close()
        return TrainOutcome(self.run, state.value, self.step, self.best_val_loss, self.bpb(self.best_val_loss))

    def _parallel_lines(self) -> list[str]:
        par, world = self.comm.parallel, self.comm.world_size
        if world == 1 and not par.activation_checkpointing:
            return []
        T, B = self.model_cfg.block_size, self.t.batch_size
        ac = ", activation checkpointing" if par.activation_checkpointing else ""
        if world == 1:
            return [f"one process{ac}"]
        return [
            f"{world} processes ({par.strategy}, {self.comm.name}{ac}): global batch {world} ranks x {B} sequences x "
            f"{self.local_accum} micro-batches = {world * B * self.local_accum:,} sequences ({self.t.tokens_per_step(T):,} tokens) per step"
        ]

    def _step_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's contiguous share of the step's micro-batches, drawn from the one
        seeded stream (the other ranks' shares are skipped, not read)."""
        from gptbench.data import get_batch, skip_batch

        t, T, A = self.t, self.model_cfg.block_size, self.local_accum
        mine = range(self.comm.rank * A, (self.comm.rank + 1) * A)
        batches = []
        for i in range(t.grad_accum):
            if i in mine:
                batches.append(get_batch(self.data.train, t.batch_size, T, self.batch_rng))
            else:
                skip_batch(self.data.train, t.batch_size, T, self.batch_rng)
        return batches

    def _stop_agreed(self, stop: _StopFlag) -> bool:
        """Whether to stop now: a request on any rank stops every rank at this step."""
        return self.comm.any(stop.requested) if self.comm.world_size > 1 else stop.requested

    def _global_numbers(self, loss: float) -> float:
        """The step's loss averaged over ranks, and every rank's peak memory (one sum)."""
        world, rank = self.comm.world_size, self.comm.rank
        memory = [0.0] * world
        memory[rank] = float(self.backend.peak_memory())
        if world == 1:
            self.peak_memory = [int(memory[0])]
            return loss
        sums = self.comm.sum([loss, *memory])
        self.peak_memory = [int(m) for m in sums[1:]]
        return sums[0] / world

    def _loop(self, stop: _StopFlag) -> bool:
        """Train until `max_iters`, or return True once every rank agreed to stop."""
        t, T = self.t, self.model_cfg.block_size
        tokens_per_step = t.tokens_per_step(T)
        resumed_at = self.step
        window_t0, window_steps = time.perf_counter(), 0
        while self.step < t.max_iters:
            # (a resumed run already evaluated the step its checkpoint was taken at)
            if self.step % t.eval_interval == 0 and (self.step != resumed_at or self.step == 0):
                self._eval_and_checkpoint(save=self.step > 0)
                window_t0, window_steps = time.perf_counter(), 0
            if self._stop_agreed(stop):
                return True
            lr = lr_at(self.step, t)
            result = self.backend.train_step(self._step_batches(), lr)
            self.step += 1
            window_steps += 1
            if self.thread_policy is not None:
                switched = self.thread_policy.tick()
                if switched is not None:
                    threads, others = switched
                    self._log(f"other processes use {others:.1f} of {self.thread_policy.cores} cores: "
                              f"training on {threads} thread{'s' if threads > 1 else ''} now")
            self.tokens_seen += tokens_per_step
            if self.step % t.log_interval == 0 or self.step == t.max_iters:
                loss = self._global_numbers(result.loss)  # the only host sync of the step, every log_interval
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
        return False

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
            text = self._sample_text()  # on every rank: under FSDP each forward is collective
            self._record(SampleRecord(self.step, text, time.time()))
            self._log(f"sample at step {self.step}:\n{text}")
        self._status(RunState.RUNNING, eval_seconds=time.perf_counter() - t0)

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
                from gptbench.launch import short_reason

                reason = f"rank {self.comm.rank}: {reason if isinstance(exc, UserError) else short_reason(exc)}"
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
