"""Resuming a run: its saved specification, the overrides applied, its last checkpoint checked.

Resume is: load the specification, apply the overrides (training, runtime and parallel
settings may change; model, data, tokenizer and optimizer may not), say in one line what
changed, and continue from the last complete checkpoint (from step 0 when it has none).
Collective like `opening.open_new`: rank 0 reads and checks everything, every rank builds
its backend, and rank 0's checkpoint is installed on all.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from gptbench.backends.parallel import Collectives
from gptbench.backends.registry import resolve_backend_name
from gptbench.backends.lora import LORA_ONE_PROCESS
from gptbench.backends.weights import WeightsError
from gptbench.errors import ConfigError, UserError
from gptbench.modelweights import ModelWeights, load_checkpoint
from gptbench.runstore import CorruptRunError, Run, RunStore, RunWriter
from gptbench.runstore.specfile import read_config
from gptbench.spec.resolve import changes, value_at, with_overrides
from gptbench.spec.run import ParallelSpec, RunSpec
from gptbench.training.distributed import check_world, data_plan, from_rank0, shared_data
from gptbench.training.opening import Opened, build_backend, check_fits
from gptbench.training.reporting import Reporter
from gptbench.training.schedule import schedule_notes

FIXED_ON_RESUME = ("model.", "data", "tokenizer", "train.optimizer", "train.sft")  # their checkpointed tensors depend on them


def resumed_spec(saved: RunSpec, overrides: Mapping[str, Any], where: str) -> tuple[RunSpec, str | None]:
    """The saved spec with the overrides applied, and one line saying what changed (None
    when nothing did). Model, data, tokenizer and optimizer must stay as they were."""
    given = {k: v for k, v in overrides.items() if v is not None}
    conflicts = []
    for path, value in given.items():
        if path.startswith(FIXED_ON_RESUME):
            old = value_at(saved, path)
            if value != old:
                conflicts.append(f"{path.rpartition('.')[2]}={value!r} (run has {old!r})")
    if conflicts:
        raise UserError(f"cannot resume {saved.name!r} with a different " + ", ".join(conflicts) + "; start a new run instead")
    backend = resolve_backend_name(given.get("runtime.backend") or saved.runtime.backend)
    runtime = replace(saved.runtime, backend=backend, threads=None,
                      device="auto" if backend != saved.runtime.backend else saved.runtime.device)
    base = replace(saved, runtime=runtime, parallel=ParallelSpec())
    rest = {k: v for k, v in given.items() if k.startswith(("train.", "runtime.", "parallel.")) and k != "runtime.backend"}
    try:
        spec = with_overrides(base, rest)
    except ConfigError as exc:
        raise CorruptRunError(f"{where}: {exc}") from None
    changed = [f"{p.rpartition('.')[2]} {old} -> {new}" for p, old, new in changes(saved, spec)
               if p.startswith("train.") or p in ("runtime.backend", "runtime.dtype", "runtime.compile")]
    return spec, (f"resumed with {', '.join(changed)}" if changed else None)


def _last_checkpoint(run: Run, spec: RunSpec, overrides: Mapping[str, Any]) -> tuple[Any, int]:
    """The checkpoint to continue from and its step; refuses a newer damaged one and a run
    already at its --max-iters."""
    name, t = spec.name, spec.train
    ckpts = run.checkpoints()
    ckpt = ckpts[-1] if ckpts else None
    start = ckpt.step if ckpt else 0
    for step, path, why in run.damaged_checkpoints():
        if step > start:
            raise CorruptRunError(f"{why}; delete {path.name} to resume from {f'step {start}' if ckpt else 'step 0'}")
    if start >= t.max_iters:
        if overrides.get("train.max_iters") is not None:
            raise UserError(f"run {name!r} is at step {start}; --max-iters {t.max_iters} would not train it further; pass a --max-iters above {start}")
        raise UserError(f"run {name!r} already reached its --max-iters ({t.max_iters}) at step {start}; pass a larger --max-iters to train it further")
    return ckpt, start


def _stored_weights(run: Run, spec: RunSpec, saved: RunSpec, ckpt: Any, init_from: dict[str, Any] | None) -> Any:
    """The weights to continue from: the checkpoint's (a LoRA checkpoint brings its base,
    hash-checked), a fine-tune's source when it has no checkpoint yet, or none."""
    if ckpt is not None:
        try:
            stored = load_checkpoint(ckpt.path)
        except WeightsError as exc:
            raise CorruptRunError(f"{exc}; delete {ckpt.path.name} to resume from the checkpoint before it") from None
        if stored.config.replace(dropout=saved.model.dropout) != saved.model or stored.lora != saved.lora:
            raise CorruptRunError(f"{ckpt.path} holds a different model than {run.config_path} describes")
        return stored
    if init_from:  # killed before its first checkpoint: start again from its source
        from gptbench.modelweights import fit_tensors, load_reference

        origin = load_reference(init_from, f"run {spec.name!r}")
        return ModelWeights(spec.model, fit_tensors(origin.merged(), origin.config, spec.model, str(init_from.get("label"))), spec.lora)
    return None


