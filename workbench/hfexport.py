"""Writing a Hugging Face GPT-2 folder (`convert --to hf|mlx-lm`) and checking it as the
tools that load it would: the weights by their logits, the tokenizer files by the ids
they give on a probe text (with Hugging Face `tokenizers` when installed), and for mlx-lm
by loading the folder with `mlx_lm` itself when it is installed.

The folder is staged beside its destination and renamed into place only after every
check passed; the caller has already refused an existing or unwritable destination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptbench.errors import UserError
from gptbench.fsutil import atomic_dir, atomic_write_json
from gptbench.roundtrip import check_logits, fixed_batch, install_source, verify_logits

if TYPE_CHECKING:
    from gptbench.sources import ModelSource
    from gptbench.tokenizers.base import Tokenizer

# A probe for exported tokenizers: ASCII, punctuation, contractions, accents, CJK, emoji,
# runs of spaces, tabs and newlines.
PROBE_TEXT = ("ROMEO: But soft, what light through yonder window breaks?\nIt's 2024; DON'T stop -- naïve café, "
              "東京 🤖\n\n    indented\ttab  trailing  \r\nend")


@dataclass
class HFFolder:
    """What was written and how it checked out."""

    max_diff: float
    verified_on: str
    batch_shape: tuple[int, int]
    n_tensors: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def export_metadata(source: "ModelSource") -> dict[str, str]:
    """Where an export came from and at which step (a weights file's header metadata, a
    Hugging Face folder's config.json `gptbench` key), so an export says which checkpoint
    it is: a damaged newest one may have been passed over."""
    return {"converted_from": source.label, "step": str(source.step or 0)}


def write_hf_folder(source: "ModelSource", dst: Path, dtype: str, replace: bool, verify_on: str, device: str,
                    tok: "Tokenizer | None", to: str) -> HFFolder:
    """Stage, check and rename into place a folder in the hub's GPT-2 layout."""
    from gptbench.backends.hf import config_to_hf, generation_config, load_hf_folder, to_hf
    from gptbench.backends.weights import save_tensors
    from gptbench.tokenizers.hf_files import write_hf_tokenizer

    eos = getattr(tok, "end_id", None) or (tok.eot_id if tok is not None else None)  # a chat run's answers end at <|end|>
    notes = []
    with atomic_dir(dst, replace=replace) as stage:
        hf_tensors = to_hf(source.config, source.tensors)
        size = save_tensors(stage / "model.safetensors", hf_tensors, {"format": "pt"}, dtype=dtype)  # the hub's own header
        # the hub's GPT2Config keys, plus where the export came from (other tools ignore the extra key)
        atomic_write_json(stage / "config.json", {**config_to_hf(source.config, dtype, eos), "gptbench": export_metadata(source)})
        atomic_write_json(stage / "generation_config.json", generation_config(eos))
        if tok is not None:
            write_hf_tokenizer(tok, stage, source.config.block_size)
            notes += verify_tokenizer_files(tok, stage)
        else:
            notes.append("no tokenizer files written (the source has none): transformers.pipeline and mlx_lm.load need them; pass --tokenizer")
        config, tensors, _ = load_hf_folder(stage)
        # The HF config has no dropout; compare like with like.
        config = config.replace(dropout=source.config.dropout)
        diff, where, shape = verify_logits(source, config, tensors, dtype, verify_on, device)
        if to == "mlx-lm":
            notes += verify_mlx_lm(source, stage, dtype)
        elif not source.config.tie_embeddings:
            notes.append("untied LM head: transformers loads this folder, mlx_lm.load does not (its gpt2 ties the head)")
    return HFFolder(diff, where, shape, len(hf_tensors), size, notes)


def verify_tokenizer_files(tok: "Tokenizer", folder: Path) -> list[str]:
    """The written files must give gptbench's ids on a probe: read back by gptbench, and by
    Hugging Face `tokenizers` (what transformers and mlx-lm use) when it is installed."""
    from gptbench.tokenizers.hf_files import TOKENIZER_JSON, load_hf_tokenizer

    probe = getattr(getattr(tok, "base", tok), "chars", None) or PROBE_TEXT  # a char vocabulary: every character
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


def verify_mlx_lm(source: "ModelSource", folder: Path, dtype: str) -> list[str]:
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
    install_source(source, be)
    check_logits(be.forward_logits(idx), out, dtype, "mlx on cpu", idx, what="mlx_lm.load's")
    return []
