"""Starting from pretrained weights: `--init-from` sources, lineage records and LoRA bases.

`--init-from SRC` takes, first match wins:
  a folder     a Hugging Face GPT-2 folder (config.json + safetensors, keys with or without
               `transformer.`), or a gptbench run folder;
  a file       a gptbench `.safetensors` weights file;
  RUN[:CK]     a run in the runs directory, at checkpoint CK (best | last | step-N; default best);
  a hub name   gpt2, gpt2-medium, gpt2-large, gpt2-xl or ORG/NAME[@REVISION], from the local
               Hugging Face cache (`gptbench.hfcache`), downloaded when that is possible.
The model shape comes from the source, and so does the tokenizer (a folder's tokenizer.json or
vocab.json + merges.txt, a run's own; GPT-2's for a 50257-token GPT-2 folder without one).

Every source is recorded as a reference: kind, label, path and the sha256 of its weight
files. A run keeps it in config.json (`init_from`, its lineage), and a LoRA checkpoint keeps
it as its `base`, because it stores only adapters: `load_reference` reloads the base from
the path and refuses, in one line, a base that is missing or whose bytes changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import Backend
    from gptbench.backends.lora import LoRAConfig
    from gptbench.runstore import RunStore
    from gptbench.tokenizers.base import Tokenizer

KINDS = ("hub", "hf", "weights", "run")
GPT2_VOCAB = 50257
# Model keys a fine-tuning run may set: dropout is a training choice, and a shorter
# context crops the position embeddings (nanoGPT's crop_block_size). Every other shape
# key must equal the source's.
FREE_KEYS = ("dropout",)
FLAG_OF = {"tie_embeddings": {True: "a tied head", False: "--untied"}, "bias": {True: "--bias", False: "--no-bias"}}
MAX_DEPTH = 8  # a LoRA base may itself be a LoRA checkpoint; never follow more than this


class BaseModelError(UserError):
    """The weights a run was initialised from are missing or changed."""


# ---- hashing ---------------------------------------------------------------------------------
def weight_files(path: Path) -> list[Path]:
    """The files whose bytes are the weights: a file itself, or an HF folder's safetensors."""
    if path.is_dir():
        from gptbench.backends.hf import _weight_files

        return _weight_files(path)
    return [path]


def weights_sha256(path: Path) -> str:
    """sha256 over the bytes of the weight files, in order (one file: its plain sha256)."""
    h = hashlib.sha256()
    for f in weight_files(path):
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 23):
                h.update(chunk)
    return h.hexdigest()


# ---- model weights, plain or LoRA --------------------------------------------------------------
@dataclass
class ModelWeights:
    """A model as stored: whole weights, or a frozen base plus LoRA adapters."""

    config: GPTConfig
    tensors: dict[str, np.ndarray]  # canonical; the base of a LoRA model
    lora: "LoRAConfig | None" = None
    adapters: dict[str, np.ndarray] | None = None
    base: dict[str, Any] | None = None  # the base's reference, for a LoRA model

    def merged(self) -> dict[str, np.ndarray]:
        """Whole-model weights: the base with the adapters folded in."""
        if self.lora is None or self.adapters is None:
            return self.tensors
        from gptbench.backends.lora import merge

        return merge(self.config, self.lora, self.tensors, self.adapters)

    def install(self, backend: "Backend") -> None:
        """Put this model into a freshly created backend (LoRA unmerged, adapters applied)."""
        backend.set_weights(self.tensors)
        if self.lora is not None:
            backend.apply_lora(self.lora)
            if self.adapters is not None:
                backend.set_adapters(self.adapters)


def load_checkpoint(path: Path, _depth: int = 0) -> ModelWeights:
    """A gptbench weights or LoRA adapter file, its base loaded (and hash-checked) for adapters."""
    from gptbench.backends.weights import is_adapter_file, load_adapters, load_weights, read_header

    _, meta, _ = read_header(path)
    if not is_adapter_file(meta):
        config, tensors = load_weights(path)
        return ModelWeights(config, {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})
    config, lora, base, adapters = load_adapters(path)
    base_model = load_reference(base, f"the LoRA checkpoint {path}", _depth + 1)
    return ModelWeights(config, fit_tensors(base_model.merged(), base_model.config, config, base.get("label", "base")), lora,
                        {k: np.asarray(v, dtype=np.float32) for k, v in adapters.items()}, base)