def _check_and_prepare(run: Run, overrides: Mapping[str, Any], accept_changed_data: bool, comm: Collectives,
                       reporter: Reporter) -> tuple[Any, dict[str, Any]]:
    """Rank 0: everything a resume needs, validated. (kept on rank 0, what all ranks get)."""
    from gptbench.chat.sft import prepare_run_data
    from gptbench.sources import load_run_tokenizer

    if not run.exists():
        raise UserError(f"run {run.name!r} was killed while starting, before its config was written; start it again with --name {run.name}")
    saved, facts = read_config(run)
    saved = replace(saved, name=run.name)  # a copied run folder keeps its old name inside
    spec, changed = resumed_spec(saved, overrides, str(run.config_path))
    check_world(spec.train, comm, run.name)
    ckpt, start = _last_checkpoint(run, spec, overrides)
    data = prepare_run_data(spec, block_size=spec.model.block_size, tokenizer=load_run_tokenizer(run), progress=reporter.log)
    saved_sha, sha = facts.data.get("sha256"), data.info.get("sha256")
    if saved_sha and sha != saved_sha and not accept_changed_data:
        raise UserError(
            f"the corpus {spec.data or 'default'} changed since run {run.name!r} was trained on it (sha256 {saved_sha[:12]}... is now {str(sha)[:12]}...); "
            "restore it, or pass --accept-changed-data to continue on the new text"
        )
    if spec.lora is not None and comm.world_size > 1:
        raise UserError(LORA_ONE_PROCESS)
    stored = _stored_weights(run, spec, saved, ckpt, facts.init_from)
    if stored is not None:
        spec = replace(spec, model=stored.config)
    check_fits(spec.model, spec.train, spec.runtime.backend, spec.runtime.device, comm.parallel, spec.lora)
    notes = [] if ckpt is not None else [f"run {run.name} has no complete checkpoint: training it again from step 0 with its saved config"]
    notes += [changed] if changed else []
    notes += schedule_notes(start, spec.train, saved.train.to_dict())
    if sha != saved_sha and saved_sha:
        notes.append("the corpus changed since the run started; continuing on the new text (--accept-changed-data)")
    shared = {"spec": spec.to_dict(), "data": data_plan(data), "start": start, "checkpoint": ckpt is not None,
              "weights": stored is not None, "init_from": facts.init_from, "created": facts.created, "notes": notes}
    return (data, ckpt, stored), shared


def open_resumed(store: RunStore, name: str, overrides: Mapping[str, Any], reporter: Reporter, comm: Collectives,
                 accept_changed_data: bool = False) -> tuple[Opened, Any]:
    """Open run `name` to continue it. Returns the opened run and its last checkpoint (rank
    0; None elsewhere and when it has none): the Trainer installs its training state."""
    writer: RunWriter | None = None

    def open_and_check() -> tuple[Any, Any]:
        nonlocal writer
        writer = RunWriter.open(store.root, name)
        return _check_and_prepare(writer.run, overrides, accept_changed_data, comm, reporter)

    try:
        kept, plan = from_rank0(comm, open_and_check)
        data, ckpt, stored = kept if kept is not None else (None, None, None)
        spec = RunSpec.from_dict(plan["spec"])
        data = shared_data(comm, spec, spec.model.block_size, data, plan["data"])
        backend = build_backend(spec, comm)
        if spec.lora:  # before the optimizer: it must see only the adapters
            backend.apply_lora(spec.lora)
        if plan["weights"]:  # rank 0's checkpoint (or source) weights, on every rank (collective)
            backend.set_weights(stored.tensors if stored is not None else {})
            if stored is not None and stored.adapters is not None:
                backend.set_adapters(stored.adapters)  # LoRA: one process only
        opened = Opened(writer, Run(Path(store.root) / name), spec, data, backend, start_step=plan["start"],
                        created=plan["created"], init_from=plan["init_from"], notes=plan["notes"], resumed=plan["checkpoint"])
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return opened, ckpt
