"""Opening a run to train: claiming a new one, or validating and resuming an existing one.

A trainer claims its run before it reads any data, and everything it loads to resume is
validated first, so a damaged file, a changed corpus or an edited tokenizer is one line,
never a traceback or a silently different run. Collective: rank 0 claims or opens, checks
and prepares; every rank then builds its backend from what rank 0 broadcast. The result is
an `Opened`, from which `Trainer` is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gptbench.backends.base import Backend
from gptbench.backends.memory import check_memory
from gptbench.backends.parallel import Collectives, Parallel
from gptbench.backends.registry import backend_class, create_backend, resolve_backend_name
from gptbench.backends.lora import LORA_ONE_PROCESS, LoRAConfig
from gptbench.backends.spec import GPTConfig, format_params
from gptbench.errors import UserError
from gptbench.runstore import Run, RunStore, RunWriter
from gptbench.spec.run import RunSpec, default_run_name
from gptbench.spec.train import TrainConfig
from gptbench.training.distributed import check_world, data_plan, from_rank0, shared_data
from gptbench.training.reporting import Reporter


@dataclass
class Opened:
    """A run ready to train: its writer (rank 0), resolved spec, data and built backend."""

    writer: RunWriter | None
    run: Run
    spec: RunSpec
    data: Any
    backend: Backend
    start_step: int = 0
    created: float | None = None
    init_from: dict[str, Any] | None = None  # the lineage reference of a fine-tuned run
    notes: list[str] = field(default_factory=list)
    resumed: bool = False  # a checkpoint's training state is to be installed


def check_fits(model_cfg: GPTConfig, t: TrainConfig, backend_name: str, device: str, parallel: Parallel = Parallel(),
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


def build_backend(spec: RunSpec, comm: Collectives) -> Backend:
    """Every rank's backend for the spec's model (collective under FSDP)."""
    rt = spec.runtime
    return create_backend(spec.model, rt.backend, device=rt.device, seed=spec.train.seed, dtype=rt.dtype,
                          compile=rt.compile, parallel=comm.parallel)


def _prepare_finetune(store: RunStore, spec: RunSpec, comm: Collectives, reporter: Reporter) -> tuple[Any, RunSpec, Any]:
    """Rank 0 of a new fine-tuning run: resolve `--init-from`, derive the model from it (the
    explicit model keys checked against it), take its tokenizer and prepare the corpus.
    Returns (source, the spec with the source's full model and tokenizer, data)."""
    from gptbench.chat.sft import prepare_run_data
    from gptbench.finetune import choose_tokenizer, derive_config
    from gptbench.sources import resolve_init_source

    if spec.lora is not None and comm.world_size > 1:
        raise UserError(LORA_ONE_PROCESS)
    source = resolve_init_source(spec.init_from or "", store, progress=reporter.log)
    model_cfg = derive_config(source.config, spec.given_model(), source.label)
    tokenizer = choose_tokenizer(source, spec.tokenizer)
    if spec.lora is not None:
        spec.lora.modules(model_cfg)  # targets this model lacks fail before any data is read
    data = prepare_run_data(spec, block_size=model_cfg.block_size, tokenizer=tokenizer, progress=reporter.log)
    if data.tokenizer.vocab_size > model_cfg.vocab_size:  # --sft's turn tokens: new embedding (and head) rows
        model_cfg = model_cfg.replace(vocab_size=data.tokenizer.vocab_size)
    # the whole model, vocab_size included (it may exceed the tokenizer's): the other ranks build it from this
    return source, replace(spec, tokenizer=tokenizer.spec, model=model_cfg), data


def open_new(store: RunStore, spec: RunSpec, reporter: Reporter, comm: Collectives) -> Opened:
    """Claim the run's name, then prepare data and the model. The run exists (config
    written, by the Trainer) only once everything needed to train it has been built."""
    from gptbench.chat.sft import prepare_run_data
    from gptbench.data.sources import absolute_spec

    writer: RunWriter | None = None
    source: Any = None  # rank 0, fine-tuning: the resolved --init-from (its weights)

    def claim_and_prepare() -> tuple[Any, Any]:
        nonlocal writer, spec, source
        name = spec.name or default_run_name(spec.preset)
        writer = RunWriter.create(store.root, name)
        spec = replace(spec, name=name, data=absolute_spec(spec.data),
                       runtime=replace(spec.runtime, backend=resolve_backend_name(spec.runtime.backend)))
        check_world(spec.train, comm, name)
        if spec.init_from:
            source, spec, data = _prepare_finetune(store, spec, comm, reporter)
        else:
            data = prepare_run_data(spec, block_size=spec.model.block_size, progress=reporter.log)
            spec = replace(spec, model=spec.model_config(data.tokenizer.vocab_size))
        check_fits(spec.model, spec.train, spec.runtime.backend, spec.runtime.device, comm.parallel, spec.lora)
        return data, {"spec": spec.to_dict(), "data": data_plan(data)}

    try:
        data, plan = from_rank0(comm, claim_and_prepare)
        spec = RunSpec.from_dict(plan["spec"])
        data = shared_data(comm, spec, spec.model.block_size, data, plan["data"])
        backend = build_backend(spec, comm)
        opened = Opened(writer, Run(Path(store.root) / str(spec.name)), spec, data, backend)
        if spec.init_from:  # rank 0's source weights, on every rank (collective)
            _install_source(opened, source)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    return opened


def _install_source(opened: Opened, source: Any) -> None:
    """A new fine-tune's starting weights (rank 0's source; collective), then its adapters."""
    from gptbench.modelweights import fit_tensors

    spec, backend = opened.spec, opened.backend
    backend.set_weights(fit_tensors(source.model.merged(), source.config, spec.model, source.label) if source is not None else {})
    if spec.lora:
        backend.apply_lora(spec.lora)
    if source is not None:
        opened.init_from = source.reference()
        lora = backend.lora
        kind = f"LoRA r{lora.rank} ({format_params(lora.num_params(spec.model))} trainable)" if lora else "all weights training"
        opened.notes.append(f"initialised from {source.label} ({source.kind}, sha256 {opened.init_from['sha256'][:12]}...); {kind}")
