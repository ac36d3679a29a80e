"""The one weights format: safetensors with canonical names and a self-describing header.

Tensors use the names and `[out, in]` layouts of `GPTConfig.canonical_shapes`. The header
metadata carries `format=gptbench`, `format_version` and the model config as JSON, so a file
alone is enough to rebuild the model on either backend. Files are written through a
temporary file and renamed, so a crash never leaves half a checkpoint.

Reading is framework-neutral (numpy); bfloat16 tensors are widened to float32 on load
because numpy has no bfloat16. Writing can narrow float tensors to float16 or bfloat16
(`dtype`). Loading checks what a file promises: a complete header, the config's names and
shapes, floating-point dtypes and finite values; each failure is one `WeightsError` line.
This module is the only reader and writer of safetensors in gptbench (the `safetensors`
package is a test-only reference: it cannot hand numpy a bfloat16).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError
from gptbench.errors import UserError
from gptbench.fsutil import atomic_path

if TYPE_CHECKING:
    from gptbench.backends.lora import LoRAConfig

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
FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # what `save_tensors(dtype=...)` can write
_FLOAT_ST = ("F64", "F32", "F16", "BF16")


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
    """Load every tensor of a safetensors file as numpy (bf16 widened to float32).

    The file is memory-mapped and each tensor copied out once, so loading costs one copy
    of the weights in memory, not two."""
    header, meta, offset = read_header(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    try:
        for name, entry in header.items():
            try:
                start, stop = (offset + int(o) for o in entry["data_offsets"])
                dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
            except (KeyError, TypeError, ValueError):
                raise WeightsError(f"{path}: malformed entry for tensor {name!r}") from None
            if not 0 <= start <= stop <= size or any(d < 0 for d in shape):
                raise WeightsError(f"{path}: tensor {name!r} points outside the file; is it damaged?")
            with memoryview(buf)[start:stop] as raw:  # released even when a check raises
                arr = _decode(raw, dtype, name, path)
            expected = int(np.prod(shape)) if shape else 1
            if arr.size != expected:
                raise WeightsError(f"{path}: tensor {name!r} has {arr.size} values, shape {list(shape)} needs {expected}")
            out[name] = arr.reshape(shape)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    return out, dict(meta)


def _decode(raw: memoryview, dtype: str, name: str, path: object) -> np.ndarray:
    """One tensor's bytes as a numpy array that owns its memory (bf16 widened to float32)."""
    if dtype not in _DTYPES and dtype != "BF16":
        raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    np_dtype = np.dtype(np.uint16 if dtype == "BF16" else _DTYPES[dtype])
    if len(raw) % np_dtype.itemsize:
        raise WeightsError(f"{path}: tensor {name!r} has a byte length that is not a whole number of {dtype} values")
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np_dtype).copy()


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # keep a quiet NaN
    return rounded


