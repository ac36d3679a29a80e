"""Chart data at any length: vectorised smoothing and min/max downsampling (numpy, no Textual).

A million-step curve must draw as fast as a hundred-step one and still show its spikes, so
`ema` runs block-wise in numpy (the same debiased EMA as TensorBoard; non-finite values pass
through and do not move the average) and `minmax_downsample` keeps, for every column,
the lowest and the highest point in it, in their original order.
"""

from __future__ import annotations

import numpy as np

MAX_EMA_BLOCK = 4096  # the recurrence is solved exactly inside blocks, then carried between them


def _block(weight: float) -> int:
    """Blocks as long as the decay inside one stays above 1e-12 (so 1/decay stays exact)."""
    return max(8, min(MAX_EMA_BLOCK, int(-27.6 / np.log(weight)))) if weight < 1 else MAX_EMA_BLOCK


def ema(values: np.ndarray | list[float], weight: float) -> np.ndarray:
    """TensorBoard-style debiased exponential moving average (weight 0 = raw), as float64.

    acc_t = d_t acc_{t-1} + (1-w) v_t and norm_t = d_t norm_{t-1} + (1-w) with d_t = w (d_t = 1
    and no new term where v_t is not finite, which is then passed through); out = acc / norm.
    """
    return ema_from(values, weight)[0]


def ema_from(values: np.ndarray | list[float], weight: float, state: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, tuple[float, float]]:
    """`ema` continued from `state` (acc, norm) after earlier values; returns the state after
    these, so a growing series is smoothed only where it grew."""
    v = np.asarray(values, dtype=np.float64)
    if weight <= 0 or v.size == 0:
        return v.copy(), state
    n = v.size
    block = _block(weight)
    pad = (-n) % block
    ok = np.isfinite(v)
    term = np.where(ok, v, 0.0) * (1.0 - weight)
    mass = ok * (1.0 - weight)
    decay = np.where(ok, weight, 1.0)
    if pad:
        term, mass, decay = (np.concatenate([a, np.full(pad, fill)]) for a, fill in ((term, 0.0), (mass, 0.0), (decay, 1.0)))
    shape = (-1, block)
    prod = np.cumprod(decay.reshape(shape), axis=1)  # decay from the block's start to t
    acc = np.cumsum(term.reshape(shape) / prod, axis=1) * prod  # each block on its own, from zero
    norm = np.cumsum(mass.reshape(shape) / prod, axis=1) * prod
    carry_acc, carry_norm = state  # the state entering each block, carried in a short scalar loop
    acc_in, norm_in = np.empty(len(prod)), np.empty(len(prod))
    for b, (a_end, n_end, p_end) in enumerate(zip(acc[:, -1].tolist(), norm[:, -1].tolist(), prod[:, -1].tolist())):
        acc_in[b], norm_in[b] = carry_acc, carry_norm
        carry_acc, carry_norm = a_end + p_end * carry_acc, n_end + p_end * carry_norm
    acc = (acc + prod * acc_in[:, None]).reshape(-1)[:n]
    norm = (norm + prod * norm_in[:, None]).reshape(-1)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, acc / norm, v), (carry_acc, carry_norm)


def minmax_downsample(xs: np.ndarray | list[float], ys: np.ndarray | list[float], columns: int) -> tuple[np.ndarray, np.ndarray]:
    """At most 2 points per column of `columns` equal-width x intervals: each column's lowest
    and highest point, in x order. Non-finite ys are dropped first. Shorter series come back
    whole (finite points only)."""
    x = np.asarray(xs)
    if x.dtype.kind not in "iu":  # integer steps stay integers (always finite, no float copy)
        x = x.astype(np.float64, copy=False)
    y = np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(y) if x.dtype.kind in "iu" else np.isfinite(y) & np.isfinite(x)
    if not keep.all():
        x, y = x[keep], y[keep]
    if x.size <= 2 * columns or columns < 1:
        return x.astype(np.float64), y
    if np.all(x[1:] >= x[:-1]):  # xs are steps, almost always sorted: each column is a run
        lo, hi = float(x[0]), float(x[-1])
        starts = _column_starts(x, lo, hi, columns) if hi > lo else np.zeros(1, dtype=np.int64)
        px, py = _runs_minmax(x, y, starts)
        return px.astype(np.float64), py
    x = x.astype(np.float64)
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return x[[int(np.argmin(y)), int(np.argmax(y))]], np.array([y.min(), y.max()])
    col = np.minimum(((x - lo) * (columns / (hi - lo))).astype(np.int64), columns - 1)
    order = np.argsort(col, kind="stable")
    x, y, col = x[order], y[order], col[order]
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    ids = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, col.size]))
    lows, highs = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
    first_low = _first_where(y == lows[ids], ids, starts.size)
    first_high = _first_where(y == highs[ids], ids, starts.size)
    picks = np.unique(np.concatenate([first_low, first_high]))  # sorted: original order; one point if low == high
    return x[picks], y[picks]


def _column_starts(x: np.ndarray, lo: float, hi: float, columns: int) -> np.ndarray:
    """Where each non-empty column's run begins in sorted `x`: a binary search per column
    edge, then moved to the first point the column formula, min(int((x - lo) * columns /
    (hi - lo)), columns - 1), puts in that column or a later one (float rounding at the edge)."""
    scale = columns / (hi - lo)

    def column(i: int) -> int:
        return min(int((float(x[i]) - lo) * scale), columns - 1)

    guesses = np.searchsorted(x, lo + np.arange(1, columns) / scale).tolist()
    starts = [0]
    for k, i in enumerate(guesses, start=1):
        while i < x.size and column(i) < k:
            i += 1
        while i > starts[-1] and column(i - 1) >= k:
            i -= 1
        if i > starts[-1] and i < x.size:
            starts.append(i)
    return np.asarray(starts, dtype=np.int64)


def _runs_minmax(x: np.ndarray, y: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`minmax_downsample` where each column is one run of points: a column's first lowest and
    first highest point by argmin/argmax on its slice (a few hundred calls, two passes over
    the data, where matching every point against its column's extremes took ten)."""
    ends = np.r_[starts[1:], y.size].tolist()
    picks = set()
    for start, end in zip(starts.tolist(), ends):
        part = y[start:end]
        picks.add(start + int(part.argmin()))
        picks.add(start + int(part.argmax()))
    index = np.fromiter(sorted(picks), dtype=np.int64, count=len(picks))
    return x[index], y[index]


def _first_where(mask: np.ndarray, ids: np.ndarray, groups: int) -> np.ndarray:
    """For each group 0..groups-1 (ids sorted), the index of its first True in `mask`."""
    hits = np.flatnonzero(mask)
    group_of = ids[hits]
    first = np.r_[True, group_of[1:] != group_of[:-1]]
    out = hits[first]
    assert out.size == groups  # every group holds its own min and max
    return out
