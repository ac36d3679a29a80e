"""Model sources: one resolution from what a user names to a model, its tokenizer and lineage.

`convert`, `--init-from`, `sample`, `chat` and the TUI's chat picker all start here, so a
source means the same thing, and is refused in the same words, everywhere. A source is a
run (name, folder, or `RUN:CHECKPOINT` with best | last | step-N), a gptbench `.safetensors`
weights file (a LoRA adapter file brings its base), a Hugging Face GPT-2 folder, or a hub
name (gpt2 ... gpt2-xl, ORG/NAME[@REV], `hf:NAME`; from the local cache or downloaded). It
resolves to one `ModelSource`: config, weights as stored (`ModelWeights`: whole, or a base
plus LoRA adapters), tokenizer when known, label, kind, checkpoint step, and the reference
(kind, label, path, sha256) a fine-tuned run keeps as lineage and a LoRA checkpoint as its
`base`; `load_reference` refuses a base that is gone or changed.

A run's checkpoint is chosen in one place (`choose_checkpoint`) so no reader falls back to
an older one in silence: `last`/`best` take the newest (best) intact checkpoint and carry one
line naming the damaged file, why, and the step used instead (`strict` refuses instead);
an explicit damaged `step-N` is refused naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError
from gptbench.modelweights import ModelWeights, load_checkpoint, weights_sha256
from gptbench.runstore import CheckpointInfo, CorruptRunError, Run

if TYPE_CHECKING:
    from gptbench.runstore import RunStore
    from gptbench.tokenizers.base import Tokenizer

CONVERT_KINDS = ("auto", "run", "weights", "hf")  # what `gptbench convert --from` may force
GPT2_VOCAB = 50257
STEP_RE = re.compile(r"step-(\d+)")


# ---- tokenizers ---------------------------------------------------------------------------------
def load_run_tokenizer(run: Run) -> "Tokenizer":
    """A run's saved tokenizer, checked against the fingerprint its config recorded, so an
    edited tokenizer.json (a shifted vocabulary) is refused instead of decoding garbage."""
    from gptbench.runstore.specfile import facts_from_config
    from gptbench.tokenizers.registry import load_tokenizer

    tok = load_tokenizer(run.path)
    fingerprint = facts_from_config(run.config(), str(run.config_path)).fingerprint
    if fingerprint and tok.fingerprint() != fingerprint:
        raise CorruptRunError(f"{run.tokenizer_path} differs from the tokenizer run {run.name!r} was trained with (edited or damaged); restore it from a backup")
    return tok


# ---- a run's checkpoint -------------------------------------------------------------------------
@dataclass(frozen=True)
class DamagedCheckpoint:
    """A weights file named like a checkpoint that cannot be read, and why (one clause)."""

    step: int
    path: Path
    reason: str  # what is wrong, the file named in it

    @classmethod
    def found_in(cls, run: Run) -> list["DamagedCheckpoint"]:
        """The run's damaged checkpoints, oldest first (`Run.damaged_checkpoints`)."""
        out = []
        for step, path, why in run.damaged_checkpoints():
            why = why.split("; ")[0]  # the fact, without the file reader's advice
            out.append(cls(step, path, why if str(path) in why else f"{path}: {why}"))
        return out


@dataclass(frozen=True)
class ChosenCheckpoint:
    """The checkpoint a reader gets, and the one line to show when damage changed it."""

    checkpoint: CheckpointInfo
    notice: str | None = None  # which file is damaged, why, and which step is used instead


def choose_checkpoint(run: Run, which: str = "best", *, strict: bool = False) -> ChosenCheckpoint:
    """`last`, `best` or `step-N` of `run`, never skipping a damaged file in silence.

    `last`/`best` take the newest (best) intact checkpoint; when a damaged file may hold a
    newer (or better) one the result carries a notice naming it, or, with `strict`, it is a
    UserError. A damaged explicit `step-N` is refused naming the file and the reason."""
    damaged = DamagedCheckpoint.found_in(run)
    step = STEP_RE.fullmatch(which)
    hit = [d for d in damaged if step and d.step == int(step.group(1))]
    if hit:
        intact = ", ".join(f"step-{c.step}" for c in run.checkpoints()) or "none"
        raise UserError(f"{hit[0].reason}; checkpoint {which} of run {run.name!r} cannot be used (intact checkpoints: {intact})")
    if which in ("last", "best") and damaged and not run.checkpoints():
        raise UserError(f"{damaged[-1].reason}; run {run.name!r} has no intact checkpoint; resume it to train it (gptbench train --no-ui --resume {run.name})")
    chosen = run.checkpoint(which)
    passed = [d for d in damaged if which == "best" or (which == "last" and d.step > chosen.step)]
    if not passed:
        return ChosenCheckpoint(chosen)
    more = f" (and {len(passed) - 1} more damaged)" if len(passed) > 1 else ""
    if strict:
        raise UserError(f"{passed[-1].reason}{more}; --strict refuses the fallback to step-{chosen.step} for checkpoint "
                        f"{which!r} of run {run.name!r}; drop --strict to use it, or remove the damaged file")
    kind = "newest" if which == "last" else "best"
    return ChosenCheckpoint(chosen, f"{passed[-1].reason}{more}; using step-{chosen.step}, the {kind} intact checkpoint, "
                                    f"for {which!r} (--strict refuses instead)")


