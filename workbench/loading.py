"""Load a trained model and its tokenizer from a run or a weights file (sample, chat, TUI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptbench.backends.base import Backend, create_backend
from gptbench.backends.weights import load_weights
from gptbench.errors import UserError
from gptbench.runstore import RunStore

if TYPE_CHECKING:
    from gptbench.tokenizers.base import Tokenizer


@dataclass
class LoadedModel:
    backend: Backend
    tokenizer: "Tokenizer"
    source: str  # e.g. "baby@step-2000" or a file path


def load_tokenizer_spec(spec: str) -> "Tokenizer":
    """A tokenizer from a spec (gpt2, byte, bpe:PATH...) or a run / tokenizer.json path."""
    from gptbench.tokenizers.registry import build_tokenizer, load_tokenizer

    p = Path(spec)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return load_tokenizer(p)
    if p.name == "tokenizer.json" and p.is_file():
        return load_tokenizer(p.parent)
    if spec.split(":")[0] == "char":
        raise UserError("a char tokenizer is built from its corpus; pass the run's folder or its tokenizer.json as --tokenizer")
    return build_tokenizer(spec)


def load_model(
    store: RunStore,
    *,
    run: str | None = None,
    checkpoint: str = "best",
    weights: str | None = None,
    tokenizer: str | None = None,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "float32",
) -> LoadedModel:
    from gptbench.tokenizers.registry import load_tokenizer

    if (run is None) == (weights is None):
        raise UserError("give exactly one of --run NAME or --weights FILE.safetensors")
    if run is not None:
        r = store.existing(run)
        ck = r.checkpoint(checkpoint)
        path, tok = ck.path, (load_tokenizer_spec(tokenizer) if tokenizer else load_tokenizer(r.path))
        source = f"{r.name}@step-{ck.step}"
    else:
        if not tokenizer:
            raise UserError("--weights needs --tokenizer (gpt2, byte, bpe:PATH, or a run folder / tokenizer.json)")
        path, tok, source = Path(weights), load_tokenizer_spec(tokenizer), str(weights)
    config, tensors = load_weights(path)
    if tok.vocab_size > config.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}; pick the tokenizer the model was trained with")
    be = create_backend(config, backend, device=device, dtype=dtype)
    be.set_weights(tensors)
    return LoadedModel(be, tok, source)
