"""Load a trained model and its tokenizer from a run or a weights file (sample, chat, TUI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptbench.backends.base import Backend
from gptbench.backends.memory import check_memory
from gptbench.backends.registry import backend_class, create_backend
from gptbench.backends.spec import format_params
from gptbench.backends.weights import read_config
from gptbench.errors import UserError
from gptbench.runstore import CorruptRunError, Run, RunStore

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
    batch_size: int = 1,
) -> LoadedModel:
    """The model and tokenizer of a run's checkpoint or of a weights file, on a backend.
    Refuses (one line) a model, plus a KV cache for `batch_size` rows, that cannot fit.
    A LoRA checkpoint is loaded unmerged: its base (hash-checked) plus its adapters."""
    from gptbench.finetune import load_checkpoint

    if (run is None) == (weights is None):
        raise UserError("give exactly one of --run NAME or --weights FILE.safetensors")
    if run is not None:
        r = store.existing(run)
        ck = r.checkpoint(checkpoint)
        path, source = ck.path, f"{r.name}@step-{ck.step}"
        tok = load_tokenizer_spec(tokenizer) if tokenizer else load_run_tokenizer(r)
    else:
        if not tokenizer:
            raise UserError("--weights needs --tokenizer (gpt2, byte, bpe:PATH, or a run folder / tokenizer.json)")
        path, tok, source = Path(weights), load_tokenizer_spec(tokenizer), str(weights)
    config = read_config(path)
    check_memory(config.inference_bytes(batch_size), backend_class(backend).available_memory(device),
                 f"generating {batch_size} sample{'s' if batch_size > 1 else ''} with this {format_params(config.num_params())}-parameter model",
                 "ask for fewer --num-samples" if batch_size > 1 else "use a machine with more memory")
    stored = load_checkpoint(Path(path))  # a LoRA checkpoint brings its base (hash-checked)
    config = stored.config
    if tok.vocab_size > config.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}; pick the tokenizer the model was trained with")
    be = create_backend(config, backend, device=device, dtype=dtype)
    stored.install(be)  # LoRA runs sample unmerged: base plus adapters, as they trained
    return LoadedModel(be, tok, source)


def load_run_tokenizer(run: Run) -> "Tokenizer":
    """A run's saved tokenizer, checked against the fingerprint its config recorded, so an
    edited tokenizer.json (a shifted vocabulary) is refused instead of decoding garbage."""
    from gptbench.tokenizers.registry import load_tokenizer

    tok = load_tokenizer(run.path)
    fingerprint = run.config()["tokenizer"].get("fingerprint")
    if fingerprint is not None and tok.fingerprint() != fingerprint:
        raise CorruptRunError(f"{run.tokenizer_path} differs from the tokenizer run {run.name!r} was trained with (edited or damaged); restore it from a backup")
    return tok
