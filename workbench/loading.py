"""Put a model source on a backend for generation (sample, chat, the TUI's chat pane).

What a source is, which checkpoint of a run it means and what damage was passed over is
decided in `gptbench.sources`; here the model is checked against memory, built on a
backend and paired with its tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptbench.backends.base import Backend
from gptbench.backends.memory import check_memory
from gptbench.backends.registry import backend_class, create_backend
from gptbench.backends.spec import format_params
from gptbench.errors import UserError
from gptbench.runstore import RunStore
from gptbench.sources import load_run_tokenizer, open_run, open_weights_file
from gptbench.tokenizers.registry import load_tokenizer_spec

if TYPE_CHECKING:
    from gptbench.tokenizers.base import Tokenizer


@dataclass
class LoadedModel:
    backend: Backend
    tokenizer: "Tokenizer"
    source: str  # e.g. "baby@step-2000" or a file path
    notice: str | None = None  # a damaged checkpoint passed over (sources.choose_checkpoint), to show the user


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
    strict: bool = False,
) -> LoadedModel:
    """The model and tokenizer of a run's checkpoint or of a weights file, on a backend.
    Refuses (one line) a model, plus a KV cache for `batch_size` rows, that cannot fit.
    A LoRA checkpoint is loaded unmerged: its base (hash-checked) plus its adapters.
    `strict` refuses a run whose newest (best) checkpoint is damaged instead of using an
    older one."""
    if (run is None) == (weights is None):
        raise UserError("give exactly one of --run NAME or --weights FILE.safetensors")
    if run is not None:
        source = open_run(store.existing(run), checkpoint, strict=strict)
        tok = load_tokenizer_spec(tokenizer) if tokenizer else load_run_tokenizer(source.run)
        shown = f"{source.run.name}@step-{source.step}"
    else:
        if not tokenizer:
            raise UserError("--weights needs --tokenizer (gpt2, byte, bpe:PATH, or a run folder / tokenizer.json)")
        tok = load_tokenizer_spec(tokenizer)
        source, shown = open_weights_file(str(weights), Path(weights)), str(weights)
    config = source.config
    check_memory(config.inference_bytes(batch_size), backend_class(backend).available_memory(device),
                 f"generating {batch_size} sample{'s' if batch_size > 1 else ''} with this {format_params(config.num_params())}-parameter model",
                 "ask for fewer --num-samples" if batch_size > 1 else "use a machine with more memory")
    stored = source.model  # a LoRA checkpoint brings its base (hash-checked)
    config = stored.config
    if tok.vocab_size > config.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}; pick the tokenizer the model was trained with")
    be = create_backend(config, backend, device=device, dtype=dtype)
    stored.install(be)  # LoRA runs sample unmerged: base plus adapters, as they trained
    return LoadedModel(be, tok, shown, source.notice)


def load_source(store: RunStore, spec: str, *, tokenizer: str | None = None, backend: str = "auto",
                device: str = "auto", flag: str = "--model") -> LoadedModel:
    """Any model source (`sources.resolve_init_source`'s grammar: a Hugging Face folder or
    hub name, a run folder, a weights file, RUN[:CHECKPOINT]) with its tokenizer, on a
    backend; errors name `flag`."""
    from gptbench.sources import resolve_init_source

    try:
        source = resolve_init_source(spec, store)
        tok = load_tokenizer_spec(tokenizer) if tokenizer else source.tokenizer
        if tok is None and source.default_tokenizer:
            tok = load_tokenizer_spec(source.default_tokenizer)
    except UserError as exc:
        raise UserError(str(exc).replace("--init-from", flag)) from None
    if tok is None:
        raise UserError(f"{flag} {spec} has no tokenizer of its own; add --tokenizer (gpt2, byte, bpe:PATH, or a run folder)")
    config = source.model.config
    if tok.vocab_size > config.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}; pick the tokenizer the model was trained with")
    be = create_backend(config, backend, device=device)
    source.model.install(be)
    return LoadedModel(be, tok, source.label, source.notice)