def _encode(name: str, arr: np.ndarray, dtype: str | None) -> tuple[str, bytes]:
    """(safetensors dtype, bytes) of a tensor; `dtype` narrows float tensors."""
    arr = np.ascontiguousarray(arr)
    if dtype is not None and arr.dtype.kind == "f":
        if dtype == "bfloat16":
            return "BF16", bf16_bits(arr).tobytes()
        arr = arr.astype(np.float16 if dtype == "float16" else np.float32)
    st = _NP_TO_ST.get(arr.dtype.str)
    if st is None:
        raise WeightsError(f"cannot save tensor {name!r} of dtype {arr.dtype}")
    return st, arr.tobytes()


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: str | None = None,
) -> int:
    """Write numpy tensors as safetensors, atomically; returns the file size. Keys are
    sorted for stable files; `dtype` (float32 | float16 | bfloat16) converts float tensors."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise WeightsError(f"unknown dtype {dtype!r}; choose one of {', '.join(FLOAT_DTYPES)}")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        st, data = _encode(name, tensors[name], dtype)
        arr = tensors[name]
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
    return 8 + len(raw) + offset


def check_tensors(config: GPTConfig, tensors: Mapping[str, object], source: str = "weights") -> None:
    """Raise WeightsError listing every missing, unexpected or mis-shaped tensor, then the
    first one that is not floating point or holds NaN or infinite values."""
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
    for name in want:
        arr = np.asarray(tensors[name])
        if arr.dtype.kind != "f":
            raise WeightsError(f"{source}: tensor {name} has dtype {arr.dtype.name}; weights must be floating point")
        if not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise WeightsError(f"{source}: tensor {name} holds {bad} NaN or infinite values (a diverged run or a damaged file)")


def _few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def weights_metadata(config: GPTConfig, **extra: str) -> dict[str, str]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json(), **extra}


def save_weights(
    path: str | os.PathLike[str],
    config: GPTConfig,
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    **extra_meta: str,
) -> int:
    """Validate against the config, then write a self-describing gptbench weights file
    (float tensors stored as `dtype`, which the header records too); returns its size."""
    check_tensors(config, tensors)
    return save_tensors(path, tensors, weights_metadata(config, dtype=dtype, **extra_meta), dtype=dtype)


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
    if is_adapter_file(meta):
        raise WeightsError(f"{path} holds LoRA adapters, not a whole model; load it through its run, or merge it with `gptbench convert`")
    check_tensors(config, tensors, source=str(path))
    return config, tensors


# ---- LoRA adapter files --------------------------------------------------------------------
# A LoRA run's checkpoint holds only its adapters. Its header adds `lora` (rank, alpha,
# targets, dropout) and `base`: where the frozen base weights are and their sha256, so the
# model can be rebuilt and a moved or changed base is detected (`gptbench.finetune`).
def is_adapter_file(meta: Mapping[str, str]) -> bool:
    return "lora" in meta


def save_adapters(
    path: str | os.PathLike[str],
    config: GPTConfig,
    lora: "LoRAConfig",
    tensors: Mapping[str, np.ndarray],
    base: Mapping[str, object],
    **extra_meta: str,
) -> int:
    """Validate against `lora.adapter_shapes(config)`, then write an adapter file (float32)."""
    _check_adapters(config, lora, tensors, "adapters")
    meta = weights_metadata(config, dtype="float32", lora=json.dumps(lora.to_dict()), base=json.dumps(dict(base)), **extra_meta)
    return save_tensors(path, tensors, meta, dtype="float32")


def load_adapters(path: str | os.PathLike[str]) -> tuple[GPTConfig, "LoRAConfig", dict[str, object], dict[str, np.ndarray]]:
    """An adapter file: (base model config, LoRA config, base reference, adapters), checked."""
    from gptbench.backends.lora import LoRAConfig

    tensors, meta = load_tensors(path)
    config = _config_from_meta(path, meta)
    if not is_adapter_file(meta):
        raise WeightsError(f"{path} is a whole model, not LoRA adapters")
    try:
        lora = LoRAConfig.from_dict(json.loads(meta["lora"]))
        base = json.loads(meta.get("base", "null"))
    except (json.JSONDecodeError, TypeError) as exc:
        raise WeightsError(f"{path}: unreadable LoRA header ({exc})") from None
    except ConfigError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if not isinstance(base, dict) or not all(isinstance(base.get(k), str) for k in ("kind", "path", "sha256")):
        raise WeightsError(f"{path} has no usable reference to its base model (kind, path, sha256) in its header")
    _check_adapters(config, lora, tensors, str(path))
    return config, lora, base, tensors


def _check_adapters(config: GPTConfig, lora: "LoRAConfig", tensors: Mapping[str, object], source: str) -> None:
    try:
        want = lora.adapter_shapes(config)
    except ConfigError as exc:
        raise WeightsError(f"{source}: {exc}") from None
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    wrong = [f"{n} has shape {list(getattr(tensors[n], 'shape'))}, LoRA rank {lora.rank} needs {list(s)}"
             for n, s in want.items() if n in tensors and tuple(getattr(tensors[n], "shape")) != s]
    problems = ([f"missing {_few(missing)}"] if missing else []) + ([f"unexpected {_few(extra)}"] if extra else []) + wrong
    if problems:
        raise WeightsError(f"{source} does not match its LoRA config: " + "; ".join(problems[:4]))
    for name in want:
        arr = np.asarray(tensors[name])
        if arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise WeightsError(f"{source}: adapter {name} is not finite floating point (a diverged run or a damaged file)")
