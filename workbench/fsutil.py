"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Crash points for fault-injection tests: with `GPTBENCH_FAULT_KILL=WHEN:N[:NAME]` the
process sends itself SIGKILL just before (WHEN=before) or after (after) the N-th rename of
an atomically written file whose name ends with NAME (default `.safetensors`: the moments a
checkpoint is most fragile; `config.json` or `status.json` reach the others). Unset, it
costs one comparison per write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _default_mode() -> int:
    """The mode a plain `open(path, "w")` would give (0o666 less the umask); mkstemp
    would otherwise leave every atomically written file owner-only (0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_mode()
_DIR_MODE = _FILE_MODE | ((_FILE_MODE & 0o444) >> 2)  # rw-r--r-- -> rwxr-xr-x
TMP_DIR_SUFFIX = ".tmpdir"


def _fault_plan() -> tuple[str, int, str] | None:
    when, _, rest = (os.environ.get("GPTBENCH_FAULT_KILL") or "").partition(":")
    n, _, name = rest.partition(":")
    return (when, int(n), name or ".safetensors") if when in ("before", "after") and n.isdigit() else None


_FAULT = _fault_plan()
_renames = 0


def _count_rename(target: Path) -> None:
    global _renames
    _renames += _FAULT is not None and target.name.endswith(_FAULT[2])


def _crash_point(target: Path, when: str) -> None:
    if _FAULT is not None and target.name.endswith(_FAULT[2]) and _FAULT[:2] == (when, _renames):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _FILE_MODE)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _count_rename(target)
        _crash_point(target, "before")
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
        _crash_point(target, "after")
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def cleanup_on_error(*dirs: Path) -> Iterator[None]:
    """On error, remove the folders among `dirs` (and their parents) that this call
    created and that are still empty; folders that existed before are never touched."""
    created = []
    for d in dirs:
        for p in [d, *d.parents]:
            if not p.exists():
                created.append(p)
    try:
        yield
    except BaseException:
        for p in sorted(created, key=lambda q: len(q.parts), reverse=True):
            with contextlib.suppress(OSError):
                p.rmdir()  # only succeeds if empty
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `path`; on success give it the usual modes, fsync it
    and move it onto `path` (an existing folder there is swapped out only with `replace`).
    On any exception the staging folder is removed and `path` is left untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_DIR_SUFFIX, dir=target.parent))
    try:
        yield stage
        os.chmod(stage, _DIR_MODE)  # mkdtemp makes it owner-only
        for sub in stage.rglob("*"):
            if sub.is_dir():
                os.chmod(sub, _DIR_MODE)
                fsync_dir(sub)
        fsync_dir(stage)
        _swap_in(stage, target, replace)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_in(stage: Path, target: Path, replace: bool) -> None:
    if target.exists() or target.is_symlink():
        if not replace:
            raise FileExistsError(errno.EEXIST, "already exists", str(target))
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        try:
            os.rename(stage, target)
        except BaseException:
            os.rename(old, target)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.rename(stage, target)
    fsync_dir(target.parent)
