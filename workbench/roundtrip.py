"""The round-trip check of every export: the written model must compute the source's logits.

`convert` and the Hugging Face / mlx-lm writers reload what they staged and compare its
logits with the source's on one fixed batch before anything is renamed into place, so a
wrong transpose, a lost tensor or a lossy dtype is caught while nothing has been written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import Backend
    from gptbench.sources import ModelSource

# Largest allowed |logit difference| after a round trip, relative to max(1, max |logit|):
# float32 must reproduce the source; the half types only have to be close.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


def fixed_batch(config: GPTConfig, batch: int = 2, length: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, config.vocab_size, size=(batch, min(length, config.block_size)), dtype=np.int64)


def install_source(source: "ModelSource", backend: "Backend") -> None:
    """The reference model: a LoRA source unmerged (so the merge is checked too), else whole."""
    if source.model.lora is not None:
        source.model.install(backend)
    else:
        backend.set_weights(dict(source.tensors))


def verify_logits(source: "ModelSource", config: GPTConfig, tensors: Mapping[str, np.ndarray], dtype: str, backend: str,
                  device: str) -> tuple[float, str, tuple[int, int]]:
    """Max |logit difference| between the source and the reloaded output on one backend.

    One model instance computes both (source weights, then the output's), so verifying a
    large model costs one extra copy of it, not two."""
    from gptbench.backends.registry import create_backend

    if config != source.config:
        raise UserError(f"conversion changed the model config ({config} != {source.config}); this is a bug, nothing was written")
    idx = fixed_batch(config)
    be = create_backend(config, backend, device=device)
    install_source(source, be)
    ref = be.forward_logits(idx)
    if source.model.lora is not None:
        be = create_backend(config, backend, device=device)  # adapters applied: start from a plain model
    be.set_weights({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})
    out = be.forward_logits(idx)
    where = be.describe()
    del be
    return check_logits(ref, out, dtype, where, idx)


def check_logits(ref: np.ndarray, out: np.ndarray, dtype: str, where: str, idx: np.ndarray,
                 what: str = "reloaded") -> tuple[float, str, tuple[int, int]]:
    """(max difference, where it was measured, batch shape); UserError beyond the tolerance."""
    diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
    scale = max(1.0, float(np.max(np.abs(ref))))
    if not np.isfinite(diff) or diff > TOLERANCE[dtype] * scale:
        raise UserError(
            f"verification failed: {what} {dtype} output differs from the source by {diff:.3g} in the logits "
            f"(allowed {TOLERANCE[dtype] * scale:.3g}); nothing was written"
        )
    return diff, where, (int(idx.shape[0]), int(idx.shape[1]))
