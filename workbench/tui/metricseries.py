"""`MetricSeries`: one run's curves as growable numpy columns, grown from metrics.jsonl records.

A long GPU run logs a million records, so the columns are numpy arrays with spare capacity:
appending is amortised O(1), and `copy()` (a snapshot for the UI thread) hands out views of
the filled part in O(1). Those views never change afterwards: appends write past them, and a
rewind (a resumed run re-logging from its checkpoint) copies the kept part into new arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

TRAIN_COLUMNS = ("train_step", "train_loss", "lr", "tokens_per_sec", "train_time")
EVAL_COLUMNS = ("eval_step", "eval_train_loss", "val_loss", "val_bpb")


class Column:
    """A 1-D float64 or int64 array that grows at its end; `view()` is the filled part."""

    def __init__(self, dtype: Any) -> None:
        self._data = np.empty(0, dtype=dtype)
        self.n = 0

    def view(self) -> np.ndarray:
        return self._data[: self.n]

    def append(self, values: np.ndarray | list[Any]) -> None:
        values = np.asarray(values, dtype=self._data.dtype)
        need = self.n + values.size
        if need > self._data.size:
            grown = np.empty(max(need, 2 * self._data.size, 64), dtype=self._data.dtype)
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n : need] = values
        self.n = need

    def truncate(self, keep: int) -> None:
        """Keep the first `keep` values, in a new array (views already handed out stay as they were)."""
        if keep < self.n:
            self._data = self._data[:keep].copy()
            self.n = keep


@dataclass
class _Pending:
    """Records of one `extend` call, gathered in lists and appended to the columns at once."""

    train: list[list[float]] = field(default_factory=lambda: [[] for _ in TRAIN_COLUMNS])
    evals: list[list[float]] = field(default_factory=lambda: [[] for _ in EVAL_COLUMNS])


class MetricSeries:
    """The curves of one run, grown incrementally from metrics.jsonl records. The columns
    (`train_step`, `train_loss`, `lr`, `tokens_per_sec`, `train_time`, `eval_step`,
    `eval_train_loss`, `val_loss`, `val_bpb`) read as numpy arrays."""

    def __init__(self) -> None:
        self._cols = {name: Column(np.int64 if name.endswith("_step") else np.float64) for name in TRAIN_COLUMNS + EVAL_COLUMNS}
        self._frozen: dict[str, np.ndarray] | None = None  # set on a copy: its arrays
        self.sample_step: int | None = None
        self.sample_text = ""
        self.scores: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {}  # task -> steps, acc (runstore.evals)
        self.version = 0  # bumped on every change, so a viewer can tell "new data" cheaply

    def __getattr__(self, name: str) -> np.ndarray:
        if name in TRAIN_COLUMNS or name in EVAL_COLUMNS:
            frozen = self.__dict__.get("_frozen")
            return frozen[name] if frozen is not None else self.__dict__["_cols"][name].view()
        raise AttributeError(name)

    def extend(self, records: Iterable[dict[str, Any]]) -> bool:
        groups: dict[Any, list[dict[str, Any]]] = {"train": [], "eval": [], "sample": []}
        for r in records:
            group = groups.get(r.get("type"))
            if group is not None:
                group.append(r)
        changed = False
        slow = groups["sample"]
        for kind, names, columns in (("train", TRAIN_COLUMNS, _train_columns), ("eval", EVAL_COLUMNS, _eval_columns)):
            if groups[kind] and self._append_columns(groups[kind], names, columns):
                changed = True
            else:
                slow = groups[kind] + slow
        return self._extend_slowly(slow, changed)

    def _append_columns(self, records: list[dict[str, Any]], names: tuple[str, ...], columns: Any) -> bool:
        """Append well-formed records whose steps go on rising, whole columns at a time; False
        (nothing appended) for anything else: malformed records, or a rewind."""
        try:
            cols = columns(records)
        except (KeyError, TypeError, ValueError):
            return False
        steps, have = cols[0], self._cols[names[0]]
        if np.any(steps[1:] <= steps[:-1]) or (have.n and steps[0] <= have.view()[-1]):
            return False
        for name, col in zip(names, cols):
            self._cols[name].append(col)
        return True

    def _extend_slowly(self, records: list[dict[str, Any]], changed: bool) -> bool:
        """Record by record: skips malformed ones and cuts the curves where a step goes back."""
        pending = _Pending()
        for r in records:
            try:
                kind = r.get("type")
                if kind == "train":
                    row = [int(r["step"]), float(r["loss"]), float(r.get("lr") or 0.0), _num(r.get("tokens_per_sec")),
                           float(r.get("time") or 0.0)]
                    self._add(pending.train, row, TRAIN_COLUMNS, pending)
                elif kind == "eval":
                    row = [int(r["step"]), float(r["train_loss"]), float(r["val_loss"]), _num(r.get("val_bpb"))]
                    self._add(pending.evals, row, EVAL_COLUMNS, pending)
                elif kind == "sample":
                    self.sample_step, self.sample_text = int(r["step"]), str(r.get("text", ""))
                else:
                    continue
            except (KeyError, TypeError, ValueError):
                continue  # a malformed record is skipped, like a torn line
            changed = True
        self._flush(pending)
        if changed:
            self.version += 1
        return changed

    def _add(self, lists: list[list[float]], row: list[float], names: tuple[str, ...], pending: _Pending) -> None:
        """Queue one record; a step at or before the last one (a resumed run re-logging from
        its checkpoint) first drops everything from that step on."""
        last = lists[0][-1] if lists[0] else (self._cols[names[0]].view()[-1] if self._cols[names[0]].n else None)
        if last is not None and row[0] <= last:
            self._flush(pending)
            steps = self._cols[names[0]].view()
            keep = int(np.searchsorted(steps, row[0], side="left")) if np.all(np.diff(steps) > 0) else int(np.sum(steps < row[0]))
            for name in names:
                self._cols[name].truncate(keep)
        for lst, value in zip(lists, row):
            lst.append(value)

    def _flush(self, pending: _Pending) -> None:
        for names, lists in ((TRAIN_COLUMNS, pending.train), (EVAL_COLUMNS, pending.evals)):
            if lists[0]:
                for name, lst in zip(names, lists):
                    self._cols[name].append(lst)
                    lst.clear()

    def prepend(self, head: "MetricSeries") -> None:
        """Put `head` (the records logged before this series' first) in front; head steps at
        or after this series' first step are dropped, as a resumed run's re-logging would."""
        for names in (TRAIN_COLUMNS, EVAL_COLUMNS):
            mine, theirs = self._cols[names[0]].view(), head._cols[names[0]].view()
            keep = theirs.size if not mine.size else int(np.sum(theirs < mine[0]))
            for name in names:
                col = Column(self._cols[name]._data.dtype)
                col.append(np.concatenate([head._cols[name].view()[:keep], self._cols[name].view()]))
                self._cols[name] = col
        if self.sample_step is None:
            self.sample_step, self.sample_text = head.sample_step, head.sample_text
        self.version += 1

    def copy(self) -> "MetricSeries":
        """A snapshot whose arrays the watcher's later `extend` calls do not touch (O(1))."""
        out = MetricSeries.__new__(MetricSeries)
        out.__dict__.update(self.__dict__)
        out._frozen = {name: col.view() for name, col in self._cols.items()}
        out.scores = dict(self.scores)
        return out

    def steps_per_sec(self, window: int = 20) -> float | None:
        """Recent wall-clock training speed (evaluations included), for the ETA."""
        steps, times = self.train_step, self.train_time
        n = min(window, len(steps) - 1)
        if n < 1:
            return None
        ds = float(steps[-1] - steps[-1 - n])
        dt = float(times[-1] - times[-1 - n])
        return ds / dt if ds > 0 and dt > 0 else None


def _train_columns(rs: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    """The train columns of records (as `_extend_slowly` reads each; missing numbers NaN)."""
    return (np.array([r["step"] for r in rs], dtype=np.int64), np.array([r["loss"] for r in rs], dtype=np.float64),
            np.array([r.get("lr") or 0.0 for r in rs], dtype=np.float64),
            np.array([r.get("tokens_per_sec") for r in rs], dtype=np.float64),
            np.array([r.get("time") or 0.0 for r in rs], dtype=np.float64))


def _eval_columns(rs: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    return (np.array([r["step"] for r in rs], dtype=np.int64), np.array([r["train_loss"] for r in rs], dtype=np.float64),
            np.array([r["val_loss"] for r in rs], dtype=np.float64), np.array([r.get("val_bpb") for r in rs], dtype=np.float64))


def _num(value: Any) -> float:
    """An optional number of a record (NaN where it has none)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
