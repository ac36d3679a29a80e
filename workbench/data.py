"""Corpora in, token ids out: `prepare_data` (tokenize once, cache as memmap) and `get_batch`.

Corpus specs (`--data`):
  default | None        the running Python's own standard-library sources (`pystdlib`),
                        offline and deterministic, capped at 4 MiB
  tinyshakespeare       downloaded once into the cache (SHA-256 checked)
  PATH | FOLDER | GLOB  UTF-8 text files (a folder recursively, sorted; hidden and binary
                        files skipped); one document per file
  FILE.jsonl[#FIELD]    records through `datasets` (.jsonl/.json/.parquet/.csv; field
                        `text` by default)
  hf:NAME[:CONFIG][:SPLIT][#FIELD]   a Hugging Face dataset, streamed

Documents are separated by the tokenizer's `<|endoftext|>` when it has one, else by a
blank line. The token ids live in the cache (`default_cache_dir()/tokens/<entry>/`):
`tokens.bin` (uint16 when the vocabulary fits, else uint32, read back as np.memmap), the
tokenizer that produced them, and `index.json` (written last: an entry without it does
not exist). An entry is keyed by the corpus content (or, for streamed Hugging Face sets,
the spec) and the tokenizer; the index's tokenizer fingerprint is checked on reuse, so a
cache written by another tokenizer is rebuilt. Validation and length errors raise
`UserError` before anything is committed to the cache.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import hashlib
import json
import operator
import os
import re
import socket
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from gptbench.errors import UserError
from gptbench.fsutil import atomic_path, atomic_write_bytes, atomic_write_json
from gptbench.tokenizers.base import Tokenizer
from gptbench.tokenizers.pieces import split_text

__all__ = [
    "PreparedData",
    "Corpus",
    "prepare_data",
    "get_batch",
    "default_cache_dir",
    "load_corpus",
    "token_dtype",
]

CACHE_VERSION = 1
DOC_SEPARATOR = "\n\n"  # between documents for tokenizers without an eot token
PYSTDLIB_CAP_BYTES = 4 << 20
PYSTDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
     "encodings", "idlelib", "lib2to3", "ensurepip", "turtledemo", "pydoc_data"}
)
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
ENV_TINYSHAKESPEARE_URL = "GPTBENCH_TINYSHAKESPEARE_URL"
DOWNLOAD_TIMEOUT_S = 10.0
HF_TIMEOUT_S = 60.0
STRUCTURED = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PIECE_CHARS = 1 << 20  # text is tokenized in pieces of about this many characters
BATCH_CHARS = 8 << 20  # ...and written in batches of about this many
SPEC_HELP = (
    "default, tinyshakespeare, a text file, a folder, a glob like 'data/*.txt', "
    "FILE.jsonl#FIELD (.jsonl/.json/.parquet/.csv), or hf:NAME[:CONFIG][:SPLIT][#FIELD]"
)


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    train: np.ndarray  # 1-D token ids, np.memmap (uint16 if the vocab fits, else uint32)
    val: np.ndarray
    tokenizer: Tokenizer
    info: dict[str, Any]  # JSON-able: spec, name, sha256, bytes, n_docs, tokens, cache, ...


def default_cache_dir() -> Path:
    """$GPTBENCH_CACHE_DIR, else $XDG_CACHE_HOME/gptbench, else ~/.cache/gptbench."""
    env = os.environ.get("GPTBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "gptbench"
    return Path.home() / ".cache" / "gptbench"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def get_batch(
    data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` random windows: x = data[i:i+T], y = data[i+1:i+T+1], both int64 (B, T)."""
    n = len(data)
    if n < block_size + 1:
        raise UserError(
            f"{n} tokens cannot fill one block of {block_size} (+1 target); "
            f"use a bigger corpus or a smaller --block-size"
        )
    offsets = rng.integers(0, n - block_size, size=batch_size)
    idx = offsets[:, None] + np.arange(block_size + 1)
    window = np.asarray(data[idx], dtype=np.int64)  # one gather from the memmap
    return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def prepare_data(
    data_spec: str | None,
    tokenizer_spec: str = "char",
    *,
    block_size: int,
    val_fraction: float = 0.1,
    tokenizer: Tokenizer | None = None,
    cache_dir: Path | None = None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    num_proc: int = 1,
    progress: Callable[[str], None] | None = None,
) -> PreparedData:
    """Tokenize `data_spec` (or reuse the cached ids) and split it: train = head, val = tail.

    `tokenizer` (a resumed run's) is used instead of building one from `tokenizer_spec`.
    Raises UserError for a bad spec, an unreadable/empty/binary corpus, or a split with
    fewer than `block_size + 1` tokens.
    """
    say = progress or (lambda _msg: None)
    block_size = _positive_int("--block-size", block_size)
    max_docs = None if max_docs is None else _positive_int("--max-docs", max_docs)
    max_tokens = None if max_tokens is None else _positive_int("--max-tokens", max_tokens)
    if not 0.0 < float(val_fraction) < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    num_proc = max(1, int(num_proc or 1))
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    # What the tokenizer is, before building it (building char/bpe:N reads the corpus);
    # a bad tokenizer spec fails here, before any corpus is read or downloaded.
    built: Tokenizer | None = tokenizer
    if tokenizer is not None:
        tok_key, reuse_stored = "fp:" + tokenizer.fingerprint(), False
    else:
        tok_key, reuse_stored, built = _tokenizer_key(tokenizer_spec)

    corpus = load_corpus(data_spec, cache_dir=cache_root, max_docs=max_docs, progress=say)

    entry = _Entry(cache_root, corpus, tok_key, max_docs, max_tokens)
    # A resumed run's tokenizer usually is the one its spec derives from this corpus:
    # look in that entry first (the fingerprint must match exactly), then in its own.
    candidates = ([_Entry(cache_root, corpus, tokenizer.spec, max_docs, max_tokens)] if tokenizer is not None else []) + [entry]
    for candidate in candidates:
        hit = candidate.load(built, reuse_stored)
        if hit is not None:
            tokens, tok, index = hit
            say(f"reusing cached tokens {candidate.dir}")
            return _split(tokens, tok, index, candidate, block_size, val_fraction, cached=True)

    if built is None:
        built = _build_tokenizer(tokenizer_spec, corpus, say)
    tokens, index = entry.build(built, block_size, val_fraction, num_proc, say)
    return _split(tokens, built, index, entry, block_size, val_fraction, cached=False)