def load_reference(ref: Mapping[str, Any], owner: str, _depth: int = 0) -> ModelWeights:
    """The weights a reference names, after checking their sha256 (BaseModelError if the
    path is gone or the bytes changed)."""
    if _depth > MAX_DEPTH:
        raise BaseModelError(f"{owner}: its base models nest more than {MAX_DEPTH} deep; merge one of them with `gptbench convert`")
    path, label, kind = Path(str(ref.get("path"))), ref.get("label") or ref.get("spec") or "?", ref.get("kind")
    if not path.exists():
        raise BaseModelError(
            f"{owner} was built on {label}, whose weights are gone from {path}; restore them there "
            "(or re-create the source) to use it"
        )
    got = weights_sha256(path)
    if got != ref.get("sha256"):
        raise BaseModelError(
            f"{owner} was built on {label}, but {path} changed since (sha256 {str(ref.get('sha256'))[:12]}... is now {got[:12]}...); "
            "restore the original weights to use it"
        )
    if kind in ("hub", "hf"):
        from gptbench.backends.hf import load_hf_folder

        config, tensors, _ = load_hf_folder(path)
        return ModelWeights(config, tensors)
    return load_checkpoint(path, _depth)


# ---- fitting a source to the run's model -----------------------------------------------------------
def derive_config(source: GPTConfig, overrides: Mapping[str, Any], label: str) -> GPTConfig:
    """The run's model: the source's shape with `dropout` and a shorter `block_size` allowed;
    any other key that differs from the source is a UserError naming it."""
    changes: dict[str, Any] = {}
    conflicts = []
    for key, value in overrides.items():
        if value is None:
            continue
        if key in FREE_KEYS:
            changes[key] = value
        elif key == "block_size" and isinstance(value, int) and 0 < value <= source.block_size:
            changes[key] = value
        elif getattr(source, key, None) != value:
            have = getattr(source, key, None)
            if key in FLAG_OF:  # booleans: name the flag the user typed
                conflicts.append(f"{FLAG_OF[key][bool(value)]} (the source has {FLAG_OF[key][bool(have)]})")
                continue
            why = f"at most {have}" if key == "block_size" else f"{have!r}"
            conflicts.append(f"--{key.replace('_', '-')} {value!r} (the source has {why})")
    if conflicts:
        raise UserError(f"{', '.join(conflicts)} contradicts --init-from {label}: the model shape comes from the source; drop the flag")
    return source.replace(**changes)


def fit_tensors(tensors: Mapping[str, np.ndarray], source: GPTConfig, target: GPTConfig, label: str) -> dict[str, np.ndarray]:
    """Source weights for `target`: the same except position embeddings cropped to its context."""
    if source.replace(dropout=target.dropout, block_size=target.block_size) != target or target.block_size > source.block_size:
        raise BaseModelError(f"the weights of {label} no longer match the model built on them ({source} vs {target}); restore the original weights")
    out = dict(tensors)
    if target.block_size < source.block_size and "wpe.weight" in out:  # (rotary positions have no table)
        out["wpe.weight"] = np.ascontiguousarray(out["wpe.weight"][: target.block_size])
    return out


# ---- --init-from -------------------------------------------------------------------------------------
@dataclass
class InitSource:
    """A resolved `--init-from`: the model, its tokenizer (None: the source has none) and its
    reference (kind, label, path, sha256), which becomes the run's lineage."""

    spec: str
    kind: str  # hub | hf | weights | run
    label: str
    path: Path
    model: ModelWeights
    tokenizer: "Tokenizer | None"
    extra: dict[str, Any] = field(default_factory=dict)  # repo/revision, run/step
    default_tokenizer: str | None = None  # used when it has none and --tokenizer is not given
    _sha256: str | None = None

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.path)
        return self._sha256

    def reference(self) -> dict[str, Any]:
        """What config.json's `init_from` and a LoRA checkpoint's `base` record."""
        return {"spec": self.spec, "kind": self.kind, "label": self.label, "path": str(self.path.resolve()),
                "sha256": self.sha256, **self.extra}


