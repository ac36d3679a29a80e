"""The `--data` grammar and the corpora it names: documents in, before any tokenizer.

`DATA_FORMS` is the one description of the grammar (the CLI help renders it):
  default | pystdlib     the running Python's own standard-library sources: offline and
                         deterministic, capped at 4 MiB
  tinyshakespeare        downloaded once into the cache (SHA-256 checked)
  PATH | FOLDER | GLOB   UTF-8 text files (a folder recursively, sorted; hidden and binary
                         files skipped); one document per file
  FILE.jsonl[#FIELD]     records through `datasets` (.jsonl/.json/.parquet/.csv; field
                         `text` by default), see `gptbench.data.hub`
  hf:NAME[:CONFIG][:SPLIT][#FIELD]   a Hugging Face dataset, streamed (`gptbench.data.hub`)

A text file and the default corpus are read eagerly, validated and hashed; folders and globs
of text files are hashed in one pass and streamed file by file after it; record files and hub
datasets stream.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import os
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from gptbench import paths
from gptbench.data.corpus import DOC_SEPARATOR, Corpus
from gptbench.errors import UserError
from gptbench.fsutil import atomic_write_bytes, cleanup_on_error
from gptbench.paths import default_cache_dir

PYSTDLIB_CAP_BYTES = 4 << 20
PYSTDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
     "encodings", "idlelib", "lib2to3", "ensurepip", "turtledemo", "pydoc_data"}
)
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DOWNLOAD_TIMEOUT_S = 10.0
STRUCTURED = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# (form, what it is, the short name errors use): the one description of the grammar;
# `--data`'s help and the error for a path that does not exist are both made from it.
DATA_FORMS = (
    ("default", "the running Python's standard-library sources (offline)", "default"),
    ("tinyshakespeare", "downloaded once, SHA-256 checked", "tinyshakespeare"),
    ("PATH | FOLDER | 'GLOB'", "UTF-8 text files, one document per file", "a text file, a folder, a glob like 'data/*.txt'"),
    ("FILE.jsonl#FIELD", "records (.jsonl/.json/.parquet/.csv), field `text` by default",
     "FILE.jsonl#FIELD (.jsonl/.json/.parquet/.csv)"),
    ("hf:NAME[:CONFIG][:SPLIT][#FIELD]", "a Hugging Face dataset, streamed", "hf:NAME[:CONFIG][:SPLIT][#FIELD]"),
)
SPEC_HELP = ", ".join(short for _, _, short in DATA_FORMS[:-1]) + ", or " + DATA_FORMS[-1][2]


def absolute_spec(spec: str | None) -> str | None:
    """The spec with a local path made absolute (globs and #FIELD kept), so a run records
    where its corpus is and resumes from any working directory."""
    s = (spec or "").strip()
    if not s or s in ("default", "pystdlib", "tinyshakespeare") or s.startswith("hf:"):
        return spec
    path_part, sep, field_ = s, "", ""
    if "#" in s and not Path(s).expanduser().exists():
        path_part, sep, field_ = s.rpartition("#")
    return os.path.abspath(os.path.expanduser(path_part)) + sep + field_


def data_help() -> str:
    """`--data`'s help text."""
    return "the corpus: " + "; ".join(f"{form} ({what})" for form, what, _ in DATA_FORMS)


def load_corpus(
    spec: str | None,
    *,
    cache_dir: Path | None = None,
    max_docs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Corpus:
    """Resolve a `--data` spec into a Corpus (the forms are `DATA_FORMS`)."""
    say = progress or (lambda _msg: None)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    s = (spec or "").strip()
    if s in ("", "default", "pystdlib"):
        return _pystdlib_corpus(max_docs)
    if s == "tinyshakespeare":
        path = _fetch_tinyshakespeare(cache_root, say)
        docs = [_read_text_file(path, shown="tinyshakespeare")]
        return _text_corpus("tinyshakespeare", "tinyshakespeare", "tinyshakespeare", docs, max_docs)
    if s.startswith("hf:"):
        from gptbench.data.hub import hf_corpus

        return hf_corpus(s, max_docs)
    return _path_corpus(s, max_docs)


class _ContentKey:
    """The identity of local text, fed a document at a time: the SHA-256 of the documents
    joined by `DOC_SEPARATOR`, and a key that also covers where they split."""

    def __init__(self) -> None:
        self.text, self.lengths, self.n_bytes, self.n_docs = hashlib.sha256(), hashlib.sha256(), 0, 0

    def add(self, doc: str) -> None:
        b = doc.encode("utf-8")
        if self.n_docs:
            self.text.update(DOC_SEPARATOR.encode())
        self.text.update(b)
        self.lengths.update(len(b).to_bytes(8, "little"))
        self.n_bytes += len(b)
        self.n_docs += 1

    def key(self) -> str:
        return hashlib.sha256(f"text:{self.text.hexdigest()}:{self.lengths.hexdigest()}".encode()).hexdigest()


def _text_corpus(spec: str, name: str, source: str, docs: list[str], max_docs: int | None, **details: Any) -> Corpus:
    if max_docs is not None:
        docs = docs[:max_docs]
    content = _ContentKey()
    for d in docs:
        content.add(d)
    return Corpus(spec, name, source, content.key(), docs_list=docs, sha256=content.text.hexdigest(),
                  n_bytes=content.n_bytes, details=details)


def _streamed_text_corpus(spec: str, name: str, source: str, files: list[Path], max_docs: int | None, path_part: str) -> Corpus:
    """Text files, one document each, never all in memory: one pass now picks the readable
    files and hashes them (the same key as `_text_corpus` gives the same text), and every
    later pass (BPE training, the token cache) reads them again one at a time. A file that
    can be read only once (a FIFO) is held from the first pass."""
    content, skipped = _ContentKey(), 0
    kept: list[Path | str] = []  # a path to read again, or the text of a file that reads once (a FIFO)
    for f in files:
        if max_docs is not None and len(kept) >= max_docs:
            break
        text = _try_read_text(f)
        if text is None:
            skipped += 1
            continue
        content.add(text)
        kept.append(f if f.is_file() else text)
    if not kept:
        raise UserError(
            f"{path_part}: no text to train on ({len(files)} files, all empty, binary or not UTF-8); "
            f"pass UTF-8 text files"
        )

    def stream() -> Iterator[str]:
        for f in kept:
            if isinstance(f, str):
                yield f
                continue
            text = _try_read_text(f)
            if text is None:
                raise UserError(f"{f} became unreadable, binary or not UTF-8 while the corpus was read; restore it")
            yield text

    return Corpus(spec, name, source, content.key(), stream=stream, sha256=content.text.hexdigest(), n_bytes=content.n_bytes,
                  doc_count=len(kept), rereadable=True, details={"files": len(kept), "skipped_files": skipped})


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _read_text_file(path: Path, *, shown: str | None = None) -> str:
    """A file the user named: its text, or a UserError saying why it is not usable."""
    shown = shown or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{shown} does not exist; pass an existing file with --data") from None
    except PermissionError:
        raise UserError(f"{shown} is not readable (permission denied); fix its permissions") from None
    except OSError as exc:
        raise UserError(f"cannot read {shown}: {exc.strerror}") from None
    if not raw.strip():
        raise UserError(f"{shown} is empty; pass a file with some text in it")
    if _is_binary(raw[:65536]):
        raise UserError(f"{shown} looks binary (it contains NUL bytes), not text; pass a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{shown} is not UTF-8 text (invalid byte at offset {exc.start}; binary?); "
            f"pass a UTF-8 text file or convert it (e.g. iconv -t UTF-8)"
        ) from None


def _try_read_text(path: Path) -> str | None:
    """A file found in a folder/glob: its text, or None if empty, binary or not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not raw.strip() or _is_binary(raw[:65536]):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _path_corpus(spec: str, max_docs: int | None) -> Corpus:
    path_part, text_field = spec, None
    if "#" in spec and not Path(spec).expanduser().exists():
        path_part, _, text_field = spec.rpartition("#")
        if not text_field:
            raise UserError(f"{spec}: empty field after '#'; write FILE.jsonl#FIELD or drop the '#'")
    expanded = os.path.expanduser(path_part)
    p = Path(expanded)
    if globmod.has_magic(expanded) and not p.exists():
        matches = sorted(Path(m) for m in globmod.glob(expanded, recursive=True))
        files = [m for m in matches if m.is_file() and not m.name.startswith(".")]
        if not files:
            raise UserError(f"{path_part}: no files match this pattern; check the glob (quote it so the shell leaves it alone)")
        source, name = "glob", path_part
    elif p.is_dir():
        files = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
        files.sort(key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise UserError(f"{path_part} is an empty folder; pass a folder holding text files")
        source, name = "folder", p.resolve().name or str(p)
    elif p.is_file():
        files, source, name = [p], "file", p.name
    else:
        raise UserError(f"{path_part}: no such file or folder; pass {SPEC_HELP}")

    kinds = {STRUCTURED.get(f.suffix.lower()) for f in files}
    if source != "folder" and None not in kinds:
        if len(kinds) > 1:
            raise UserError(f"{path_part} mixes {', '.join(sorted(kinds))} files; pass one format at a time")
        from gptbench.data.hub import records_corpus

        return records_corpus(spec, name, files, kinds.pop(), text_field or "text", max_docs)
    if text_field is not None:
        raise UserError(f"{spec}: '#{text_field}' picks a field of .jsonl/.json/.parquet/.csv records, not of text files; drop it")

    if source == "file":
        docs = [_read_text_file(p, shown=path_part)]
        return _text_corpus(spec, name, source, docs, max_docs, files=1)
    return _streamed_text_corpus(spec, name, source, files, max_docs, path_part)


def _pystdlib_corpus(max_docs: int | None) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in PYSTDLIB_SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("."))
    files.sort(key=lambda f: f.relative_to(root).as_posix())
    docs: list[str] = []
    total = 0
    for f in files:
        if total >= PYSTDLIB_CAP_BYTES or (max_docs is not None and len(docs) >= max_docs):
            break
        text = _try_read_text(f)
        if text is not None:
            docs.append(text)
            total += len(text.encode("utf-8"))
    if not docs:
        raise UserError(f"the default corpus (Python's standard-library sources in {root}) is not available here; pass --data PATH")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _text_corpus("default", "pystdlib", "pystdlib", docs, None, python=version, files=len(docs))


def _fetch_tinyshakespeare(cache_root: Path, say: Callable[[str], None]) -> Path:
    target = cache_root / "downloads" / "tinyshakespeare.txt"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == TINYSHAKESPEARE_SHA256:
        return target
    url = paths.env(paths.TINYSHAKESPEARE_URL) or TINYSHAKESPEARE_URL
    say(f"downloading tinyshakespeare from {url}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"cannot download tinyshakespeare from {url} ({reason}); offline? "
            f"pass a local copy with --data PATH"
        ) from None
    got = hashlib.sha256(data).hexdigest()
    if got != TINYSHAKESPEARE_SHA256:
        raise UserError(
            f"tinyshakespeare from {url} has sha256 {got[:16]}..., expected {TINYSHAKESPEARE_SHA256[:16]}... "
            f"(corrupted or a different file); pass a local copy with --data PATH"
        )
    with cleanup_on_error(target.parent):
        atomic_write_bytes(target, data)
    return target
