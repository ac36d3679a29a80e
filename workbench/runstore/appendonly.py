"""Append-only line files (`metrics.jsonl`, `log.txt`, later record files): reading them
while they grow, and repairing a torn last line before anything is appended again.

A crash in the middle of an append leaves a last line without its newline. Readers stop
before it (the writer may still be mid-append). The run's owner repairs the tail before
its first append: it copies the fragment to `<file>.torn` (appended, fsynced), then cuts
the file back to its last complete line (fsynced), so the next record starts on a line
of its own instead of being glued to the fragment and lost. The copy comes first: a
crash between the two steps leaves the fragment in both places, never in neither.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from gptbench.fsutil import fsync_dir

TORN_SUFFIX = ".torn"  # `<file>.torn` keeps the fragments cut from `<file>`
_SCAN_CHUNK = 1 << 16  # bytes read at a time while looking back for the last newline


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of an append-only JSONL file; a torn or corrupt line is skipped."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn last line: the writer is mid-append
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    yield obj
    except (FileNotFoundError, IsADirectoryError):
        return


def _parse_lines(block: bytes) -> list[dict[str, Any]]:
    """The JSON objects of complete lines; one bad line costs only itself."""
    lines = [line for line in block.splitlines() if line.strip()]
    try:  # one parse for the whole block: much faster than a parse per line
        objs = json.loads(b"[" + b",".join(lines) + b"]")
    except (json.JSONDecodeError, UnicodeDecodeError):
        objs = []
    if len(objs) != len(lines):  # a bad line (or one holding two values): line by line
        objs = []
        for line in lines:
            try:
                objs.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return [obj for obj in objs if isinstance(obj, dict)]


def iter_jsonl_chunks(path: Path, start: int, end: int, chunk_bytes: int = 4 << 20) -> Iterator[list[dict[str, Any]]]:
    """The records of bytes [start, end) of a JSONL file (both at line starts), a list per
    chunk of about `chunk_bytes`, so a long file is read a piece at a time."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        f.seek(start)
        pos, rest = start, b""
        while pos < end:
            data = rest + f.read(min(chunk_bytes, end - pos))
            if len(data) == len(rest):
                return  # the file shrank under us
            pos += len(data) - len(rest)
            cut = data.rfind(b"\n") + 1 if pos < end else len(data)
            rest = data[cut:]
            yield _parse_lines(data[:cut])


class JsonlTail:
    """Incremental reader of an append-only JSONL file: `poll()` returns only new records.

    Keeps the byte offset of the last complete line, so a torn line is re-read once it is
    complete; a file that shrank or was replaced (a resume rewinds the metrics, a repair
    cuts a torn tail) restarts from the beginning.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None
        self.restarts = 0  # times the file shrank or was replaced and reading began again

    def start_near_end(self, max_bytes: int) -> int:
        """Before the first poll of a long file: skip all but about its last `max_bytes`, so
        the next poll starts at the first line beginning there. Returns the offset where the
        skipped head ends (0 when nothing was skipped); `iter_jsonl_chunks` reads it later."""
        try:
            st = self.path.stat()
        except OSError:
            return 0
        if st.st_size <= max_bytes:
            return 0
        with open(self.path, "rb") as f:
            start = st.st_size - max_bytes
            for at in range(start, st.st_size, _SCAN_CHUNK):
                f.seek(at)
                newline = f.read(_SCAN_CHUNK).find(b"\n")
                if newline >= 0:
                    self.offset, self.inode = at + newline + 1, st.st_ino
                    return self.offset
        return 0

    def poll(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except OSError:
            return []
        if st.st_size < self.offset or (self.inode is not None and st.st_ino != self.inode):
            self.offset = 0
            self.restarts += 1
        self.inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(st.st_size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return _parse_lines(chunk[: end + 1])


@dataclass(frozen=True)
class TornTail:
    """What `repair_tail` cut from a file: the fragment and where it was kept."""

    path: Path
    fragment: bytes
    kept_in: Path

    def describe(self) -> str:
        """One log line saying what happened and where the bytes went."""
        return (f"{self.path.name} ended in a torn line ({len(self.fragment)} bytes, a write cut short by a crash); "
                f"cut it back to its last complete line and kept the fragment in {self.kept_in.name}")


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline in the first `size` bytes of `fd` (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN_CHUNK)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def repair_tail(path: Path) -> TornTail | None:
    """Cut `path` back to its last complete line, keeping what follows it in
    `<path>.torn`; None when the file is absent, empty or already ends with a newline."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        cut = _last_line_end(fd, size)
        fragment = os.pread(fd, size - cut, cut)
        kept_in = path.with_name(path.name + TORN_SUFFIX)
        _append_synced(kept_in, fragment + b"\n")
        os.ftruncate(fd, cut)
        os.fsync(fd)
    finally:
        os.close(fd)
    return TornTail(path, fragment, kept_in)


def _append_synced(path: Path, data: bytes) -> None:
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(path.parent)
