"""`gptbench convert`: move weights between runs, gptbench files and Hugging Face GPT-2.

Sources (detected, or forced with `kind`):
  run      a run name in the runs directory (or its folder): its best/last/step-N checkpoint;
           a LoRA run's adapters are merged into its base
  weights  a gptbench `.safetensors` file (config in the header)
  hf       a Hugging Face GPT-2 folder (config.json with model_type gpt2 + model.safetensors)

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
Files are written by `backends/weights.py`, the one owner of the safetensors format.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig, format_params
from gptbench.backends.weights import FLOAT_DTYPES
from gptbench.errors import UserError
from gptbench.fsutil import atomic_dir, atomic_path, atomic_write_json

if TYPE_CHECKING:
    from gptbench.finetune import ModelWeights
    from gptbench.runstore import Run, RunStore
    from gptbench.tokenizers.base import Tokenizer

DTYPES = FLOAT_DTYPES
TARGETS = ("torch", "mlx", "hf", "mlx-lm")
SOURCE_KINDS = ("auto", "run", "weights", "hf")
# Largest allowed |logit difference| after a round trip, relative to max(1, max |logit|):
# float32 must reproduce the source; the half types only have to be close.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


@dataclass
class Source:
    kind: str  # run | weights | hf
    label: str  # what the user sees: "baby@step-2000", a path
    config: GPTConfig
    tensors: dict[str, np.ndarray]  # canonical, float32 (a LoRA model merged)
    step: int = 0
    run: "Run | None" = None
    stored: "ModelWeights | None" = None  # as stored: base + adapters for a LoRA model
    tokenizer: "Tokenizer | None" = None  # the source's own (a Hugging Face folder's files)
    tokenizer_error: str | None = None  # why a folder's tokenizer files could not be read


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

    def to_dict(self) -> dict:
        return {
            "dst": str(self.dst), "to": self.target, "layout": self.layout, "dtype": self.dtype,
            "max_logit_diff": self.max_diff, "verified_on": self.backend, "tensors": self.n_tensors,
            "bytes": self.size_bytes, "batch": list(self.batch_shape), "tokenizer": self.tokenizer, "notes": self.notes,
        }


# ---- sources --------------------------------------------------------------------------
def load_source(spec: str, store: "RunStore", *, kind: str = "auto", checkpoint: str = "best") -> Source:
    """Resolve SRC: an existing path first (HF folder, run folder, weights file), then a run name."""
    from gptbench.backends.hf import is_hf_folder

    if kind not in SOURCE_KINDS:
        raise UserError(f"unknown source kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
    p = Path(spec).expanduser()
    if kind == "hf" or (kind == "auto" and p.is_dir() and is_hf_folder(p)):
        return _hf_source(p)
    if kind in ("auto", "run") and p.is_dir() and (p / "config.json").is_file():
        from gptbench.runstore import Run

        return _run_source(Run(p), checkpoint)
    if kind in ("auto", "weights") and p.is_file():
        return _weights_source(p)
    if p.is_dir():
        raise UserError(f"{p} is a folder but neither a Hugging Face model (config.json with model_type) nor a gptbench run")
    if kind == "weights" or p.suffix == ".safetensors":
        raise UserError(f"weights file not found: {p}")
    if kind in ("auto", "run") and not p.exists() and os.sep not in spec:
        return _run_source(store.existing(spec), checkpoint)
    raise UserError(f"{spec!r} is not a run in {store.root}, a weights file or a Hugging Face folder")


def _hf_source(path: Path) -> Source:
    from gptbench.backends.hf import load_hf_folder
    from gptbench.tokenizers.hf_files import HFTokenizerError, load_hf_tokenizer

    if not path.is_dir():
        raise UserError(f"{path} is not a folder; a Hugging Face GPT-2 model is a folder with config.json + model.safetensors")
    config, tensors, _ = load_hf_folder(path)
    source = Source("hf", str(path), config, tensors)
    try:
        source.tokenizer = load_hf_tokenizer(path)
    except HFTokenizerError as exc:  # only an error if no --tokenizer replaces it
        source.tokenizer_error = str(exc)
    return source


def _run_source(run: "Run", checkpoint: str) -> Source:
    from gptbench.finetune import load_checkpoint

    ck = run.checkpoint(checkpoint)
    stored = load_checkpoint(ck.path)
    return Source("run", f"{run.name}@step-{ck.step}", stored.config, stored.merged(), step=ck.step, run=run, stored=stored)


def _weights_source(path: Path) -> Source:
    from gptbench.backends.hf import looks_like_hf_gpt2_tensors
    from gptbench.backends.weights import read_header
    from gptbench.finetune import load_checkpoint

    header, meta, _ = read_header(path)
    if meta.get("format") != "gptbench" and looks_like_hf_gpt2_tensors(list(header)):
        raise UserError(
            f"{path} holds Hugging Face GPT-2 tensors but no config; convert the folder that has "
            "its config.json + model.safetensors instead"
        )

    stored = load_checkpoint(path)
    step = meta.get("step", "0")
    return Source("weights", str(path), stored.config, stored.merged(), step=int(step) if step.isdigit() else 0, stored=stored)


# ---- verification ---------------------------------------------------------------------
def fixed_batch(config: GPTConfig, batch: int = 2, length: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, config.vocab_size, size=(batch, min(length, config.block_size)), dtype=np.int64)


def _verify(source: Source, config: GPTConfig, tensors: Mapping[str, np.ndarray], dtype: str, backend: str, device: str) -> tuple[float, str, tuple[int, int]]:
    """Max |logit difference| between the source and the reloaded output on one backend.

    One model instance computes both (source weights, then the output's), so verifying a
    large model costs one extra copy of it, not two."""
    from gptbench.backends.registry import create_backend

    if config != source.config:
        raise UserError(f"conversion changed the model config ({config} != {source.config}); this is a bug, nothing was written")
    idx = fixed_batch(config)
    be = create_backend(config, backend, device=device)
    if source.stored is not None and source.stored.lora is not None:
        source.stored.install(be)  # the reference is the unmerged model, so the merge is checked too
        ref = be.forward_logits(idx)
        be = create_backend(config, backend, device=device)
    else:
        be.set_weights(dict(source.tensors))
        ref = be.forward_logits(idx)
    be.set_weights({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})
    out = be.forward_logits(idx)
    where = be.describe()
    del be
    return _check_diff(ref, out, dtype, where, idx)


def _check_diff(ref: np.ndarray, out: np.ndarray, dtype: str, where: str, idx: np.ndarray, what: str = "reloaded") -> tuple[float, str, tuple[int, int]]:
    diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
    scale = max(1.0, float(np.max(np.abs(ref))))
    if not np.isfinite(diff) or diff > TOLERANCE[dtype] * scale:
        raise UserError(
            f"verification failed: {what} {dtype} output differs from the source by {diff:.3g} in the logits "
            f"(allowed {TOLERANCE[dtype] * scale:.3g}); nothing was written"
        )
    return diff, where, (int(idx.shape[0]), int(idx.shape[1]))


# ---- the conversion -------------------------------------------------------------------
def destination_kind(dst: str, to: str) -> str:
    """`hf` -> a folder; torch/mlx -> a weights file (`*.safetensors`) or a run name."""
    if to in ("hf", "mlx-lm"):
        return "hf"
    return "weights" if dst.endswith(".safetensors") else "run"


def convert(
    source: Source,
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


def _weights_meta(source: Source, dtype: str) -> dict[str, str]:
    return {"converted_from": source.label, "step": str(source.step)}


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


def _to_weights(source: Source, dst: Path, dtype: str, force: bool, to: str, verify_on: str, device: str) -> ConvertResult:
    from gptbench.backends.weights import load_weights, save_weights

    _check_target(dst, force, "file")
    _writable(dst)
    with atomic_path(dst) as staged:  # renamed onto dst only after verification passes
        size = save_weights(staged, source.config, source.tensors, dtype=dtype, **_weights_meta(source, dtype))
        config, tensors = load_weights(staged)
        diff, where, shape = _verify(source, config, tensors, dtype, verify_on, device)
    return ConvertResult(dst, to, "weights file", dtype, diff, where, len(tensors), size, shape)


def _to_hf(source: Source, dst: Path, dtype: str, force: bool, verify_on: str, device: str, tok: "Tokenizer | None", to: str) -> ConvertResult:
    from gptbench.backends.hf import config_to_hf, generation_config, load_hf_folder, to_hf
    from gptbench.backends.weights import save_tensors
    from gptbench.tokenizers.hf_files import write_hf_tokenizer

    _check_target(dst, force, "folder")
    _writable(dst)
    eos = tok.eot_id if tok is not None else None
    notes = []
    with atomic_dir(dst, replace=force) as stage:
        hf_tensors = to_hf(source.config, source.tensors)
        size = save_tensors(stage / "model.safetensors", hf_tensors, {"format": "pt"}, dtype=dtype)
        atomic_write_json(stage / "config.json", config_to_hf(source.config, dtype, eos))
        atomic_write_json(stage / "generation_config.json", generation_config(eos))
        if tok is not None:
            write_hf_tokenizer(tok, stage, source.config.block_size)
            notes += _verify_tokenizer(tok, stage)
        else:
            notes.append("no tokenizer files written (the source has none): transformers.pipeline and mlx_lm.load need them; pass --tokenizer")
        config, tensors, _ = load_hf_folder(stage)
        # The HF config has no dropout; compare like with like.
        config = config.replace(dropout=source.config.dropout)
        diff, where, shape = _verify(source, config, tensors, dtype, verify_on, device)
        if to == "mlx-lm":
            notes += _verify_mlx_lm(source, stage, dtype)
        elif not source.config.tie_embeddings:
            notes.append("untied LM head: transformers loads this folder, mlx_lm.load does not (its gpt2 ties the head)")
    return ConvertResult(dst, to, "Hugging Face folder", dtype, diff, where, len(hf_tensors), size, shape,
                         tok.spec if tok is not None else None, notes)


# A probe for exported tokenizers: ASCII, punctuation, contractions, accents, CJK, emoji,
# runs of spaces, tabs and newlines.
PROBE_TEXT = ("ROMEO: But soft, what light through yonder window breaks?\nIt's 2024; DON'T stop -- naïve café, "
              "東京 🤖\n\n    indented\ttab  trailing  \r\nend")


def _verify_tokenizer(tok: "Tokenizer", folder: Path) -> list[str]:
    """The written files must give gptbench's ids on a probe: read back by gptbench, and by
    Hugging Face `tokenizers` (what transformers and mlx-lm use) when it is installed."""
    from gptbench.tokenizers.hf_files import TOKENIZER_JSON, load_hf_tokenizer

    probe = getattr(tok, "chars", None) or PROBE_TEXT  # a char vocabulary: every character
    want = tok.encode(probe)
    back = load_hf_tokenizer(folder)
    if back is None or back.encode(probe) != want:
        raise UserError(f"verification failed: the exported tokenizer files do not reproduce {tok.spec}'s ids; this is a bug, nothing was written")
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        return ["tokenizer files checked by gptbench only (`tokenizers` is not installed)"]
    hf = HFTokenizer.from_file(str(folder / TOKENIZER_JSON))
    hf.encode_special_tokens = True  # like gptbench: special-token text is plain text
    ids = hf.encode(probe, add_special_tokens=False).ids
    if ids != want or hf.decode(ids, skip_special_tokens=False) != tok.decode(want):
        raise UserError(f"verification failed: Hugging Face tokenizers reads the exported {tok.spec} tokenizer differently; this is a bug, nothing was written")
    return []


def _verify_mlx_lm(source: Source, folder: Path, dtype: str) -> list[str]:
    """Load the folder with mlx_lm (when installed) and compare its logits with the source's."""
    try:
        import mlx.core as mx
        import mlx_lm
    except ImportError:
        return ["not loaded with mlx_lm here (not installed); the layout is mlx-lm's gpt2"]
    from gptbench.backends.registry import create_backend

    model, _ = mlx_lm.load(str(folder))
    idx = fixed_batch(source.config)
    out = np.array(model(mx.array(idx.astype(np.int32))).astype(mx.float32))
    be = create_backend(source.config, "mlx", device="cpu")
    if source.stored is not None and source.stored.lora is not None:
        source.stored.install(be)
    else:
        be.set_weights(dict(source.tensors))
    _check_diff(be.forward_logits(idx), out, dtype, "mlx on cpu", idx, what="mlx_lm.load's")
    return []


def _source_tokenizer(source: Source, spec: str | None) -> "Tokenizer | None":
    """`--tokenizer`, else the source's own (a run's, a Hugging Face folder's files, GPT-2's
    for a 50257-token folder without files); None when the source has none."""
    from gptbench.loading import load_run_tokenizer, load_tokenizer_spec

    if spec:
        tok = load_tokenizer_spec(spec)
    elif source.run is not None:
        tok = load_run_tokenizer(source.run)
    elif source.tokenizer is not None:
        tok = source.tokenizer
    elif source.tokenizer_error:
        raise UserError(f"{source.tokenizer_error}; pass --tokenizer to use another")
    elif source.kind == "hf" and source.config.vocab_size == 50257:
        tok = load_tokenizer_spec("gpt2")
    else:
        return None
    if tok.vocab_size > source.config.vocab_size:
        raise UserError(
            f"tokenizer {tok.spec} has {tok.vocab_size} tokens but the model only {source.config.vocab_size}; "
            "pass the --tokenizer the model was trained with"
        )
    return tok


def _run_tokenizer(source: Source, spec: str | None) -> "Tokenizer":
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


def _to_run(source: Source, name: str, dtype: str, force: bool, to: str, verify_on: str, device: str, store: "RunStore", tokenizer: str | None) -> ConvertResult:
    from gptbench.backends.weights import load_weights
    from gptbench.spec import TrainConfig
    from gptbench.runstore import RUN_FORMAT_VERSION, RunState, RunWriter, validate_run_name
    from gptbench.runstore.format import software_versions
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
        step, cfg, now = source.step, source.config, time.time()
        writer.save_tokenizer(tok)
        ckpt = writer.save_checkpoint(step, cfg, source.tensors, None, None, val_loss=None, keep_last=1, dtype=dtype,
                                      converted_from=source.label)
        config, tensors = load_weights(ckpt.path)
        load_tokenizer(writer.path)  # the run's tokenizer reloads on its own
        diff, where, shape = _verify(source, config, tensors, dtype, verify_on, device)
        writer.write_config({
            "format_version": RUN_FORMAT_VERSION,
            "name": name,
            "created": now,
            "preset": _preset_of(cfg),
            "model": cfg.to_dict(),
            "train": TrainConfig(max_iters=max(1, step)).to_dict(),
            "data": {"spec": None, "name": f"converted from {source.label}"},
            "tokenizer": {"spec": tok.spec, "kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()},
            "backend": verify_on,
            "device": where.rpartition(" on ")[2],
            "device_request": device,
            "dtype": dtype,
            "compile": None,
            "params": cfg.num_params(),
            "param_breakdown": cfg.param_breakdown(),
            "versions": software_versions(),
            "command": "convert",
            "converted_from": {"source": source.label, "kind": source.kind, "dtype": dtype},
        })
        writer.set_status(RunState.FINISHED, pid=None, heartbeat=now, started=now, step=step, max_iters=max(1, step),
                          best_val_loss=None, tokens_per_sec=None, elapsed=0.0)
        writer.log(f"converted from {source.label} ({source.kind}) as {dtype}")
        size = ckpt.path.stat().st_size
        path = writer.commit(replace=force).path
    except BaseException:
        writer.discard()
        raise
    return ConvertResult(path, to, "run", dtype, diff, where, len(tensors), size, shape)


def describe_source(source: Source) -> str:
    c = source.config
    variant = f"{c.norm}, {c.mlp}, {'bias' if c.bias else 'no bias'}, {'tied' if c.tie_embeddings else 'untied'} head"
    variant += f", {c.pos} positions" + (", qk-norm" if c.qk_norm else "") + (f", soft-cap {c.logit_softcap:g}" if c.logit_softcap else "")
    return (f"{source.label} ({source.kind}): {format_params(c.num_params())} parameters, "
            f"{c.n_layer} layers x {c.n_embd}, vocab {c.vocab_size}, context {c.block_size}, {variant}")
