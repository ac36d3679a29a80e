"""`gptbench convert`: move weights between runs, gptbench files and Hugging Face GPT-2.

Sources are resolved by `gptbench.sources.resolve_convert_source` (a run and its
best/last/step-N checkpoint, a damaged newest one reported or, with --strict, refused; a
gptbench `.safetensors` file; a Hugging Face GPT-2 folder); a LoRA run is merged.

Targets:
  torch | mlx  the canonical gptbench file (both backends read the same file; the target
               names the backend the result is verified on). DST ending in `.safetensors`
               is a weights file; any other DST is a new run in the runs directory, with a
               tokenizer, so `gptbench sample --run DST` works.
  hf           a folder in the hub's GPT-2 layout that `transformers.pipeline` (and
               `GPT2LMHeadModel.from_pretrained`) load as it is, with the tokenizer files;
               `mlx_lm.load` too when the LM head is tied.
  mlx-lm       the same folder, for mlx-lm: refused for an untied head (mlx-lm's gpt2 ties
               it always, so it would not load) or without a tokenizer, and checked by
               loading it with mlx_lm when that is installed.

Every output is staged beside its destination (`fsutil.atomic_path` / `atomic_dir`, or a
staged run from `RunWriter.stage`), verified by reloading it and comparing its logits with
the source's on a fixed batch (a LoRA source: the unmerged model's), and only then renamed
into place; exported tokenizer files must reproduce gptbench's ids on a probe text. An
existing destination is replaced only with `force`. Nothing is left behind on failure.
Files are written by `backends/weights.py`, the one owner of the safetensors format; the
Hugging Face folder by `gptbench.hfexport`, the logits compared by `gptbench.roundtrip`.
Every weights file written records the source and the step it was exported from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gptbench.backends.spec import GPTConfig, format_params
from gptbench.backends.weights import FLOAT_DTYPES
from gptbench.errors import UserError
from gptbench.fsutil import atomic_path
from gptbench.hfexport import export_metadata, write_hf_folder
from gptbench.roundtrip import verify_logits
from gptbench.sources import CONVERT_KINDS, ModelSource, load_run_tokenizer
from gptbench.tokenizers.registry import load_tokenizer_spec

if TYPE_CHECKING:
    from gptbench.runstore import RunStore
    from gptbench.tokenizers.base import Tokenizer

DTYPES = FLOAT_DTYPES
TARGETS = ("torch", "mlx", "hf", "mlx-lm", "gguf")
SOURCE_KINDS = CONVERT_KINDS


@dataclass
class ConvertResult:
    dst: Path
    target: str  # torch | mlx | hf
    layout: str  # "weights file" | "run" | "Hugging Face folder"
    dtype: str
    max_diff: float
    backend: str  # where the round trip was verified, e.g. "torch on cpu"
    n_tensors: int
    size_bytes: int
    batch_shape: tuple[int, int]
    tokenizer: str | None = None  # the tokenizer written with it (spec), if any
    notes: list[str] = field(default_factory=list)  # what else the user should know
    step: int | None = None  # the step it was exported from (recorded in its metadata)

    def to_dict(self) -> dict:
        return {
            "dst": str(self.dst), "to": self.target, "layout": self.layout, "dtype": self.dtype,
            "max_logit_diff": self.max_diff, "verified_on": self.backend, "tensors": self.n_tensors,
            "bytes": self.size_bytes, "batch": list(self.batch_shape), "tokenizer": self.tokenizer, "notes": self.notes,
            "step": self.step,
        }


# ---- the conversion -------------------------------------------------------------------
def destination_kind(dst: str, to: str) -> str:
    """`hf` -> a folder; `gguf` -> a file; torch/mlx -> a weights file (`*.safetensors`) or a run name."""
    if to in ("hf", "mlx-lm"):
        return "hf"
    if to == "gguf":
        return "gguf"
    return "weights" if dst.endswith(".safetensors") else "run"


def convert(
    source: ModelSource,
    dst: str,
    *,
    to: str,
    dtype: str,
    store: "RunStore",
    force: bool = False,
    tokenizer: str | None = None,
    backend: str = "auto",
    device: str = "auto",
) -> ConvertResult:
    """Write `source` to `dst` as `to` in `dtype`, verified, atomically."""
    from gptbench.backends.registry import resolve_backend_name

    if to == "gguf":
        return _to_gguf(source, Path(dst).expanduser(), dtype, force, resolve_backend_name(backend), device, tokenizer)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if to not in TARGETS:
        raise UserError(f"unknown target {to!r}; choose one of {', '.join(TARGETS)}")
    verify_on = resolve_backend_name(backend if to in ("hf", "mlx-lm") else to)
    kind = destination_kind(dst, to)
    if kind == "hf":
        from gptbench.backends.hf import check_exportable

        check_exportable(source.config)
        if to == "mlx-lm" and not source.config.tie_embeddings:
            raise UserError(
                "mlx-lm's gpt2 always ties the LM head to the token embeddings, and this model's head is untied, "
                "so mlx_lm.load would refuse it; export it --to hf (transformers loads it) or train with a tied head"
            )
        tok = _source_tokenizer(source, tokenizer)
        if tok is None and to == "mlx-lm":
            raise UserError("mlx_lm.load needs the tokenizer files and this source has no tokenizer; pass --tokenizer (gpt2, byte, bpe:PATH or a run folder)")
        return _to_hf(source, Path(dst).expanduser(), dtype, force, verify_on, device, tok, to)
    if kind == "weights":
        return _to_weights(source, Path(dst).expanduser(), dtype, force, to, verify_on, device)
    return _to_run(source, dst, dtype, force, to, verify_on, device, store, tokenizer)


def _check_target(dst: Path, force: bool, what: str) -> None:
    if dst.exists() or dst.is_symlink():
        if not force:
            raise UserError(f"{dst} already exists; pass --force to overwrite it")
        if what == "file" and dst.is_dir():
            raise UserError(f"{dst} is a folder; a weights file destination must be a file path")
        if what == "folder" and not dst.is_dir():
            raise UserError(f"{dst} exists and is not a folder; remove it or choose another destination")


def _writable(dst: Path) -> None:
    """One line for an output folder that cannot be written, before any work is done."""
    parent = dst.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK) or _read_only_mount(parent):
        raise UserError(f"cannot write to {parent} (read-only or no permission); choose another destination")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _to_weights(source: ModelSource, dst: Path, dtype: str, force: bool, to: str, verify_on: str, device: str) -> ConvertResult:
    from gptbench.backends.weights import load_weights, save_weights

    _check_target(dst, force, "file")
    _writable(dst)
    with atomic_path(dst) as staged:  # renamed onto dst only after verification passes
        size = save_weights(staged, source.config, source.tensors, dtype=dtype, **export_metadata(source))
        config, tensors = load_weights(staged)
        diff, where, shape = verify_logits(source, config, tensors, dtype, verify_on, device)
    return ConvertResult(dst, to, "weights file", dtype, diff, where, len(tensors), size, shape, step=source.step)


def _to_hf(source: ModelSource, dst: Path, dtype: str, force: bool, verify_on: str, device: str, tok: "Tokenizer | None", to: str) -> ConvertResult:
    _check_target(dst, force, "folder")
    _writable(dst)
    out = write_hf_folder(source, dst, dtype, force, verify_on, device, tok, to)
    return ConvertResult(dst, to, "Hugging Face folder", dtype, out.max_diff, out.verified_on, out.n_tensors, out.size_bytes,
                         out.batch_shape, tok.spec if tok is not None else None, out.notes, source.step)


def _to_gguf(source: ModelSource, dst: Path, dtype: str, force: bool, verify_on: str, device: str, tokenizer: str | None) -> ConvertResult:
    from gptbench.exports.gguf import check_gguf_exportable, export_gguf, gguf_type, import_gguf

    qtype = gguf_type(dtype)
    check_gguf_exportable(source.config)
    import_gguf()
    _check_target(dst, force, "file")
    _writable(dst)
    tok = _source_tokenizer(source, tokenizer)
    out = export_gguf(source, dst, qtype, tok, verify_on, device)
    notes = [] if tok is not None else ["no tokenizer written (the source has none): llama.cpp needs one; pass --tokenizer"]
    return ConvertResult(dst, "gguf", "GGUF file", qtype, out.max_diff, out.verified_on, out.n_tensors, out.size_bytes,
                         out.batch_shape, tok.spec if tok is not None else None, notes, source.step)


def _source_tokenizer(source: ModelSource, spec: str | None) -> "Tokenizer | None":
    """`--tokenizer`, else the source's own (a run's, a Hugging Face folder's files, GPT-2's
    for a 50257-token folder without files); None when the source has none."""
    if spec:
        tok = load_tokenizer_spec(spec)
    elif source.run is not None:
        tok = load_run_tokenizer(source.run)
    elif source.tokenizer is not None:
        tok = source.tokenizer
    elif source.tokenizer_error:
        raise UserError(f"{source.tokenizer_error}; pass --tokenizer to use another")
    elif source.default_tokenizer:  # a 50257-token GPT-2 folder without tokenizer files
        tok = load_tokenizer_spec(source.default_tokenizer)
    else:
        return None
    if tok.vocab_size > source.config.vocab_size:
        raise UserError(
            f"tokenizer {tok.spec} has {tok.vocab_size} tokens but the model only {source.config.vocab_size}; "
            "pass the --tokenizer the model was trained with"
        )
    return tok


def _run_tokenizer(source: ModelSource, spec: str | None) -> "Tokenizer":
    tok = _source_tokenizer(source, spec)
    if tok is None:
        raise UserError("a run needs a tokenizer: pass --tokenizer (gpt2, gpt2:PATH, byte, bpe:PATH, or a run folder)")
    return tok


def _preset_of(config: GPTConfig) -> str:
    from gptbench.spec import PRESETS

    shape = ("n_layer", "n_head", "n_embd", "block_size")
    for name, preset in PRESETS.items():
        if all(getattr(preset.model, k) == getattr(config, k) for k in shape):
            return name
    return "custom"


def _to_run(source: ModelSource, name: str, dtype: str, force: bool, to: str, verify_on: str, device: str, store: "RunStore", tokenizer: str | None) -> ConvertResult:
    from gptbench.backends.weights import load_weights
    from gptbench.runstore import RunState, RunWriter, validate_run_name
    from gptbench.runstore.specfile import RunFacts, config_document
    from gptbench.spec import RunSpec, RuntimeSpec, TrainConfig
    from gptbench.tokenizers.registry import load_tokenizer

    if os.sep in name or (os.altsep and os.altsep in name):
        raise UserError(f"destination {name!r} is neither a run name nor a .safetensors file; give a run name or a path ending in .safetensors")
    run = store.run(validate_run_name(name))
    if run.path.exists() and not force:
        raise UserError(f"run {name!r} already exists in {store.root}; pass --force to overwrite it or choose another name")
    tok = _run_tokenizer(source, tokenizer)
    _writable(store.root / name)
    writer = RunWriter.stage(store.root, name)
    try:
        step, cfg, now = source.step or 0, source.config, time.time()
        writer.save_tokenizer(tok)
        ckpt = writer.save_checkpoint(step, cfg, source.tensors, None, None, val_loss=None, keep_last=1, dtype=dtype,
                                      converted_from=source.label)
        config, tensors = load_weights(ckpt.path)
        load_tokenizer(writer.path)  # the run's tokenizer reloads on its own
        diff, where, shape = verify_logits(source, config, tensors, dtype, verify_on, device)
        spec = RunSpec(preset=_preset_of(cfg), model=cfg, train=TrainConfig(max_iters=max(1, step)), data=None, tokenizer=tok.spec,
                       runtime=RuntimeSpec(backend=verify_on, device=device, dtype=dtype), name=name, command="convert")
        facts = RunFacts(created=now, backend=verify_on, device=where.rpartition(" on ")[2], compile=None, tokenizer_kind=tok.kind,
                         vocab_size=tok.vocab_size, fingerprint=tok.fingerprint(), data={"name": f"converted from {source.label}"},
                         extra={"converted_from": {"source": source.label, "kind": source.kind, "dtype": dtype}})
        writer.write_config(config_document(spec, facts))
        writer.set_status(RunState.FINISHED, pid=None, heartbeat=now, started=now, step=step, max_iters=max(1, step),
                          best_val_loss=None, tokens_per_sec=None, elapsed=0.0)
        writer.log(f"converted from {source.label} ({source.kind}) as {dtype}")
        size = ckpt.path.stat().st_size
        path = writer.commit(replace=force).path
    except BaseException:
        writer.discard()
        raise
    return ConvertResult(path, to, "run", dtype, diff, where, len(tensors), size, shape, step=source.step)


def describe_source(source: ModelSource) -> str:
    c = source.config
    variant = f"{c.norm}, {c.mlp}, {'bias' if c.bias else 'no bias'}, {'tied' if c.tie_embeddings else 'untied'} head"
    variant += f", {c.pos} positions" + (", qk-norm" if c.qk_norm else "") + (f", soft-cap {c.logit_softcap:g}" if c.logit_softcap else "")
    return (f"{source.label} ({source.kind}): {format_params(c.num_params())} parameters, "
            f"{c.n_layer} layers x {c.n_embd}, vocab {c.vocab_size}, context {c.block_size}, {variant}")
