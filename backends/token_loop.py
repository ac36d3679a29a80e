"""The token loop: a batch of prompts in, one array of sampled ids per step out, for any backend.

The backend provides `new_cache`, `forward_last` (prefill or one cached step), `sample` (the
filters of `sampling.py` on its own tensors) and `make_generator`: the `GenerationBackend`
contract. This module owns prompt cropping, left padding, the sliding window, the KV-cache
life cycle and repetition history; text, stop strings and timing are `generate.py`'s.

KV cache. `backend.new_cache(pad)` returns one cache object per layer, preallocated and
grown in chunks (never concatenated per token). The prompt is prefilled in one forward pass; after
that each step feeds one token per row and appends its keys and values in place.

Context window. Positions run from 0 at the window's start (a learned table, or rotary
angles, of `block_size` positions), so a KV cache cannot simply roll past `block_size`:
every cached key was computed at a position that changes when the window moves. So when a sequence would exceed `block_size` tokens of context, its window slides:
it keeps the last `block_size - stride + 1` tokens and (with a cache) re-prefills them into
a fresh cache, then decodes `stride - 1` more tokens incrementally before the next slide.
Without a cache the model re-reads exactly the same window every token, so both paths see
identical contexts and give identical greedy output. `stride=1` is nanoGPT's "crop to the
last block_size tokens every step" (at the cost of a full prefill per token); the default
`block_size // 4` keeps at least three quarters of the window as context and amortises the
re-prefill over many tokens. Prompts longer than `block_size` are cropped from the left.

Batches. Prompts of different lengths are left-padded into one [B, T] array; each row keeps
its own window start, and tokens before it (padding, or tokens that slid out) are given to
the backend as that row's `pad` when the cache is made: masked keys, positions restarting at
0 after them (without a KV cache, a throwaway cache carries the padding for one forward).
Every row therefore sees exactly the context it would see generated alone, slides included.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from gptbench.backends.sampling import SamplingParams
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import GenerationBackend as Backend

MAX_PENDING_TOKENS = 4096  # the token buffer grows in chunks of this many positions


def default_stride(block_size: int) -> int:
    return max(1, block_size // 4)


class TokenBuffer:
    """The batch's tokens on the host: left-padded prompts, then each sampled column.

    `seq[:, :length]` holds every token so far; `start[b]` is where row b's window begins
    (its padding, or the tokens that slid out, lie before it). The buffer grows by
    `MAX_PENDING_TOKENS` columns at a time, never by all of `max_new_tokens` up front."""

    def __init__(self, rows: list[np.ndarray], max_new_tokens: int) -> None:
        longest = max(len(r) for r in rows)
        self.pad = np.array([longest - len(r) for r in rows], dtype=np.int64)
        self.seq = np.zeros((len(rows), longest + min(max_new_tokens, MAX_PENDING_TOKENS)), dtype=np.int64)
        for b, r in enumerate(rows):
            self.seq[b, self.pad[b] : longest] = r
        self.length = longest
        self.start = self.pad.copy()  # per row: index in `seq` of the first token of its window

    def history(self, window: int) -> np.ndarray:
        """The last `window` tokens of each row ([B, W]), padding marked -1, for the penalty."""
        lo = max(0, self.length - window)
        history = self.seq[:, lo : self.length].copy()
        history[np.arange(lo, self.length)[None, :] < self.pad[:, None]] = -1
        return history

    def append(self, tokens: np.ndarray) -> None:
        if self.length == self.seq.shape[1]:
            self.seq = np.concatenate([self.seq, np.zeros((self.seq.shape[0], MAX_PENDING_TOKENS), dtype=np.int64)], axis=1)
        self.seq[:, self.length] = tokens
        self.length += 1

    def slide_full_windows(self, block_size: int, keep: int) -> bool:
        """Restart every window longer than `block_size` at its last `keep` tokens; True if any did."""
        full = self.length - self.start > block_size
        if not full.any():
            return False
        self.start[full] = self.length - keep
        return True


def _prefill(backend: "Backend", buf: TokenBuffer, use_cache: bool) -> tuple[Any, Any]:
    """Forward every row's window; returns (the cache, now holding it, or None; logits)."""
    lo = int(buf.start.min())
    row_pad = buf.start - lo
    cache = None
    if use_cache or row_pad.any():  # without a KV cache, a throwaway one carries the padding
        cache = backend.new_cache(row_pad if row_pad.any() else None)
    return cache, backend.forward_last(buf.seq[:, lo : buf.length], cache)


def _checked_stride(block_size: int, stride: int | None) -> int:
    stride = default_stride(block_size) if stride is None else int(stride)
    if not 1 <= stride <= block_size:
        raise UserError(f"window stride must be in [1, block_size={block_size}], got {stride}")
    return stride


def _cropped_rows(prompts: Sequence[Sequence[int]], block_size: int, vocab: int) -> list[np.ndarray]:
    """Each prompt cropped from the left to `block_size` tokens, its ids checked."""
    rows = [np.asarray(list(p)[-block_size:], dtype=np.int64) for p in prompts]
    for r in rows:
        if r.min() < 0 or r.max() >= vocab:
            raise UserError(f"prompt token ids must be in [0, {vocab}); this model has {vocab} tokens")
    return rows


def generate_tokens(
    backend: "Backend",
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    stride: int | None = None,
    timing: dict | None = None,
) -> Iterator[np.ndarray]:
    """Yield one array of sampled ids ([B]) per step for a batch of prompts.

    Runs until `max_new_tokens` or until the consumer stops iterating (so stop conditions
    and cancellation live with the consumer). `timing`, if given, receives `prompt_tokens`
    (real prompt tokens of all rows) and `prefill_seconds` once the first token is sampled.
    """
    T = backend.config.block_size
    stride = _checked_stride(T, stride)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("empty prompt: give at least one token of prompt text")
    if params.max_new_tokens == 0:
        return
    rows = _cropped_rows(prompts, T, backend.config.vocab_size)
    buf = TokenBuffer(rows, params.max_new_tokens)
    gen = backend.make_generator(params.seed)
    W = params.repetition_window if params.repetition_penalty != 1.0 else 0
    keep = T - stride + 1  # window length right after a slide

    t0 = time.perf_counter()
    cache, logits = _prefill(backend, buf, use_cache)
    for step in range(params.max_new_tokens):
        tok = backend.sample(logits, params, buf.history(W) if W else None, gen)
        if step == 0 and timing is not None:
            timing["prompt_tokens"] = int(sum(len(r) for r in rows))
            timing["prefill_seconds"] = time.perf_counter() - t0
        buf.append(tok)
        yield tok
        if step + 1 == params.max_new_tokens:
            return
        if buf.slide_full_windows(T, keep):  # some row's window is full: re-prefill every row
            cache, logits = _prefill(backend, buf, use_cache)
        elif use_cache:
            logits = backend.forward_last(buf.seq[:, buf.length - 1 : buf.length], cache)
        else:
            _, logits = _prefill(backend, buf, use_cache)
