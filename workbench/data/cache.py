"""The token cache: a corpus tokenized once, kept as a memmap and reused.

An entry is `<cache>/tokens/<slug>-<key>/`: `tokens.bin` (uint16 when the vocabulary fits,
else uint32), the tokenizer that produced it, and `index.json`, written last: an entry
without it does not exist. While it is built the ids go to `tokens.bin.partial`, and after
every batch `progress.json` records how far (document, piece, tokens, all synced), so an
interrupted build resumes there instead of starting again. The key covers the corpus content (or, for streamed hub sets,
the spec) and the tokenizer; the stored tokenizer fingerprint is checked on reuse, so a
cache written by another tokenizer is rebuilt rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from gptbench.data.batches import check_split, open_tokens, token_dtype
from gptbench.data.corpus import DOC_SEPARATOR, Corpus
from gptbench.errors import UserError
from gptbench.fsutil import atomic_write_json, cleanup_on_error, fsync_dir
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
            tokens = open_tokens(self.tokens_path, dtype, n)
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
            stats = self._write_tokens(tok, dtype, num_proc, say)
            try:
                if stats["tokens"] == 0:
                    raise UserError(f"{corpus.spec}: the corpus is empty after filtering (no text documents); pass a corpus with text")
                check_split(stats["tokens"], block_size, val_fraction, corpus.name)
            except UserError:
                self._discard_partial()
                raise
            os.replace(self.partial_path, self.tokens_path)
            fsync_dir(self.dir)
            self.progress_path.unlink(missing_ok=True)
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
        tokens = open_tokens(self.tokens_path, dtype, stats["tokens"])
        return tokens, index


    @property
    def partial_path(self) -> Path:
        return self.dir / "tokens.bin.partial"

    @property
    def progress_path(self) -> Path:
        return self.dir / "progress.json"

    def _write_tokens(self, tok: Tokenizer, dtype: np.dtype, num_proc: int, say: Callable[[str], None]) -> dict[str, Any]:
        """Tokenize the corpus into `tokens.bin.partial`, from where an interrupted build of
        the same corpus, tokenizer and limits stopped (progress.json), if one did."""
        corpus, fingerprint = self.corpus, tok.fingerprint()
        start = self._resume_point(fingerprint, dtype)
        if start.tokens:
            say(f"resuming an interrupted tokenization at document {start.doc + 1:,} ({start.tokens:,} tokens written)")
        self.dir.mkdir(parents=True, exist_ok=True)

        def record(doc: int, piece: int, tokens: int, f: Any) -> None:
            f.flush()
            os.fsync(f.fileno())  # the ids first: progress never claims more than is on disk
            atomic_write_json(self.progress_path, {"version": CACHE_VERSION, "key": self.key, "fingerprint": fingerprint,
                                                   "dtype": dtype.name, "doc": doc, "piece": piece, "tokens": tokens})

        known = corpus.sha256 is not None  # local text: hashed when it was read
        try:
            with open(self.partial_path, "r+b" if start.tokens else "wb") as f:
                f.truncate(start.tokens * dtype.itemsize)  # ids written after the last record are written again
                f.seek(0, os.SEEK_END)
                stats = _tokenize_to_file(tok, corpus.docs(), f, dtype, num_proc, self.max_tokens, say, hash_docs=not known,
                                          start=start, on_batch=lambda d, p, n: record(d, p, n, f))
        except UserError:  # bad input: nothing to resume (an interruption keeps what was done)
            self._discard_partial()
            raise
        if known:
            stats.update(sha256=corpus.sha256, bytes=corpus.n_bytes)
        return stats

    def _resume_point(self, fingerprint: str, dtype: np.dtype) -> "_Position":
        try:
            got = json.loads(self.progress_path.read_text(encoding="utf-8"))
            pos = _Position(int(got["doc"]), int(got["piece"]), int(got["tokens"]))
            same = (got["version"], got["key"], got["fingerprint"], got["dtype"]) == (CACHE_VERSION, self.key, fingerprint, dtype.name)
            if same and self.partial_path.stat().st_size >= pos.tokens * dtype.itemsize:
                return pos
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return _Position(0, 0, 0)

    def _discard_partial(self) -> None:
        self.partial_path.unlink(missing_ok=True)
        self.progress_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Position:
    """Where a build stands: the next piece to tokenize (document and piece, counting from
    0; non-empty documents only) and the ids written before it."""

    doc: int
    piece: int
    tokens: int


def _tokenize_to_file(
    tok: Tokenizer,
    docs: Iterable[str],
    f: Any,
    dtype: np.dtype,
    num_proc: int,
    max_tokens: int | None,
    say: Callable[[str], None],
    *,
    hash_docs: bool = True,
    start: _Position = _Position(0, 0, 0),
    on_batch: Callable[[int, int, int], None] = lambda doc, piece, tokens: None,
) -> dict[str, Any]:
    """Stream documents -> ids appended to the open file `f` batch by batch (never holding
    all ids), from `start`; `on_batch(doc, piece, tokens)` after each batch is written."""
    sha = hashlib.sha256()
    n_bytes = n_docs = 0
    out = _TokenFileWriter(tok, f, dtype, num_proc, max_tokens, say, start.tokens, on_batch)
    going = True
    for doc in docs:
        if not doc:
            continue
        if hash_docs:  # streamed sources are hashed as they go by (skipped ones too)
            b = doc.encode("utf-8", errors="replace")
            if n_docs:
                sha.update(DOC_SEPARATOR.encode())
            sha.update(b)
            n_bytes += len(b)
        if n_docs >= start.doc:
            going = out.add_document(doc, docs_before=n_docs, skip=start.piece if n_docs == start.doc else 0)
        n_docs += 1
        if not going:
            break
    if going:
        out.flush(n_docs)
    return {"sha256": sha.hexdigest(), "bytes": n_bytes, "n_docs": n_docs, "tokens": out.n_tokens, "truncated": out.truncated}


class _TokenFileWriter:
    """Tokenizes text pieces in batches (many threads at once) and writes the ids to an
    open file, a separator before each document but the first, up to `max_tokens`."""

    def __init__(self, tok: Tokenizer, f: Any, dtype: np.dtype, num_proc: int, max_tokens: int | None,
                 say: Callable[[str], None], n_tokens: int, on_batch: Callable[[int, int, int], None]) -> None:
        self.tok, self.f, self.dtype, self.num_proc = tok, f, dtype, num_proc
        self.max_tokens, self.say, self.on_batch = max_tokens, say, on_batch
        self.n_tokens = n_tokens
        self._next = (0, 0)  # (document, piece) after the last queued piece
        self.truncated = False
        self._batch: list[str] = []
        self._new_doc: list[bool] = []  # per piece: whether it starts a document (not the first)
        self._batch_chars = 0
        self._sep: np.ndarray | None = None
        self._last_report = time.perf_counter()

    def separator(self) -> np.ndarray:
        """Made lazily: a one-document corpus needs no separator."""
        if self._sep is None:
            eot = self.tok.eot_id
            ids = [eot] if eot is not None else self.tok.encode_arrays([DOC_SEPARATOR])[0]
            self._sep = np.asarray(ids).astype(self.dtype)
        return self._sep

    def add_document(self, doc: str, *, docs_before: int, skip: int = 0) -> bool:
        """Queue a document's pieces (the `docs_before`-th document, from 0) but the first
        `skip` (written before a resume), writing full batches; False once `max_tokens` is reached."""
        for j, piece in enumerate(split_text(doc, PIECE_CHARS)):
            if j < skip:
                continue
            self._next = (docs_before, j + 1)
            self._batch.append(piece)
            self._new_doc.append(docs_before > 0 and j == 0)
            self._batch_chars += len(piece)
            if self._batch_chars >= BATCH_CHARS * self.num_proc and not self.flush(docs_before):
                return False
        return True

    def flush(self, n_docs: int) -> bool:
        """Write the queued pieces; False once `max_tokens` is reached."""
        if not self._batch:
            return True
        arrays = self.tok.encode_arrays(self._batch, num_threads=self.num_proc)
        parts: list[np.ndarray] = []
        for starts_doc, ids in zip(self._new_doc, arrays):
            if starts_doc:
                parts.append(self.separator())
            parts.append(ids)
        out = np.concatenate(parts).astype(self.dtype, copy=False) if len(parts) > 1 else parts[0].astype(self.dtype, copy=False)
        if self.max_tokens is not None and self.n_tokens + len(out) >= self.max_tokens:
            self.truncated = self.n_tokens + len(out) > self.max_tokens
            out = out[: self.max_tokens - self.n_tokens]
        self.f.write(out.tobytes())
        self.n_tokens += len(out)
        self._batch.clear()
        self._new_doc.clear()
        self._batch_chars = 0
        self.on_batch(*self._next, self.n_tokens)
        if time.perf_counter() - self._last_report > 2.0:
            self.say(f"  {n_docs:,} documents, {self.n_tokens:,} tokens")
            self._last_report = time.perf_counter()
        return self.max_tokens is None or self.n_tokens < self.max_tokens
