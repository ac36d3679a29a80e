"""Corpora in, token ids out: `prepare_data` runs the pipeline, `get_batch` samples it.

    --data spec ──sources/hub──> Corpus ──cache──> token ids (memmap) ──batches──> (x, y)

One module per step: `sources` (the `--data` grammar and local text), `hub` (record files
and Hugging Face datasets through `datasets`), `cache` (tokenize once, reuse), `batches`
(splits and random windows). Documents are separated by the tokenizer's `<|endoftext|>`
when it has one, else by a blank line. Validation and length errors raise `UserError`
before anything is committed to the cache.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gptbench.data.batches import PreparedData, check_split, get_batch, skip_batch, split_sizes, token_dtype
from gptbench.data.cache import CacheEntry
from gptbench.data.sources import DATA_FORMS, SPEC_HELP, Corpus, load_corpus
from gptbench.errors import UserError
from gptbench.paths import default_cache_dir
from gptbench.tokenizers.base import Tokenizer
from gptbench.tokenizers.pieces import split_text
from gptbench.tokenizers.registry import TokenizerSpec, build_tokenizer

__all__ = [
    "DATA_FORMS",
    "SPEC_HELP",
    "Corpus",
    "PreparedData",
    "get_batch",
    "skip_batch",
    "load_corpus",
    "prepare_data",
    "token_dtype",
]


def prepare_data(
    data_spec: str | None,
    tokenizer_spec: str = "char",
    *,
    block_size: int,
    val_fraction: float = 0.1,
    tokenizer: Tokenizer | None = None,
    cache_dir: Path | None = None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    num_proc: int = 1,
    progress: Callable[[str], None] | None = None,
) -> PreparedData:
    """Tokenize `data_spec` (or reuse the cached ids) and split it: train = head, val = tail.

    `tokenizer` (a resumed run's) is used instead of building one from `tokenizer_spec`.
    Raises UserError for a bad spec, an unreadable/empty/binary corpus, or a split with
    fewer than `block_size + 1` tokens.
    """
    say = progress or (lambda _msg: None)
    block_size = _positive_int("--block-size", block_size)
    max_docs = None if max_docs is None else _positive_int("--max-docs", max_docs)
    max_tokens = None if max_tokens is None else _positive_int("--max-tokens", max_tokens)
    if not 0.0 < float(val_fraction) < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    num_proc = max(1, int(num_proc or 1))
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    # What the tokenizer is, before building it (building char/bpe:N reads the corpus);
    # a bad tokenizer spec fails here, before any corpus is read or downloaded.
    spec = TokenizerSpec.parse(tokenizer_spec) if tokenizer is None else None
    built: Tokenizer | None = tokenizer
    if tokenizer is not None:
        tok_key, reuse_stored = "fp:" + tokenizer.fingerprint(), False
    else:
        tok_key, reuse_stored, built = _tokenizer_key(spec)

    corpus = load_corpus(data_spec, cache_dir=cache_root, max_docs=max_docs, progress=say)

    entry = CacheEntry(cache_root, corpus, tok_key, max_docs, max_tokens)
    # A resumed run's tokenizer usually is the one its spec derives from this corpus:
    # look in that entry first (the fingerprint must match exactly), then in its own.
    candidates = ([CacheEntry(cache_root, corpus, tokenizer.spec, max_docs, max_tokens)] if tokenizer is not None else []) + [entry]
    for candidate in candidates:
        hit = candidate.load(built, reuse_stored)
        if hit is not None:
            tokens, tok, index = hit
            say(f"reusing cached tokens {candidate.dir}")
            return _split(tokens, tok, index, candidate, block_size, val_fraction, cached=True)

    if built is None:
        built = _build_tokenizer(spec, corpus, say)
    tokens, index = entry.build(built, block_size, val_fraction, num_proc, say)
    return _split(tokens, built, index, entry, block_size, val_fraction, cached=False)


def _positive_int(label: str, value: Any) -> int:
    try:
        n = operator.index(value)  # int or numpy integer, not float or str
    except TypeError:
        n = 0
    if n < 1:
        raise UserError(f"{label} must be a positive integer, got {value!r}")
    return n


def _tokenizer_key(spec: TokenizerSpec) -> tuple[str, bool, Tokenizer | None]:
    """(cache key part, may reuse the tokenizer stored in the entry, tokenizer if built now).

    char and bpe:N depend only on the corpus (part of the key); byte and gpt2 are fixed.
    Those reuse the stored tokenizer. bpe:PATH is built now: its file may have changed.
    """
    if spec.kind in ("char", "byte"):
        return spec.kind, True, None
    if spec.kind == "gpt2":  # gpt2:PATH is checked now (cheap, local); plain gpt2 may need the network
        return "gpt2", True, (build_tokenizer(spec) if spec.path is not None else None)
    if spec.size is not None:
        return f"bpe:{spec.size}", True, None
    assert spec.path is not None
    return f"path:{spec.path.resolve()}", False, build_tokenizer(spec)


def _build_tokenizer(spec: TokenizerSpec, corpus: Corpus, say: Callable[[str], None]) -> Tokenizer:
    if spec.size is not None:
        from gptbench.tokenizers.bpe import train_bpe

        t0 = time.perf_counter()
        tok = train_bpe((p for d in corpus.reread() for p in split_text(d, 1 << 16)), spec.size, progress=say)
        say(f"trained {tok.spec} in {time.perf_counter() - t0:.1f} s")
        return tok
    if spec.kind == "char":
        corpus.materialize()
    return build_tokenizer(spec, corpus_text=corpus.text)


def _split(
    tokens: np.ndarray, tok: Tokenizer, index: dict, entry: CacheEntry, block_size: int, val_fraction: float, *, cached: bool
) -> PreparedData:
    n = len(tokens)
    check_split(n, block_size, val_fraction, entry.corpus.name)
    n_train, n_val = split_sizes(n, val_fraction)
    info = {
        "spec": entry.corpus.spec,
        "name": entry.corpus.name,
        "source": entry.corpus.source,
        "sha256": index["sha256"],
        "bytes": index["bytes"],
        "n_docs": index["n_docs"],
        "tokens": n,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "val_fraction": val_fraction,
        "truncated": index.get("truncated", False),
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "dtype": index["dtype"],
        "bytes_per_token": round(index["bytes"] / n, 4) if n else None,
        "cache": str(entry.dir),
        "cached": cached,
        **{k: v for k, v in entry.corpus.details.items() if k not in ("format",)},
    }
    return PreparedData(train=tokens[:n_train], val=tokens[n_train:], tokenizer=tok, info=info)
