"""Corpora read through the `datasets` library: record files and Hugging Face hub sets.

Both stream: documents are hashed while they are tokenized. Hub access is bounded in
time (`$GPTBENCH_HF_TIMEOUT` for the first answer) and maps every failure to one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

from gptbench import paths
from gptbench.data.corpus import Corpus
from gptbench.errors import UserError

HF_TIMEOUT_S = 60.0


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


def iter_dataset(open_dataset: Callable[[], Any], where: str, first_timeout: float | None = None) -> Iterator[Any]:
    """The records of a dataset `open_dataset` opens: every failure one UserError naming
    `where`, the first answer bounded by `first_timeout` seconds (hub sets)."""
    import logging

    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # its own error logs would repeat our one-line error
    try:
        ds = _with_timeout(open_dataset, first_timeout, where) if first_timeout else open_dataset()
        it = iter(ds)
        first = True
        while True:
            try:
                rec = _with_timeout(lambda: next(it), first_timeout, where) if (first_timeout and first) else next(it)
            except StopIteration:
                return
            first = False
            yield rec
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets/pyarrow raise many kinds
        raise UserError(f"cannot read {where}: {_first_line(exc)}") from None
    finally:
        ds_logger.setLevel(level)


def _iter_records(
    open_dataset: Callable[[], Any], text_field: str, where: str, max_docs: int | None, first_timeout: float | None = None
) -> Iterator[str]:
    """Documents from a streamed dataset: mapped errors, skipped empty texts, `max_docs`."""
    if max_docs is not None and max_docs <= 0:
        return
    n = 0
    for rec in iter_dataset(open_dataset, where, first_timeout):
        text = _record_text(rec, text_field, where)
        if text is not None:
            n += 1
            yield text
            if max_docs is not None and n >= max_docs:
                return


def records_corpus(spec: str, name: str, files: list[Path], builder: str, text_field: str, max_docs: int | None) -> Corpus:
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


def hub_opener(name: str, config: str | None, split: str, where: str) -> Callable[[], Any]:
    """Opens hub set `name` (streamed; from the Hugging Face cache alone when the hub is
    off), every failure one UserError naming `where`."""

    def open_dataset():
        datasets = import_datasets(where)
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
                    f"{where} is not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); "
                    f"unset it to download, or pass a local file with --data PATH"
                ) from None
            raise UserError(f"cannot load {where}: {_first_line(exc)}") from None

    return open_dataset


def import_datasets(where: str) -> Any:
    """The `datasets` module, or one line saying how to get it."""
    try:
        import datasets
    except ImportError:
        raise UserError(f'{where} is read through the `datasets` package; pip install "gptbench[data]"') from None
    return datasets


def hub_records(where: str, name: str, config: str | None, split: str) -> Iterator[Any]:
    """The records of a hub set, after a quick check that the hub answers at all (unless
    it is off), the first one within `$GPTBENCH_HF_TIMEOUT` seconds."""
    if not _hf_offline():
        _probe_hub(where)
    timeout = float(paths.env(paths.HF_TIMEOUT) or HF_TIMEOUT_S)
    return iter_dataset(hub_opener(name, config, split, where), where, first_timeout=timeout)


def hf_corpus(spec: str, max_docs: int | None) -> Corpus:
    name, config, split, text_field = parse_hf_spec(spec)
    canonical = f"hf:{name}" + (f":{config}" if config else "") + f":{split}#{text_field}"
    key = hashlib.sha256(f"hf:{canonical}:{max_docs}".encode()).hexdigest()
    timeout = float(paths.env(paths.HF_TIMEOUT) or HF_TIMEOUT_S)
    open_dataset = hub_opener(name, config, split, canonical)

    def stream() -> Iterator[str]:
        if not _hf_offline():
            _probe_hub(canonical)
        return _iter_records(open_dataset, text_field, canonical, max_docs, first_timeout=timeout)

    return Corpus(canonical, name, "hf", key, stream=stream, details={"config": config, "split": split, "field": text_field})
