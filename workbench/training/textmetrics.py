"""Bits per byte: a validation loss on the scale of text, whatever the tokenizer, and whole-split loss."""

from __future__ import annotations

from typing import Any

import numpy as np

from gptbench.backends.base import Backend


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """The UTF-8 length of each token's text, int64 [vocab_size]; 0 for the end-of-text
    token and chat turn tokens, which mark boundaries rather than stand for text. Every gptbench
    tokenizer decodes a sequence to the concatenation of its tokens' bytes, so a split's
    text length is a sum over this table."""
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    markers = {tokenizer.eot_id, *getattr(tokenizer, "special_ids", ())}  # chat turn tokens: 0 bytes too
    for i in range(tokenizer.vocab_size):
        if i not in markers:
            lengths[i] = len(tokenizer.decode_bytes([i]))
    return lengths


def split_bytes(tokens: np.ndarray, tokenizer: Any, chunk: int = 1 << 24) -> int:
    """UTF-8 bytes of the text a split decodes to, exactly, without decoding it: a token
    histogram (chunk by chunk over the memmap) times `token_byte_lengths`."""
    lengths = token_byte_lengths(tokenizer)
    total = 0
    for i in range(0, len(tokens), chunk):
        counts = np.bincount(np.asarray(tokens[i : i + chunk], dtype=np.int64), minlength=len(lengths))
        total += int(counts[: len(lengths)] @ lengths)
    return total


def full_split_loss(backend: Backend, data: np.ndarray, block_size: int, batch_size: int = 64) -> float:
    """Mean loss over every non-overlapping window of a split (the quality benchmark's metric)."""
    n = (len(data) - 1) // block_size
    starts = np.arange(n) * block_size
    total, count = 0.0, 0
    idx = np.arange(block_size)
    for i in range(0, n, batch_size):
        s = starts[i : i + batch_size]
        x = np.asarray(data[s[:, None] + idx], dtype=np.int64)
        y = np.asarray(data[s[:, None] + idx + 1], dtype=np.int64)
        total += backend.eval_loss(x, y) * len(s)
        count += len(s)
    return total / count
