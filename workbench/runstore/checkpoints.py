"""Checkpoint files in a run's `checkpoints/` folder: which are complete, which are damaged.

A checkpoint is found by listing the folder, never from an index: its weights file is
written last (after its training state), atomically, so a weights file with a readable
header that covers the whole file and names its own step marks a complete checkpoint. A
file with a checkpoint's name that is not complete is damaged (an atomic write never
leaves one; a killed write leaves a `.tmp`), and is reported rather than skipped quietly.
Retention decides which checkpoints stay; only the run's owner (`RunWriter`) calls it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptbench.runstore.format import CHECKPOINT_RE, STATE_RE, TMP_SUFFIX, state_file


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint: its step, its validation loss (None if never evaluated)
    and its weights file."""

    step: int
    val_loss: float | None
    path: Path  # the weights file; its training state is `state_path`

    @property
    def state_path(self) -> Path:
        return self.path.with_name(state_file(self.step))


def find_damaged_checkpoints(directory: Path) -> list[tuple[int, Path, str]]:
    """Weights files with a checkpoint's name that are not complete: (step, path, why).
    An atomic write never leaves one (a killed write leaves a `.tmp`), so these are
    damaged files, shown to the user rather than silently skipped."""
    from gptbench.backends.weights import WeightsError, read_header

    out = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        m = CHECKPOINT_RE.match(entry.name)
        if not m:
            continue
        try:
            read_header(entry.path)
        except (WeightsError, OSError) as exc:
            out.append((int(m.group(1)), Path(entry.path), str(exc)))
    return sorted(out)


def find_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """The complete checkpoints in `directory`, oldest first, found by listing it.

    A checkpoint is complete when its weights file (written last, after its state) has a
    readable header that covers the whole file and names its own step. Version 1 runs
    kept val losses only in `index.json`; it is read for them and for nothing else."""
    from gptbench.backends.weights import WeightsError, read_header

    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    legacy: dict[int, float | None] = {}
    out = []
    for entry in entries:
        m = CHECKPOINT_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        step = int(m.group(1))
        try:
            _, meta, _ = read_header(entry.path)
        except (WeightsError, OSError):
            continue  # incomplete or damaged: not a checkpoint
        if meta.get("step", str(step)) != str(step):
            continue  # a renamed file: its header names another step
        val = _float_or_none(meta.get("val_loss"))
        if val is None and "val_loss" not in meta:
            if not legacy:
                legacy = _legacy_index(Path(directory) / "index.json")
            val = legacy.get(step)
        out.append(CheckpointInfo(step, val, Path(entry.path)))
    return sorted(out, key=lambda c: c.step)


def _float_or_none(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _legacy_index(path: Path) -> dict[int, float | None]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return {int(e["step"]): _float_or_none(e.get("val_loss")) for e in entries}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {-1: None}  # unreadable or absent: remember that it was looked at


def retain_checkpoints(directory: Path, keep_last: int) -> None:
    """Keep the last `keep_last` complete checkpoints and the best (lowest val loss);
    delete every other checkpoint file, orphaned state file and temporary file. Working
    from a listing, it also removes what killed writes left behind."""
    complete = find_checkpoints(directory)
    keep = {c.step for c in complete[-max(1, keep_last):]}
    scored = [c for c in complete if c.val_loss is not None]
    if scored:
        keep.add(min(scored, key=lambda c: c.val_loss).step)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = CHECKPOINT_RE.match(name) or STATE_RE.match(name)
        if (m and int(m.group(1)) not in keep) or name.endswith(TMP_SUFFIX) or name == "index.json":
            (directory / name).unlink(missing_ok=True)