# ---- the resolved source ------------------------------------------------------------------------
@dataclass
class ModelSource:
    """A resolved model source. The weights load on first use of `model` (so a reader can
    check the config, e.g. against memory, first); `reference()` is the lineage record."""

    spec: str  # as the user gave it
    kind: str  # hub | hf | weights | run
    label: str  # what the user sees: "baby@step-2000", a path, "gpt2"
    path: Path  # the weights file, or the Hugging Face folder
    tokenizer: "Tokenizer | None" = None  # the source's own, when known
    tokenizer_error: str | None = None  # why a folder's tokenizer files could not be read
    default_tokenizer: str | None = None  # for a source without one: GPT-2's for a 50257-token folder
    step: int | None = None  # the checkpoint's step (a run's, or a weights file's header)
    run: Run | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # repo/revision, run/step
    notice: str | None = None  # one line the reader should show (a damaged checkpoint passed over)
    _model: ModelWeights | None = None
    _tensors: dict[str, np.ndarray] | None = None
    _sha256: str | None = None

    @property
    def model(self) -> ModelWeights:
        if self._model is None:
            self._model = load_checkpoint(self.path)  # a LoRA checkpoint brings its base (hash-checked)
        return self._model

    @property
    def config(self) -> GPTConfig:
        if self._model is None and self.kind in ("run", "weights"):
            from gptbench.backends.weights import read_config

            return read_config(self.path)
        return self.model.config

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        """Whole-model weights (a LoRA model merged), computed once."""
        if self._tensors is None:
            self._tensors = self.model.merged()
        return self._tensors

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.path)
        return self._sha256

    def reference(self) -> dict[str, Any]:
        """What config.json's `init_from` and a LoRA checkpoint's `base` record."""
        return {"spec": self.spec, "kind": self.kind, "label": self.label, "path": str(self.path.resolve()),
                "sha256": self.sha256, **self.extra}


def open_run(run: Run, checkpoint: str = "best", *, spec: str | None = None, strict: bool = False) -> ModelSource:
    """A run's checkpoint (see `choose_checkpoint`), weights not yet loaded."""
    chosen = choose_checkpoint(run, checkpoint, strict=strict)
    ck = chosen.checkpoint
    return ModelSource(spec or run.name, "run", f"{run.name}@step-{ck.step}", ck.path, step=ck.step, run=run,
                       extra={"run": run.name, "step": ck.step}, notice=chosen.notice)


def open_weights_file(spec: str, path: Path, hf_fix: str | None = None) -> ModelSource:
    """A gptbench weights (or LoRA adapter) file; with `hf_fix`, bare Hugging Face tensors
    are refused with that advice instead of "not a gptbench weights file"."""
    from gptbench.backends.weights import read_header

    header, meta, _ = read_header(path)
    if hf_fix and meta.get("format") != "gptbench":
        from gptbench.backends.hf import looks_like_hf_gpt2_tensors

        if looks_like_hf_gpt2_tensors(list(header)):
            raise UserError(f"{path} holds Hugging Face GPT-2 tensors but no config; {hf_fix}")
    step = meta.get("step", "")
    return ModelSource(spec, "weights", str(path), path, step=int(step) if step.isdigit() else None)


def open_hf_folder(spec: str, folder: Path, *, kind: str = "hf", label: str | None = None,
                   extra: dict[str, Any] | None = None, defer_tokenizer_error: bool = False) -> ModelSource:
    """A Hugging Face GPT-2 folder, loaded, with its tokenizer files when it has them (GPT-2's
    by default for a 50257-token model without them). A tokenizer gptbench cannot reproduce
    is an error, or with `defer_tokenizer_error` a note for when no other is given."""
    from gptbench.backends.hf import load_hf_folder
    from gptbench.tokenizers.hf_files import HFTokenizerError, load_hf_tokenizer

    config, tensors, _ = load_hf_folder(folder)
    source = ModelSource(spec, kind, label or str(folder), folder, extra=dict(extra or {}), _model=ModelWeights(config, tensors))
    try:
        source.tokenizer = load_hf_tokenizer(folder)
    except HFTokenizerError as exc:
        if not defer_tokenizer_error:
            raise
        source.tokenizer_error = str(exc)
    if source.tokenizer is None and source.tokenizer_error is None and config.vocab_size == GPT2_VOCAB:
        source.default_tokenizer = "gpt2"  # a GPT-2 checkpoint saved without its tokenizer files
    return source


