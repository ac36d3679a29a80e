"""Log-likelihood of continuations given contexts, batched, on any backend.

This is lm-evaluation-harness's `loglikelihood` request, done the same way so the numbers
agree: trailing whitespace of a context moves to the front of its continuation; the pair is
encoded whole and the continuation's tokens are what follows the context's own encoding
(`whole[len(encode(context)):]`); an empty context is the end-of-text token; a sequence
longer than the model's window keeps its last `block_size + 1` tokens (the context is cut
from the left, and the cut is counted). The log-likelihood is the sum of log p over the
continuation's tokens.

Rows are scored longest first, several per forward pass, right-padded: causal attention
keeps padding from changing the positions before it, and padded targets are -1, so no mask
is needed. A batch holds at most `max_rows` rows and `max_tokens` padded tokens (the bound
on the memory of its logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from gptbench.errors import UserError


@dataclass(frozen=True)
class Request:
    """One (context, continuation) to score, as token ids."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]

    def window(self, block_size: int) -> tuple[list[int], bool]:
        """The model's input (the last `block_size + 1` tokens minus the last) and whether
        the context was cut to fit."""
        whole = list(self.context) + list(self.continuation)
        return whole[-(block_size + 1):][:-1], len(whole) > block_size + 1


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """Encode like lm-evaluation-harness: move the context's trailing whitespace into the
    continuation, encode the whole, and split it at the context's own encoding."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        if tokenizer.eot_id is None:
            raise UserError("an empty context needs an end-of-text token, which this tokenizer lacks; give every item a context")
        return Request((tokenizer.eot_id,), tuple(tokenizer.encode(continuation)))
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return Request(tuple(ctx), tuple(whole[len(ctx):]))


@dataclass(frozen=True)
class Scored:
    """A request's log-likelihood, and whether its context was cut to the block size."""

    loglik: float
    truncated: bool
    tokens: int  # continuation tokens scored


def batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Row indices grouped for forward passes, longest first; each group's rows times its
    longest row stays within `max_tokens` (one row always fits)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < max_rows and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def score_requests(
    logprobs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    requests: Sequence[Request],
    block_size: int,
    *,
    max_rows: int = 32,
    max_tokens: int = 16384,
) -> list[Scored]:
    """The log-likelihood of each request's continuation; `logprobs(idx, targets)` is the
    backend's `token_logprobs`."""
    windows = []
    for r in requests:
        if len(r.continuation) > block_size:
            raise UserError(f"a continuation of {len(r.continuation)} tokens is longer than the model's block size ({block_size})")
        windows.append(r.window(block_size))
    out: list[Scored | None] = [None] * len(requests)
    for group in batches([len(w) for w, _ in windows], max_rows, max_tokens):
        width = len(windows[group[0]][0])
        idx = np.zeros((len(group), width), dtype=np.int64)
        targets = np.full((len(group), width), -1, dtype=np.int64)
        for row, i in enumerate(group):
            x, _ = windows[i]
            cont = requests[i].continuation
            idx[row, : len(x)] = x
            targets[row, len(x) - len(cont): len(x)] = cont
        lp = np.asarray(logprobs(idx, targets), dtype=np.float64)
        for row, i in enumerate(group):
            out[i] = Scored(float(lp[row].sum()), windows[i][1], len(requests[i].continuation))
    return out  # type: ignore[return-value]
