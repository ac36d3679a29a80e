"""Fine-tuning: fitting a resolved `--init-from` source to the run it starts.

The source itself (a folder, a weights file, RUN[:CHECKPOINT] or a hub name), its weights
and its lineage reference are resolved in `gptbench.sources`; here the run's model is
derived from the source's shape (only `dropout` and a shorter `block_size` may differ:
nanoGPT's crop_block_size) and its tokenizer chosen (the source's own; `--tokenizer` only
where the source has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError
from gptbench.tokenizers.registry import load_tokenizer_spec

if TYPE_CHECKING:
    from gptbench.sources import ModelSource
    from gptbench.tokenizers.base import Tokenizer

# Model keys a fine-tuning run may set: dropout is a training choice, and a shorter
# context crops the position embeddings (nanoGPT's crop_block_size). Every other shape
# key must equal the source's.
FREE_KEYS = ("dropout",)
FLAG_OF = {"tie_embeddings": {True: "a tied head", False: "--untied"}, "bias": {True: "--bias", False: "--no-bias"}}


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


def choose_tokenizer(source: "ModelSource", spec: str | None) -> "Tokenizer":
    """The source's tokenizer; `--tokenizer` only where the source has none (or names the same)."""
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
