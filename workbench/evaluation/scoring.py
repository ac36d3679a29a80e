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

Sharing the context (`share`, where the backend's `shares_context`): the requests that have
the same context tokens (an item's choices) and need no cut are packed into one row, the
context once and then each continuation as its own segment. Segment k is the context's last
token followed by continuation k without its last token, at the positions it has in the
unshared row, attending to the context and to itself only (`token_logprobs`' `segments`):
every log-probability is the one the unshared row gives (float rounding aside), and the
context is computed once instead of once per choice. A pack grows to at most
`PACK_LIMIT` x block_size tokens; what does not fit starts another.
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


PACK_LIMIT = 2  # a packed row holds at most this many block sizes of tokens


@dataclass(frozen=True)
class Scored:
    """A request's log-likelihood, and whether its context was cut to the block size."""

    loglik: float
    truncated: bool
    tokens: int  # continuation tokens scored


@dataclass(frozen=True)
class Row:
    """One row of a forward pass: its tokens, each one's target (-1: none), position and
    segment (None: one causal sequence from 0), and the span of targets of each request."""

    tokens: tuple[int, ...]
    targets: tuple[int, ...]
    positions: tuple[int, ...] | None = None
    segments: tuple[int, ...] | None = None
    spans: tuple[tuple[int, int, int], ...] = ()  # (request index, start, end)


def plain_row(i: int, request: Request, block_size: int) -> Row:
    """Request `i` alone: its window, the continuation's tokens as the last targets."""
    x, _ = request.window(block_size)
    n = len(request.continuation)
    return Row(tuple(x), (-1,) * (len(x) - n) + request.continuation, spans=((i, len(x) - n, len(x)),))


def packed_row(indices: Sequence[int], requests: Sequence[Request]) -> Row:
    """Requests of one context in one row: the context but its last token (segment 0),
    then per request its segment (see the module docstring)."""
    ctx = requests[indices[0]].context
    tokens, targets = list(ctx[:-1]), [-1] * (len(ctx) - 1)
    positions, segments = list(range(len(ctx) - 1)), [0] * (len(ctx) - 1)
    spans = []
    for k, i in enumerate(indices, 1):
        cont = requests[i].continuation
        spans.append((i, len(tokens), len(tokens) + len(cont)))
        tokens += [ctx[-1], *cont[:-1]]
        targets += cont
        positions += range(len(ctx) - 1, len(ctx) - 1 + len(cont))
        segments += [k] * len(cont)
    return Row(tuple(tokens), tuple(targets), tuple(positions), tuple(segments), tuple(spans))


def plan_rows(requests: Sequence[Request], block_size: int, share: bool) -> list[Row]:
    """The rows that score `requests`: one per request, or with `share` one per context
    (requests that need no cut), each pack at most `PACK_LIMIT` block sizes long."""
    rows: list[Row] = []
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        if share and not r.window(block_size)[1]:
            by_context.setdefault(r.context, []).append(i)
        else:
            rows.append(plain_row(i, r, block_size))
    for ctx, indices in by_context.items():
        pack: list[int] = []
        for i in indices:
            if pack and len(ctx) - 1 + sum(len(requests[j].continuation) for j in pack + [i]) > PACK_LIMIT * block_size:
                rows.append(packed_row(pack, requests) if len(pack) > 1 else plain_row(pack[0], requests[pack[0]], block_size))
                pack = []
            pack.append(i)
        if pack:
            rows.append(packed_row(pack, requests) if len(pack) > 1 else plain_row(pack[0], requests[pack[0]], block_size))
    return rows


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


def forward_rows(logprobs: Callable[..., np.ndarray], rows: Sequence[Row]) -> np.ndarray:
    """The log-probabilities of `rows` in one forward pass, [rows, longest] float64."""
    width = max(len(r.tokens) for r in rows)
    idx = np.zeros((len(rows), width), dtype=np.int64)
    targets = np.full((len(rows), width), -1, dtype=np.int64)
    for b, r in enumerate(rows):
        idx[b, : len(r.tokens)] = r.tokens
        targets[b, : len(r.targets)] = r.targets
    if all(r.segments is None for r in rows):
        return np.asarray(logprobs(idx, targets), dtype=np.float64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    segments = np.full((len(rows), width), -1, dtype=np.int64)  # padding: a segment of its own
    for b, r in enumerate(rows):
        n = len(r.tokens)
        positions[b, :n] = r.positions if r.positions is not None else range(n)
        segments[b, :n] = r.segments if r.segments is not None else 0
    return np.asarray(logprobs(idx, targets, positions, segments), dtype=np.float64)


def score_requests(
    logprobs: Callable[..., np.ndarray],
    requests: Sequence[Request],
    block_size: int,
    *,
    max_rows: int = 32,
    max_tokens: int = 16384,
    share: bool = False,
) -> list[Scored]:
    """The log-likelihood of each request's continuation; `logprobs(idx, targets[,
    positions, segments])` is the backend's `token_logprobs` (`share` packs contexts)."""
    for r in requests:
        if len(r.continuation) > block_size:
            raise UserError(f"a continuation of {len(r.continuation)} tokens is longer than the model's block size ({block_size})")
    rows = plan_rows(requests, block_size, share)
    out: list[Scored | None] = [None] * len(requests)
    for group in batches([len(r.tokens) for r in rows], max_rows, max_tokens):
        lp = forward_rows(logprobs, [rows[g] for g in group])
        for b, g in enumerate(group):
            for i, start, end in rows[g].spans:
                r = requests[i]
                out[i] = Scored(float(lp[b, start:end].sum()), r.window(block_size)[1], len(r.continuation))
    return out  # type: ignore[return-value]
