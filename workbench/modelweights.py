"""Model weights as stored: whole, or a frozen base plus LoRA adapters, and the lineage check.

A LoRA checkpoint stores only its adapters and a reference to its base (kind, label, path,
sha256); `load_reference` refuses a base that is gone or changed, so an adapter is never
applied to other weights than those it was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import Backend
    from gptbench.backends.lora import LoRAConfig

MAX_DEPTH = 8  # a LoRA base may itself be a LoRA checkpoint; never follow more than this


class BaseModelError(UserError):
    """The weights a run was initialised from are missing or changed."""


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


def fit_tensors(tensors: Mapping[str, np.ndarray], source: GPTConfig, target: GPTConfig, label: str) -> dict[str, np.ndarray]:
    """Source weights for `target`: the same except position embeddings cropped to its
    context (a fine-tuned run may train on a shorter one; nanoGPT's crop_block_size) and,
    for a chat run, the vocabulary grown by its turn tokens (`gptbench.chat.vocab`)."""
    if (source.replace(dropout=target.dropout, block_size=target.block_size, vocab_size=target.vocab_size) != target
            or target.block_size > source.block_size or target.vocab_size < source.vocab_size):
        raise BaseModelError(f"the weights of {label} no longer match the model built on them ({source} vs {target}); restore the original weights")
    out = dict(tensors)
    if target.vocab_size > source.vocab_size:
        from gptbench.chat.vocab import grow_vocab

        out = grow_vocab(out, target.vocab_size)
    if target.block_size < source.block_size and "wpe.weight" in out:  # (rotary positions have no table)
        out["wpe.weight"] = np.ascontiguousarray(out["wpe.weight"][: target.block_size])
    return out


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
