"""Bits per byte of a text: how well a model predicts it, comparable across tokenizers.

The text is encoded once, preceded by the end-of-text token where the tokenizer has one
(otherwise its first token is given, not predicted, and its bytes are not counted), and
scored in disjoint windows of `block_size` predictions, each window seeing only its own
tokens: lm-evaluation-harness's rolling log-likelihood with a context of one token.
bpb = -(sum of log p) / (ln 2 · bytes).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from gptbench.errors import UserError
from gptbench.evaluation.results import TaskResult


def text_bpb(logprobs: Callable[[np.ndarray, np.ndarray], np.ndarray], tokenizer, text: str, block_size: int,
             name: str, max_tokens: int = 16384) -> TaskResult:
    """Bits per byte of `text`; `logprobs` is the backend's `token_logprobs`."""
    ids = tokenizer.encode(text)
    nbytes = len(text.encode("utf-8"))
    if tokenizer.eot_id is not None:
        ids = [tokenizer.eot_id, *ids]
    elif ids:
        nbytes -= len(tokenizer.decode_bytes(ids[:1]))
    if len(ids) < 2 or nbytes <= 0:
        raise UserError(f"{name}: the text is too short to score; give at least a few words")
    starts = list(range(0, len(ids) - 1, block_size))
    total, max_rows = 0.0, max(1, max_tokens // block_size)
    for k in range(0, len(starts), max_rows):
        group = starts[k: k + max_rows]
        idx = np.zeros((len(group), block_size), dtype=np.int64)
        targets = np.full((len(group), block_size), -1, dtype=np.int64)
        for row, s in enumerate(group):
            chunk = ids[s: s + block_size + 1]
            idx[row, : len(chunk) - 1] = chunk[:-1]
            targets[row, : len(chunk) - 1] = chunk[1:]
        width = int((targets >= 0).sum(axis=1).max())  # the last window may be short
        total += float(np.asarray(logprobs(idx[:, :width], targets[:, :width]), dtype=np.float64).sum())
    return TaskResult(name, "bpb", len(ids) - 1, bpb=-total / (math.log(2) * nbytes))
