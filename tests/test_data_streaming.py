"""Folders of text files stream: hashed in one pass, then read file by file by BPE training
and the token cache, so a corpus larger than memory can be tokenized (issue 25 part 2)."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import gptbench.data.cache as cache_mod
from gptbench.data import load_corpus, prepare_data
from gptbench.errors import UserError
from gptbench.tokenizers.bpe import train_bpe
from gptbench.tokenizers.pieces import split_text


def write_folder(root: Path, files: int, chars: int) -> list[str]:
    """`files` text files of about `chars` characters each, all different; their texts in order."""
    root.mkdir(parents=True)
    texts = []
    for i in range(files):
        line = f"document {i:03d}: the quick brown fox {i * 7919 % 1000} jumps over the lazy dog.\n"
        texts.append(line * (chars // len(line)))
        (root / f"part-{i:03d}.txt").write_text(texts[-1], encoding="utf-8")
    return texts


def test_a_folder_is_streamed_and_keyed_like_the_same_text_read_eagerly(tmp_path):
    (text,) = write_folder(tmp_path / "one", 1, 5000)
    folder, single = load_corpus(str(tmp_path / "one")), load_corpus(str(tmp_path / "one" / "part-000.txt"))
    assert folder.docs_list is None and folder.rereadable
    assert (folder.key, folder.sha256, folder.n_bytes, folder.n_docs) == (single.key, single.sha256, single.n_bytes, 1)
    assert list(folder.reread()) == [text] == list(folder.reread())  # every pass reads the files again
    assert folder.docs_list is None  # ... and keeps none of them


def test_max_docs_and_skipped_files_are_decided_by_the_hashing_pass(tmp_path):
    texts = write_folder(tmp_path / "c", 4, 300)
    (tmp_path / "c" / "part-001.txt").write_bytes(b"\x00binary")
    corpus = load_corpus(str(tmp_path / "c"), max_docs=2)
    assert list(corpus.docs()) == [texts[0], texts[2]]
    assert corpus.details == {"files": 2, "skipped_files": 1}


def test_a_file_that_turns_binary_after_hashing_is_refused_by_name(tmp_path):
    write_folder(tmp_path / "c", 2, 300)
    corpus = load_corpus(str(tmp_path / "c"))
    (tmp_path / "c" / "part-001.txt").write_bytes(b"\x00binary")
    with pytest.raises(UserError, match=r"part-001\.txt became unreadable, binary or not UTF-8"):
        list(corpus.docs())


def test_a_fifo_in_a_folder_is_read_once_and_held(tmp_path):
    """A FIFO gives its text once: the hashing pass keeps it, and later passes reuse it."""
    texts = write_folder(tmp_path / "c", 2, 300)
    fifo = tmp_path / "c" / "part-002.txt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("from a pipe\n", encoding="utf-8"), daemon=True)
    writer.start()
    corpus = load_corpus(str(tmp_path / "c"))
    writer.join(10)
    assert list(corpus.docs()) == [*texts, "from a pipe\n"] == list(corpus.docs())


def test_the_token_cache_holds_a_batch_not_the_corpus(tmp_path, monkeypatch):
    """Python's traced peak while an 8 MB folder is tokenized in 32 kB batches stays under a
    quarter of the corpus (held whole it would be at least the corpus itself; a batch's
    text and ids in their few forms take about 20 bytes a character)."""
    texts = write_folder(tmp_path / "c", 256, 32_000)
    corpus_bytes = sum(len(t) for t in texts)
    monkeypatch.setattr(cache_mod, "BATCH_CHARS", 32_000)
    tracemalloc.start()
    try:
        data = prepare_data(str(tmp_path / "c"), "byte", block_size=64, cache_dir=tmp_path / "cache", num_proc=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < corpus_bytes / 4, f"peak {peak:,} bytes for a {corpus_bytes:,}-byte corpus"
    ids = np.concatenate([data.train, data.val])
    assert data.info["n_docs"] == 256 and len(ids) == corpus_bytes + 255 * 2  # "\n\n" between documents
    assert bytes(ids[: len(texts[0])].astype(np.uint8)) == texts[0].encode()


def test_bpe_training_on_a_folder_streams_the_documents_the_trainer_would_get_eagerly(tmp_path):
    texts = write_folder(tmp_path / "c", 3, 20_000)
    streamed = prepare_data(str(tmp_path / "c"), "bpe:300", block_size=16, cache_dir=tmp_path / "cache").tokenizer
    eager = train_bpe((p for d in texts for p in split_text(d, 1 << 16)), 300)
    assert streamed.vocab_size == 300
    assert streamed.fingerprint() == eager.fingerprint()
    sample = texts[1][:500]
    assert len(streamed.encode(sample)) < len(sample.encode()) / 2  # merges were learned
