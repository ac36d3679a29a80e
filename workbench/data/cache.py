"""The token cache: a corpus tokenized once, kept as a memmap and reused.

An entry is `<cache>/tokens/<slug>-<key>/`: `tokens.bin` (uint16 when the vocabulary fits,
else uint32), the tokenizer that produced it, and `index.json`, written last: an entry
without it does not exist. The key covers the corpus content (or, for streamed hub sets,
the spec) and the tokenizer; the stored tokenizer fingerprint is checked on reuse, so a
cache written by another tokenizer is rebuilt rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from gptbench.data.batches import check_split, token_dtype
from gptbench.data.sources import DOC_SEPARATOR, Corpus
from gptbench.errors import UserError
from gptbench.fsutil import atomic_path, atomic_write_json, cleanup_on_error
from gptbench.tokenizers.base import Tokenizer
from gptbench.tokenizers.pieces import split_text

CACHE_VERSION = 1
PIECE_CHARS = 1 << 20  # text is tokenized in pieces of about this many characters
BATCH_CHARS = 8 << 20  # ...and written in batches of about this many


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "corpus"


class CacheEntry:
    """One cache entry: tokens/<slug>-<key>/{index.json, tokens.bin, tokenizer.json, ...}."""

    def __init__(self, root: Path, corpus: Corpus, tok_key: str, max_docs: int | None, max_tokens: int | None):
        self.root = root
        self.corpus = corpus
        self.tok_key = tok_key
        material = json.dumps(
            {"v": CACHE_VERSION, "corpus": corpus.key, "tokenizer": tok_key, "max_docs": max_docs, "max_tokens": max_tokens},
            sort_keys=True,
        )
        self.key = hashlib.sha256(material.encode()).hexdigest()[:24]
        slug = _slug(f"{corpus.name}-{tok_key.split(':')[0] if tok_key.startswith(('fp:', 'path:')) else tok_key}")
        self.dir = root / "tokens" / f"{slug}-{self.key}"
        self.max_tokens = max_tokens

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    @property
    def tokens_path(self) -> Path:
        return self.dir / "tokens.bin"

    def load(self, tokenizer: Tokenizer | None, reuse_stored: bool) -> tuple[np.ndarray, Tokenizer, dict] | None:
        """The cached (tokens, tokenizer, index), or None if absent, stale or foreign."""
        from gptbench.tokenizers.registry import load_tokenizer

        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        try:
            if index.get("version") != CACHE_VERSION or index.get("corpus_key") != self.corpus.key:
                return None
            fp = index["tokenizer_fingerprint"]
            if tokenizer is not None:
                if tokenizer.fingerprint() != fp:
                    return None  # written by another tokenizer: rebuild
                tok = tokenizer
            elif reuse_stored:
                tok = load_tokenizer(self.dir)
                if tok.fingerprint() != fp:
                    return None
            else:
                return None
            dtype = token_dtype(tok.vocab_size)
            n = int(index["tokens"])
            if index.get("dtype") != dtype.name or self.tokens_path.stat().st_size != n * dtype.itemsize or n < 1:
                return None
            tokens = np.memmap(self.tokens_path, dtype=dtype, mode="r", shape=(n,))
        except (OSError, KeyError, ValueError, TypeError, UserError):
            return None
        return tokens, tok, index

    def build(
        self, tok: Tokenizer, block_size: int, val_fraction: float, num_proc: int, say: Callable[[str], None]
    ) -> tuple[np.ndarray, dict]:
        dtype = token_dtype(tok.vocab_size)
        corpus = self.corpus
        t0 = time.perf_counter()
        say(f"tokenizing {corpus.name} with {tok.spec} ({num_proc} thread{'s' if num_proc > 1 else ''})")
        with cleanup_on_error(self.dir):
            with atomic_path(self.tokens_path) as tmp:
                known = corpus.sha256 is not None  # local text: hashed when it was read
                stats = _tokenize_to_file(tok, corpus.docs(), tmp, dtype, num_proc, self.max_tokens, say, hash_docs=not known)
                if known:
                    stats.update(sha256=corpus.sha256, bytes=corpus.n_bytes)
                if stats["tokens"] == 0:
                    raise UserError(f"{corpus.spec}: the corpus is empty after filtering (no text documents); pass a corpus with text")
                check_split(stats["tokens"], block_size, val_fraction, corpus.name)
            tok.save(self.dir)
            index = {
                "version": CACHE_VERSION,
                "spec": corpus.spec,
                "name": corpus.name,
                "source": corpus.source,
                "corpus_key": corpus.key,
                "sha256": stats["sha256"],
                "bytes": stats["bytes"],
                "n_docs": stats["n_docs"],
                "tokens": stats["tokens"],
                "truncated": stats["truncated"],
                "dtype": dtype.name,
                "tokenizer": tok.spec,
                "tokenizer_key": self.tok_key,
                "tokenizer_fingerprint": tok.fingerprint(),
                "details": corpus.details,
                "seconds": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_json(self.index_path, index)
        say(f"tokenized {stats['bytes'] / 1e6:.1f} MB into {stats['tokens']:,} tokens in {index['seconds']:.1f} s")
        tokens = np.memmap(self.tokens_path, dtype=dtype, mode="r", shape=(stats["tokens"],))
        return tokens, index


def _tokenize_to_file(
    tok: Tokenizer,
    docs: Iterable[str],
    path: Path,
    dtype: np.dtype,
    num_proc: int,
    max_tokens: int | None,
    say: Callable[[str], None],
    *,
    hash_docs: bool = True,
) -> dict[str, Any]:
    """Stream documents -> ids written to `path` batch by batch; never holds all ids."""
    eot = tok.eot_id
    sep_cache: list[np.ndarray] = []

    def sep() -> np.ndarray:  # lazily: a one-document corpus needs no separator
        if not sep_cache:
            ids = [eot] if eot is not None else tok.encode_arrays([DOC_SEPARATOR])[0]
            sep_cache.append(np.asarray(ids).astype(dtype))
        return sep_cache[0]

    sha = hashlib.sha256()
    n_bytes = n_docs = n_tokens = 0
    truncated = False
    batch: list[str] = []
    new_doc: list[bool] = []
    batch_chars = 0
    last_report = time.perf_counter()

    with open(path, "wb") as f:

        def flush() -> bool:
            nonlocal n_tokens, batch_chars, truncated, last_report
            if not batch:
                return True
            arrays = tok.encode_arrays(batch, num_threads=num_proc)
            parts: list[np.ndarray] = []
            for starts_doc, ids in zip(new_doc, arrays):
                if starts_doc:
                    parts.append(sep())
                parts.append(ids)
            out = np.concatenate(parts).astype(dtype, copy=False) if len(parts) > 1 else parts[0].astype(dtype, copy=False)
            if max_tokens is not None and n_tokens + len(out) >= max_tokens:
                truncated = n_tokens + len(out) > max_tokens
                out = out[: max_tokens - n_tokens]
            f.write(out.tobytes())
            n_tokens += len(out)
            batch.clear()
            new_doc.clear()
            batch_chars = 0
            if time.perf_counter() - last_report > 2.0:
                say(f"  {n_docs:,} documents, {n_tokens:,} tokens")
                last_report = time.perf_counter()
            return max_tokens is None or n_tokens < max_tokens

        going = True
        for doc in docs:
            if not doc:
                continue
            if hash_docs:  # streamed sources are hashed as they go by
                b = doc.encode("utf-8", errors="replace")
                if n_docs:
                    sha.update(DOC_SEPARATOR.encode())
                sha.update(b)
                n_bytes += len(b)
            for j, piece in enumerate(split_text(doc, PIECE_CHARS)):
                batch.append(piece)
                new_doc.append(n_docs > 0 and j == 0)
                batch_chars += len(piece)
                if batch_chars >= BATCH_CHARS * num_proc and not (going := flush()):
                    break
            n_docs += 1
            if not going:
                break
        if going:
            flush()
    return {"sha256": sha.hexdigest(), "bytes": n_bytes, "n_docs": n_docs, "tokens": n_tokens, "truncated": truncated}