def open_hub(spec: str, name: str, progress: Callable[[str], None] | None = None) -> ModelSource:
    """A hub name, from the local Hugging Face cache or downloaded (`gptbench.hfcache`)."""
    from gptbench.hfcache import resolve

    repo, commit, folder = resolve(name, progress)
    return open_hf_folder(spec, folder, kind="hub", label=name.partition("@")[0], extra={"repo": repo, "revision": commit})


# ---- the grammars of the commands that name sources -----------------------------------------------
def resolve_init_source(spec: str, store: "RunStore", progress: Callable[[str], None] | None = None) -> ModelSource:
    """`--init-from SRC`, first match wins: a folder (Hugging Face, else a run), a weights
    file, RUN[:CHECKPOINT] in the store (default best), a hub name. Weights and the run's
    tokenizer are loaded here, so a bad source fails before anything is written; a damaged
    checkpoint passed over is reported through `progress` (else stderr)."""
    from gptbench.backends.hf import is_hf_folder
    from gptbench.hfcache import is_hub_name

    spec = (spec or "").strip()
    if not spec:
        raise UserError("--init-from needs a source: a Hugging Face GPT-2 folder or name (gpt2), a weights file, or RUN[:CHECKPOINT]")
    forced_hub = spec.startswith("hf:")
    name = spec[3:] if forced_hub else spec
    p = Path(name).expanduser()
    run_name, _, checkpoint = name.partition(":")
    if not forced_hub and p.is_dir():
        if is_hf_folder(p):
            return open_hf_folder(spec, p, label=str(p))
        if not (p / "config.json").is_file():
            raise UserError(f"--init-from {p} is a folder without a config.json; a Hugging Face GPT-2 model is config.json + model.safetensors")
        source = open_run(Run(p.resolve()), "best", spec=spec)
    elif not forced_hub and p.is_file():
        source = open_weights_file(spec, p, "pass --init-from the folder with its config.json instead")
    elif not forced_hub and run_name and (store.root / run_name / "config.json").is_file():
        source = open_run(store.existing(run_name), checkpoint or "best", spec=spec)
    elif forced_hub or is_hub_name(name):
        return open_hub(spec, name, progress)
    elif p.suffix == ".safetensors" or "/" in name:
        raise UserError(f"--init-from {name}: no such file or folder")
    else:
        raise UserError(
            f"--init-from {spec!r} is not a folder, a weights file, a run in {store.root} or a Hugging Face model name "
            "(gpt2, gpt2-medium, gpt2-large, gpt2-xl, ORG/NAME)"
        )
    source.model  # noqa: B018 - load (and check) the weights now, before a run is created
    if source.run is not None:
        source.tokenizer = load_run_tokenizer(source.run)
    if source.notice:
        (progress or _to_stderr)(source.notice)
    return source


def resolve_convert_source(spec: str, store: "RunStore", *, kind: str = "auto", checkpoint: str = "best", strict: bool = False) -> ModelSource:
    """`gptbench convert SRC`: an existing path first (HF folder, run folder, weights file),
    then a run name; `kind` (auto | run | weights | hf) forces one reading. Weights load here."""
    from gptbench.backends.hf import is_hf_folder

    if kind not in CONVERT_KINDS:
        raise UserError(f"unknown source kind {kind!r}; choose one of {', '.join(CONVERT_KINDS)}")
    p = Path(spec).expanduser()
    if kind == "hf" or (kind == "auto" and p.is_dir() and is_hf_folder(p)):
        if not p.is_dir():
            raise UserError(f"{p} is not a folder; a Hugging Face GPT-2 model is a folder with config.json + model.safetensors")
        return open_hf_folder(spec, p, defer_tokenizer_error=True)
    if kind in ("auto", "run") and p.is_dir() and (p / "config.json").is_file():
        source = open_run(Run(p), checkpoint, spec=spec, strict=strict)
    elif kind in ("auto", "weights") and p.is_file():
        source = open_weights_file(spec, p, "convert the folder that has its config.json + model.safetensors instead")
    elif p.is_dir():
        raise UserError(f"{p} is a folder but neither a Hugging Face model (config.json with model_type) nor a gptbench run")
    elif kind == "weights" or p.suffix == ".safetensors":
        raise UserError(f"weights file not found: {p}")
    elif kind in ("auto", "run") and not p.exists() and os.sep not in spec:
        source = open_run(store.existing(spec), checkpoint, spec=spec, strict=strict)
    else:
        raise UserError(f"{spec!r} is not a run in {store.root}, a weights file or a Hugging Face folder")
    source.model  # noqa: B018 - load (and check) the weights before anything is written
    return source


def _to_stderr(line: str) -> None:
    import sys

    print(f"gptbench: warning: {line}", file=sys.stderr, flush=True)
