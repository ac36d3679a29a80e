"""The one weights format: safetensors with canonical names and a self-describing header.

Tensors use the names and `[out, in]` layouts of `GPTConfig.canonical_shapes`. The header
metadata carries `format=gptbench`, `format_version` and the model config as JSON, so a file
alone is enough to rebuild the model on either backend. Files are written through a
temporary file and renamed, so a crash never leaves half a checkpoint.

Reading is framework-neutral (numpy); bfloat16 tensors are widened to float32 on load
because numpy has no bfloat16.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from gptbench.backends.config import ConfigError, GPTConfig
from gptbench.errors import UserError
from gptbench.fsutil import atomic_path

FORMAT = "gptbench"
FORMAT_VERSION = "1"

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(v).str: k for k, v in _DTYPES.items()}


class WeightsError(UserError):
    """A weights file that cannot be used: missing, truncated, foreign or mismatched."""


def read_header(path: str | os.PathLike[str]) -> tuple[dict, dict[str, str], int]:
    """Parse a safetensors header without loading tensors.

    Returns (tensor entries, metadata, data offset). Raises WeightsError with a one-line
    reason for anything that is not a complete safetensors file.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{p} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > 100_000_000 or 8 + n > size:
            raise WeightsError(f"{p} is not a valid safetensors file (bad header length); is it truncated?")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(f"{p} is not a valid safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{p} is not a valid safetensors file (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    end = 0
    for name, entry in header.items():
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise WeightsError(f"{p}: malformed entry for tensor {name!r}") from None
    if 8 + n + end > size:
        raise WeightsError(
            f"{p} is truncated: header promises {8 + n + end} bytes, file has {size}; "
            "re-export or pick another checkpoint"
        )
    return header, meta, 8 + n


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load every tensor of a safetensors file as numpy (bf16 widened to float32)."""
    header, meta, offset = read_header(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        buf = memoryview(f.read())
    for name, entry in header.items():
        start, stop = (offset + int(o) for o in entry["data_offsets"])
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        raw = buf[start:stop]
        if dtype == "BF16":
            u16 = np.frombuffer(raw, dtype=np.uint16)
            arr = (u16.astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            arr = np.frombuffer(raw, dtype=_DTYPES[dtype])
        else:
            raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise WeightsError(f"{path}: tensor {name!r} has {arr.size} values, shape {shape} needs {expected}")
        out[name] = arr.reshape(shape).copy()
    return out, dict(meta)


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write numpy tensors as safetensors, atomically. Keys are sorted for stable files."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        st = _NP_TO_ST.get(arr.dtype.str)
        if st is None:
            raise WeightsError(f"cannot save tensor {name!r} of dtype {arr.dtype}")
        data = arr.tobytes()
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for blob in blobs:
                f.write(blob)


def check_tensors(config: GPTConfig, tensors: Mapping[str, object], source: str = "weights") -> None:
    """Raise WeightsError listing every missing, unexpected or mis-shaped tensor."""
    want = config.canonical_shapes()
    problems: list[str] = []
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if extra:
        problems.append(f"unexpected {_few(extra)}")
    for name, shape in want.items():
        if name in tensors:
            got = tuple(getattr(tensors[name], "shape"))
            if got != shape:
                problems.append(f"{name} has shape {list(got)}, config needs {list(shape)}")
    if problems:
        raise WeightsError(f"{source} does not match its config: " + "; ".join(problems[:6]))


def _few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def weights_metadata(config: GPTConfig, **extra: str) -> dict[str, str]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json(), **extra}


def save_weights(
    path: str | os.PathLike[str],
    config: GPTConfig,
    tensors: Mapping[str, np.ndarray],
    **extra_meta: str,
) -> None:
    """Validate against the config, then write a self-describing gptbench weights file."""
    check_tensors(config, tensors)
    save_tensors(path, tensors, weights_metadata(config, **extra_meta))


def read_config(path: str | os.PathLike[str]) -> GPTConfig:
    """The GPTConfig stored in a gptbench weights file's header."""
    _, meta, _ = read_header(path)
    return _config_from_meta(path, meta)


def _config_from_meta(path: str | os.PathLike[str], meta: Mapping[str, str]) -> GPTConfig:
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsError(
            f"{path} is not a gptbench weights file (no gptbench config in its header); "
            "for Hugging Face GPT-2 folders use `gptbench convert --from hf`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path} has weights format version {meta.get('format_version')!r}; "
            f"this gptbench reads version {FORMAT_VERSION}"
        )
    try:
        return GPTConfig.from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise WeightsError(f"{path}: unreadable config in header ({exc})") from None
    except ConfigError as exc:
        raise WeightsError(f"{path}: {exc}") from None


def load_weights(path: str | os.PathLike[str]) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """Load and validate a gptbench weights file: (config, float tensors by canonical name)."""
    tensors, meta = load_tensors(path)
    config = _config_from_meta(path, meta)
    check_tensors(config, tensors, source=str(path))
    return config, tensors