def _positive_int(label: str, value: Any) -> int:
    try:
        n = operator.index(value)  # int or numpy integer, not float or str
    except TypeError:
        n = 0
    if n < 1:
        raise UserError(f"{label} must be a positive integer, got {value!r}")
    return n


# ---------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """A source of documents. Local text is read eagerly (validated, hashed); records and
    Hugging Face sets are streamed (hashed while they are tokenized)."""

    spec: str  # canonical form
    name: str  # short display name (pystdlib, tinyshakespeare, file or folder name, ...)
    source: str  # pystdlib | tinyshakespeare | file | folder | glob | records | hf
    key: str  # identity for the token cache (content hash, or spec hash when streamed)
    docs_list: list[str] | None = None
    stream: Callable[[], Iterator[str]] | None = None
    sha256: str | None = None
    n_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_docs(self) -> int | None:
        return len(self.docs_list) if self.docs_list is not None else None

    def docs(self) -> Iterator[str]:
        if self.docs_list is not None:
            return iter(self.docs_list)
        assert self.stream is not None
        return self.stream()

    def materialize(self) -> list[str]:
        if self.docs_list is None:
            self.docs_list = list(self.docs())
            if not self.docs_list:
                raise UserError(f"{self.spec} holds no text documents; pass a corpus with text")
        return self.docs_list

    def text(self) -> str:
        return DOC_SEPARATOR.join(self.materialize())


def load_corpus(
    spec: str | None,
    *,
    cache_dir: Path | None = None,
    max_docs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Corpus:
    """Resolve a `--data` spec into a Corpus (see the module docstring for the forms)."""
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
        return _hf_corpus(s, max_docs)
    return _path_corpus(s, max_docs)


def _text_corpus(spec: str, name: str, source: str, docs: list[str], max_docs: int | None, **details: Any) -> Corpus:
    if max_docs is not None:
        docs = docs[:max_docs]
    h = hashlib.sha256()
    lengths = hashlib.sha256()
    n_bytes = 0
    for i, d in enumerate(docs):
        b = d.encode("utf-8")
        if i:
            h.update(DOC_SEPARATOR.encode())
        h.update(b)
        lengths.update(len(b).to_bytes(8, "little"))
        n_bytes += len(b)
    sha = h.hexdigest()
    key = hashlib.sha256(f"text:{sha}:{lengths.hexdigest()}".encode()).hexdigest()
    return Corpus(spec, name, source, key, docs_list=docs, sha256=sha, n_bytes=n_bytes, details=details)


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
        return _records_corpus(spec, name, files, kinds.pop(), text_field or "text", max_docs)
    if text_field is not None:
        raise UserError(f"{spec}: '#{text_field}' picks a field of .jsonl/.json/.parquet/.csv records, not of text files; drop it")

    if source == "file":
        docs = [_read_text_file(p, shown=path_part)]
        return _text_corpus(spec, name, source, docs, max_docs, files=1)
    docs, skipped = [], 0
    for f in files:
        if max_docs is not None and len(docs) >= max_docs:
            break
        text = _try_read_text(f)
        if text is None:
            skipped += 1
        else:
            docs.append(text)
    if not docs:
        raise UserError(
            f"{path_part}: no text to train on ({len(files)} files, all empty, binary or not UTF-8); "
            f"pass UTF-8 text files"
        )
    return _text_corpus(spec, name, source, docs, max_docs, files=len(docs), skipped_files=skipped)


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


# -- tinyshakespeare --------------------------------------------------------------------
def _fetch_tinyshakespeare(cache_root: Path, say: Callable[[str], None]) -> Path:
    target = cache_root / "downloads" / "tinyshakespeare.txt"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == TINYSHAKESPEARE_SHA256:
        return target
    url = os.environ.get(ENV_TINYSHAKESPEARE_URL) or TINYSHAKESPEARE_URL
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
    with _cleanup_on_error(target.parent):
        atomic_write_bytes(target, data)
    return target


# -- records through `datasets` ---------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _record_text(rec: dict[str, Any], text_field: str, where: str) -> str | None:
    if text_field not in rec:
        fields = ", ".join(map(str, rec.keys())) or "none"
        raise UserError(f"{where} has no field {text_field!r} (fields: {fields}); pick one with #FIELD")
    value = rec[text_field]
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"{where} field {text_field!r} holds {type(value).__name__}, not text; pick a text field with #FIELD")
    return value or None


def _iter_records(
    open_dataset: Callable[[], Any], text_field: str, where: str, max_docs: int | None, first_timeout: float | None = None
) -> Iterator[str]:
    """Documents from a streamed dataset: mapped errors, skipped empty texts, `max_docs`."""
    import logging

    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # its own error logs would repeat our one-line error
    try:
        ds = _with_timeout(open_dataset, first_timeout, where) if first_timeout else open_dataset()
        it = iter(ds)
        n = 0
        while max_docs is None or n < max_docs:
            try:
                rec = _with_timeout(lambda: next(it), first_timeout, where) if (first_timeout and n == 0) else next(it)
            except StopIteration:
                return
            text = _record_text(rec, text_field, where)
            if text is not None:
                n += 1
                yield text
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets/pyarrow raise many kinds
        raise UserError(f"cannot read {where}: {_first_line(exc)}") from None
    finally:
        ds_logger.setLevel(level)


def _records_corpus(spec: str, name: str, files: list[Path], builder: str, text_field: str, max_docs: int | None) -> Corpus:
    empty = [f for f in files if f.stat().st_size == 0]
    if len(empty) == len(files):
        raise UserError(f"{spec}: {'file is' if len(files) == 1 else 'files are'} empty; pass records with a {text_field!r} field")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0" + f.name.encode())
    key = hashlib.sha256(f"records:{builder}:{text_field}:{max_docs}:{h.hexdigest()}".encode()).hexdigest()
    data_files = [str(f) for f in files]
    where = spec.rpartition("#")[0] if "#" in spec and not Path(spec).exists() else spec

    def open_dataset():
        import datasets

        datasets.disable_progress_bars()
        return datasets.load_dataset(builder, data_files=data_files, split="train", streaming=True)

    def stream() -> Iterator[str]:
        return _iter_records(open_dataset, text_field, where, max_docs)

    return Corpus(spec, name, "records", key, stream=stream, details={"files": len(files), "field": text_field, "format": builder})


# -- Hugging Face hub --------------------------------------------------------------------
_SPLIT_RE = re.compile(r"^(train|test|validation|valid|dev|eval)(\[.*\])?$|.*\[.*\]$")


def parse_hf_spec(spec: str) -> tuple[str, str | None, str, str]:
    """`hf:NAME[:CONFIG][:SPLIT][#FIELD]` -> (name, config, split, field)."""
    body, _, text_field = spec[3:].partition("#")
    parts = re.split(r":(?![^\[]*\])", body)  # not the colon of a slice like train[:1000]
    name, rest = parts[0].strip(), parts[1:]
    if not name or any(not r for r in rest) or len(rest) > 2:
        raise UserError(f"{spec!r} is not hf:NAME[:CONFIG][:SPLIT][#FIELD] (e.g. hf:roneneldan/TinyStories:train#text)")
    config: str | None = None
    split = "train"
    if len(rest) == 1:
        if _SPLIT_RE.match(rest[0]):
            split = rest[0]
        else:
            config = rest[0]
    elif len(rest) == 2:
        config, split = rest
    return name, config, split, text_field or "text"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hf_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")


def _probe_hub(where: str, timeout: float = 5.0) -> None:
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    u = urllib.parse.urlparse(endpoint)
    host = u.hostname or "huggingface.co"
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"cannot reach {host} for {where} ({reason}); offline? pass a local file with --data PATH "
            f"(or set HF_DATASETS_OFFLINE=1 to use a copy in the Hugging Face cache)"
        ) from None


def _with_timeout(fn: Callable[[], Any], timeout: float | None, where: str) -> Any:
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=work, name="gptbench-hf", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise UserError(f"{where}: no answer from the Hugging Face hub in {timeout:g} s; retry, or pass a local file with --data PATH")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hf_corpus(spec: str, max_docs: int | None) -> Corpus:
    name, config, split, text_field = parse_hf_spec(spec)
    canonical = f"hf:{name}" + (f":{config}" if config else "") + f":{split}#{text_field}"
    key = hashlib.sha256(f"hf:{canonical}:{max_docs}".encode()).hexdigest()
    timeout = float(os.environ.get("GPTBENCH_HF_TIMEOUT", HF_TIMEOUT_S))

    def open_dataset():
        import datasets

        datasets.disable_progress_bars()
        try:
            if _hf_offline():  # only the Hugging Face cache: no streaming, no network
                return datasets.load_dataset(name, config, split=split)
            return datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as exc:  # noqa: BLE001
            cls = type(exc).__name__
            if cls in ("DatasetNotFoundError", "FileNotFoundError", "RepositoryNotFoundError"):
                raise UserError(f"Hugging Face dataset {name!r} not found (or gated/private); check the name on huggingface.co/datasets") from None
            if _hf_offline() or "ConnectionError" in cls or "offline" in str(exc).lower():
                raise UserError(
                    f"{canonical} is not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); "
                    f"unset it to download, or pass a local file with --data PATH"
                ) from None
            raise UserError(f"cannot load {canonical}: {_first_line(exc)}") from None

    def stream() -> Iterator[str]:
        if not _hf_offline():
            _probe_hub(canonical)
        return _iter_records(open_dataset, text_field, canonical, max_docs, first_timeout=timeout)

    return Corpus(canonical, name, "hf", key, stream=stream, details={"config": config, "split": split, "field": text_field})


# ---------------------------------------------------------------------------------------
# tokenizers for a corpus
# ---------------------------------------------------------------------------------------
def _tokenizer_key(spec: str) -> tuple[str, bool, Tokenizer | None]:
    """(cache key part, may reuse the tokenizer stored in the entry, tokenizer if built now).

    char and bpe:N depend only on the corpus (part of the key); byte and gpt2 are fixed.
    Those reuse the stored tokenizer. bpe:PATH is built now: its file may have changed.
    """
    from gptbench.tokenizers.registry import build_tokenizer, parse_bpe_size

    s = (spec or "").strip()
    kind, sep, arg = s.partition(":")
    kind = kind.lower()
    if kind in ("char", "byte") and not sep:
        return kind, True, None
    if kind == "gpt2":  # gpt2:PATH is checked now (cheap, local); plain gpt2 may need the network
        return "gpt2", True, (build_tokenizer(s) if sep else None)
    if kind == "bpe" and arg:
        size = parse_bpe_size(arg)
        if size is not None:
            from gptbench.tokenizers.bpe import check_vocab_size

            check_vocab_size(size)
            return f"bpe:{size}", True, None
        tok = build_tokenizer(s)
        return f"path:{Path(arg).expanduser().resolve()}", False, tok
    build_tokenizer(s)  # raises the UserError listing the valid forms
    raise AssertionError("unreachable")


def _build_tokenizer(spec: str, corpus: Corpus, say: Callable[[str], None]) -> Tokenizer:
    from gptbench.tokenizers.registry import build_tokenizer, parse_bpe_size

    kind, _, arg = spec.strip().partition(":")
    size = parse_bpe_size(arg) if kind.lower() == "bpe" and arg else None
    if size is not None:
        from gptbench.tokenizers.bpe import train_bpe

        docs = corpus.materialize()
        t0 = time.perf_counter()
        tok = train_bpe((p for d in docs for p in split_text(d, 1 << 16)), size, progress=say)
        say(f"trained {tok.spec} in {time.perf_counter() - t0:.1f} s")
        return tok
    if kind.lower() == "char":
        corpus.materialize()
    return build_tokenizer(spec, corpus_text=corpus.text)


# ---------------------------------------------------------------------------------------
# the token cache
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _cleanup_on_error(*dirs: Path) -> Iterator[None]:
    """On error, remove the (empty) folders among `dirs` and their parents that we created."""
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "corpus"


class _Entry:
    """One cache entry: tokens/<slug>-<key>/{index.json, tokens.bin, tokenizer.json, ...}."""

    def __init__(self, root: Path, corpus: Corpus, tok_key: str, max_docs: int | None, max_tokens: int | None):
        self.root = root
        self.corpus = corpus
        self.tok_key = tok_key
        material = json.dumps(
            {"v": CACHE_VERSION, "corpus": corpus.key, "tokenizer": tok_key, "max_docs": max_docs, "max_tokens": max_tokens},
            sort_keys=True,
        )
        self.key = hashlib.sha256(material.encode()).hexdigest()[:24]
        slug = _slug(f"{corpus.name}-{tok_key.split(':')[0] if tok_key.startswith(('fp:', 'path:')) else tok_key}")
        self.dir = root / "tokens" / f"{slug}-{self.key}"
        self.max_tokens = max_tokens

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    @property
    def tokens_path(self) -> Path:
        return self.dir / "tokens.bin"

    def load(self, tokenizer: Tokenizer | None, reuse_stored: bool) -> tuple[np.ndarray, Tokenizer, dict] | None:
        """The cached (tokens, tokenizer, index), or None if absent, stale or foreign."""
        from gptbench.tokenizers.registry import load_tokenizer

        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        try:
            if index.get("version") != CACHE_VERSION or index.get("corpus_key") != self.corpus.key:
                return None
            fp = index["tokenizer_fingerprint"]
            if tokenizer is not None:
                if tokenizer.fingerprint() != fp:
                    return None  # written by another tokenizer: rebuild
                tok = tokenizer
            elif reuse_stored:
                tok = load_tokenizer(self.dir)
                if tok.fingerprint() != fp:
                    return None
            else:
                return None
            dtype = token_dtype(tok.vocab_size)
            n = int(index["tokens"])
            if index.get("dtype") != dtype.name or self.tokens_path.stat().st_size != n * dtype.itemsize or n < 1:
                return None
            tokens = np.memmap(self.tokens_path, dtype=dtype, mode="r", shape=(n,))
        except (OSError, KeyError, ValueError, TypeError, UserError):
            return None
        return tokens, tok, index

    def build(
        self, tok: Tokenizer, block_size: int, val_fraction: float, num_proc: int, say: Callable[[str], None]
    ) -> tuple[np.ndarray, dict]:
        dtype = token_dtype(tok.vocab_size)
        corpus = self.corpus
        t0 = time.perf_counter()
        say(f"tokenizing {corpus.name} with {tok.spec} ({num_proc} thread{'s' if num_proc > 1 else ''})")
        with _cleanup_on_error(self.dir):
            with atomic_path(self.tokens_path) as tmp:
                known = corpus.sha256 is not None  # local text: hashed when it was read
                stats = _tokenize_to_file(tok, corpus.docs(), tmp, dtype, num_proc, self.max_tokens, say, hash_docs=not known)
                if known:
                    stats.update(sha256=corpus.sha256, bytes=corpus.n_bytes)
                if stats["tokens"] == 0:
                    raise UserError(f"{corpus.spec}: the corpus is empty after filtering (no text documents); pass a corpus with text")
                _check_split(stats["tokens"], block_size, val_fraction, corpus.name)
            tok.save(self.dir)
            index = {
                "version": CACHE_VERSION,
                "spec": corpus.spec,
                "name": corpus.name,
                "source": corpus.source,
                "corpus_key": corpus.key,
                "sha256": stats["sha256"],
                "bytes": stats["bytes"],
                "n_docs": stats["n_docs"],
                "tokens": stats["tokens"],
                "truncated": stats["truncated"],
                "dtype": dtype.name,
                "tokenizer": tok.spec,
                "tokenizer_key": self.tok_key,
                "tokenizer_fingerprint": tok.fingerprint(),
                "details": corpus.details,
                "seconds": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_json(self.index_path, index)
        say(f"tokenized {stats['bytes'] / 1e6:.1f} MB into {stats['tokens']:,} tokens in {index['seconds']:.1f} s")
        tokens = np.memmap(self.tokens_path, dtype=dtype, mode="r", shape=(stats["tokens"],))
        return tokens, index


def _tokenize_to_file(
    tok: Tokenizer,
    docs: Iterable[str],
    path: Path,
    dtype: np.dtype,
    num_proc: int,
    max_tokens: int | None,
    say: Callable[[str], None],
    *,
    hash_docs: bool = True,
) -> dict[str, Any]:
    """Stream documents -> ids written to `path` batch by batch; never holds all ids."""
    eot = tok.eot_id
    sep_cache: list[np.ndarray] = []

    def sep() -> np.ndarray:  # lazily: a one-document corpus needs no separator
        if not sep_cache:
            ids = [eot] if eot is not None else tok.encode_arrays([DOC_SEPARATOR])[0]
            sep_cache.append(np.asarray(ids).astype(dtype))
        return sep_cache[0]

    sha = hashlib.sha256()
    n_bytes = n_docs = n_tokens = 0
    truncated = False
    batch: list[str] = []
    new_doc: list[bool] = []
    batch_chars = 0
    last_report = time.perf_counter()

    with open(path, "wb") as f:

        def flush() -> bool:
            nonlocal n_tokens, batch_chars, truncated, last_report
            if not batch:
                return True
            arrays = tok.encode_arrays(batch, num_threads=num_proc)
            parts: list[np.ndarray] = []
            for starts_doc, ids in zip(new_doc, arrays):
                if starts_doc:
                    parts.append(sep())
                parts.append(ids)
            out = np.concatenate(parts).astype(dtype, copy=False) if len(parts) > 1 else parts[0].astype(dtype, copy=False)
            if max_tokens is not None and n_tokens + len(out) >= max_tokens:
                truncated = n_tokens + len(out) > max_tokens
                out = out[: max_tokens - n_tokens]
            f.write(out.tobytes())
            n_tokens += len(out)
            batch.clear()
            new_doc.clear()
            batch_chars = 0
            if time.perf_counter() - last_report > 2.0:
                say(f"  {n_docs:,} documents, {n_tokens:,} tokens")
                last_report = time.perf_counter()
            return max_tokens is None or n_tokens < max_tokens

        going = True
        for doc in docs:
            if not doc:
                continue
            if hash_docs:  # streamed sources are hashed as they go by
                b = doc.encode("utf-8", errors="replace")
                if n_docs:
                    sha.update(DOC_SEPARATOR.encode())
                sha.update(b)
                n_bytes += len(b)
            for j, piece in enumerate(split_text(doc, PIECE_CHARS)):
                batch.append(piece)
                new_doc.append(n_docs > 0 and j == 0)
                batch_chars += len(piece)
                if batch_chars >= BATCH_CHARS * num_proc and not (going := flush()):
                    break
            n_docs += 1
            if not going:
                break
        if going:
            flush()
    return {"sha256": sha.hexdigest(), "bytes": n_bytes, "n_docs": n_docs, "tokens": n_tokens, "truncated": truncated}


def _split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    n_train = int(n * (1.0 - val_fraction))
    return n_train, n - n_train


def _check_split(n: int, block_size: int, val_fraction: float, name: str) -> None:
    n_train, n_val = _split_sizes(n, val_fraction)
    for label, count in (("train", n_train), ("val", n_val)):
        if count < block_size + 1:
            raise UserError(
                f"corpus too short: {name} has {n:,} tokens, so the {label} split gets {count:,} but "
                f"--block-size {block_size} needs at least {block_size + 1}; use a bigger corpus or a "
                f"smaller --block-size/--val-fraction"
            )


def _split(
    tokens: np.ndarray, tok: Tokenizer, index: dict, entry: _Entry, block_size: int, val_fraction: float, *, cached: bool
) -> PreparedData:
    n = len(tokens)
    _check_split(n, block_size, val_fraction, entry.corpus.name)
    n_train, n_val = _split_sizes(n, val_fraction)
    info = {
        "spec": entry.corpus.spec,
        "name": entry.corpus.name,
        "source": entry.corpus.source,
        "sha256": index["sha256"],
        "bytes": index["bytes"],
        "n_docs": index["n_docs"],
        "tokens": n,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "val_fraction": val_fraction,
        "truncated": index.get("truncated", False),
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "dtype": index["dtype"],
        "bytes_per_token": round(index["bytes"] / n, 4) if n else None,
        "cache": str(entry.dir),
        "cached": cached,
        **{k: v for k, v in entry.corpus.details.items() if k not in ("format",)},
    }
    return PreparedData(train=tokens[:n_train], val=tokens[n_train:], tokenizer=tok, info=info)