def resolve_init_source(spec: str, store: "RunStore", progress: Callable[[str], None] | None = None) -> InitSource:
    """Resolve `--init-from SRC` (see the module docstring) and load its weights."""
    from gptbench.backends.hf import is_hf_folder
    from gptbench.hfcache import is_hub_name, resolve

    spec = (spec or "").strip()
    if not spec:
        raise UserError("--init-from needs a source: a Hugging Face GPT-2 folder or name (gpt2), a weights file, or RUN[:CHECKPOINT]")
    forced_hub = spec.startswith("hf:")
    name = spec[3:] if forced_hub else spec
    p = Path(name).expanduser()
    if not forced_hub and p.is_dir():
        if is_hf_folder(p):
            return _hf_source(spec, "hf", str(p), p, {})
        if (p / "config.json").is_file():
            from gptbench.runstore import Run

            return _run_source(spec, Run(p.resolve()), "best")
        raise UserError(f"--init-from {p} is a folder without a config.json; a Hugging Face GPT-2 model is config.json + model.safetensors")
    if not forced_hub and p.is_file():
        return _weights_source(spec, p)
    run_name, _, checkpoint = name.partition(":")
    if not forced_hub and run_name and (store.root / run_name / "config.json").is_file():
        return _run_source(spec, store.existing(run_name), checkpoint or "best")
    if forced_hub or is_hub_name(name):
        repo, commit, folder = resolve(name, progress)
        return _hf_source(spec, "hub", name.partition("@")[0], folder, {"repo": repo, "revision": commit})
    if p.suffix == ".safetensors" or "/" in name:
        raise UserError(f"--init-from {name}: no such file or folder")
    raise UserError(
        f"--init-from {spec!r} is not a folder, a weights file, a run in {store.root} or a Hugging Face model name "
        "(gpt2, gpt2-medium, gpt2-large, gpt2-xl, ORG/NAME)"
    )


def _hf_source(spec: str, kind: str, label: str, folder: Path, extra: dict[str, Any]) -> InitSource:
    from gptbench.backends.hf import load_hf_folder
    from gptbench.tokenizers.hf_files import load_hf_tokenizer

    config, tensors, _ = load_hf_folder(folder)
    tok = load_hf_tokenizer(folder)
    # a GPT-2 checkpoint saved without its tokenizer files: GPT-2's (loaded only if used)
    default = "gpt2" if tok is None and config.vocab_size == GPT2_VOCAB else None
    return InitSource(spec, kind, label, folder, ModelWeights(config, tensors), tok, extra, default)


def _run_source(spec: str, run: Any, checkpoint: str) -> InitSource:
    from gptbench.loading import load_run_tokenizer

    ck = run.checkpoint(checkpoint)
    model = load_checkpoint(ck.path)
    return InitSource(spec, "run", f"{run.name}@step-{ck.step}", ck.path, model, load_run_tokenizer(run),
                      {"run": run.name, "step": ck.step})


def _weights_source(spec: str, path: Path) -> InitSource:
    from gptbench.backends.hf import looks_like_hf_gpt2_tensors
    from gptbench.backends.weights import read_header

    header, meta, _ = read_header(path)
    if meta.get("format") != "gptbench" and looks_like_hf_gpt2_tensors(list(header)):
        raise UserError(f"{path} holds Hugging Face GPT-2 tensors but no config; pass --init-from the folder with its config.json instead")
    return InitSource(spec, "weights", str(path), path, load_checkpoint(path), None)


def choose_tokenizer(source: InitSource, spec: str | None) -> "Tokenizer":
    """The source's tokenizer; `--tokenizer` only where the source has none (or names the same)."""
    from gptbench.loading import load_tokenizer_spec

    if source.tokenizer is None:
        spec = spec or source.default_tokenizer
        if not spec:
            raise UserError(
                f"--init-from {source.label} has no tokenizer of its own; pass the --tokenizer it was trained with "
                "(gpt2, byte, bpe:PATH, or a run folder)"
            )
        tok = load_tokenizer_spec(spec)
    else:
        tok = source.tokenizer
        if spec and load_tokenizer_spec(spec) != tok:
            raise UserError(f"--tokenizer {spec} differs from the tokenizer of --init-from {source.label} ({tok.spec}); drop --tokenizer: it follows the source")
    if tok.vocab_size > source.config.vocab_size:
        raise UserError(f"tokenizer {tok.spec} has {tok.vocab_size} tokens but --init-from {source.label} only {source.config.vocab_size}; pass the tokenizer it was trained with")
    return tok
