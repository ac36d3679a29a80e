"""The backend interface: model operations, not tensor operations.

The training loop, the generation engine, `convert` and the TUI talk to a model only
through `Backend`. Everything crossing the boundary is numpy (weights, batches, logits for
checks) or plain Python numbers, so a backend is free to keep its tensors on any device.

Frameworks are imported lazily: importing this module (or `gptbench.cli`) never imports
torch or mlx. `create_backend("auto")` picks MLX on Apple Silicon, else torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from gptbench.backends.config import GPTConfig
from gptbench.backends.sampling import SamplingParams
from gptbench.errors import UserError


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyperparameters; the learning rate itself is passed to every step."""

    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off


class StepResult:
    """Loss and gradient norm of one optimizer step.

    Backends may hand over device scalars: they are converted to floats only when read,
    so a training loop that logs every N steps does not force a host-device sync per step.
    """

    __slots__ = ("_loss", "_grad_norm")

    def __init__(self, loss: Any, grad_norm: Any) -> None:
        self._loss = loss
        self._grad_norm = grad_norm

    @property
    def loss(self) -> float:
        """Mean loss over the micro-batches of this step."""
        if not isinstance(self._loss, float):
            self._loss = float(self._loss)
        return self._loss

    @property
    def grad_norm(self) -> float:
        """Global gradient norm before clipping."""
        if not isinstance(self._grad_norm, float):
            self._grad_norm = float(self._grad_norm)
        return self._grad_norm


Batch = tuple[np.ndarray, np.ndarray]  # (x, y), int64 [B, T]


class Backend(ABC):
    """One GPT model on one framework and device, plus its optimizer and RNG.

    Weight decay applies to tensors with 2 or more dimensions only (matrices and
    embeddings), never to biases or norm gains: the same rule on every backend.
    """

    name: ClassVar[str]

    config: GPTConfig
    device: str  # resolved device, e.g. "cpu", "cuda:0", "mps", "gpu"

    # ---- weights --------------------------------------------------------------------
    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """All parameters by canonical name as float32 numpy arrays."""

    @abstractmethod
    def set_weights(self, tensors: dict[str, np.ndarray]) -> None:
        """Load canonical tensors (already checked against the config)."""

    @abstractmethod
    def forward_logits(self, idx: np.ndarray) -> np.ndarray:
        """Full-sequence logits [B, T, V] as float32 numpy, eval mode, no cache."""

    # ---- training -------------------------------------------------------------------
    @abstractmethod
    def setup_optimizer(self, optim: OptimConfig) -> None: ...

    @abstractmethod
    def train_step(self, micro_batches: Sequence[Batch], lr: float) -> StepResult:
        """Accumulate gradients over the micro-batches, clip, take one AdamW step."""

    @abstractmethod
    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy on one batch, eval mode (no dropout), no gradients."""

    @abstractmethod
    def get_optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Optimizer tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`) and JSON metadata."""

    @abstractmethod
    def set_optimizer_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def get_rng_state(self) -> dict[str, np.ndarray]:
        """Framework RNG state (dropout), so a resumed run continues bit-identically."""

    @abstractmethod
    def set_rng_state(self, state: dict[str, np.ndarray]) -> None: ...

    # ---- generation (driven by gptbench.backends.generate) --------------------------
    @abstractmethod
    def new_cache(self, batch_size: int) -> Any:
        """An empty per-layer KV cache for `batch_size` sequences."""

    @abstractmethod
    def forward_last(self, ids: np.ndarray, cache: Any | None, pad: np.ndarray | None = None) -> Any:
        """Logits of the last position, [B, V], kept on the device.

        With a cache, `ids` are the new tokens and are appended to it; without one, `ids`
        is the whole context. `pad[b]` is the number of left-padding tokens in row b
        (batched prompts of different lengths); positions start at 0 after the padding.
        """

    @abstractmethod
    def sample(self, logits: Any, params: SamplingParams, history: np.ndarray | None, generator: Any) -> np.ndarray:
        """Apply the filters of `gptbench.backends.sampling` and draw one token per row."""

    @abstractmethod
    def make_generator(self, seed: int | None) -> Any:
        """A framework RNG for sampling, independent of the training RNG."""

    # ---- utilities ------------------------------------------------------------------
    def num_params(self) -> int:
        return self.config.num_params()

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


# ---- registry ---------------------------------------------------------------------------
BACKENDS: dict[str, str] = {
    "torch": "gptbench.backends.torch_backend:TorchBackend",
    "mlx": "gptbench.backends.mlx_backend:MLXBackend",
}


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def available_backends() -> list[str]:
    """Backends whose framework is installed (checked without importing it)."""
    found = []
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    if importlib.util.find_spec("mlx") is not None:
        found.append("mlx")
    return found


def resolve_backend_name(name: str) -> str:
    """`auto` -> mlx on Apple Silicon when installed, else torch (else mlx)."""
    have = available_backends()
    if name == "auto":
        if is_apple_silicon() and "mlx" in have:
            return "mlx"
        if "torch" in have:
            return "torch"
        if "mlx" in have:
            return "mlx"
        raise UserError("no backend installed; pip install 'gptbench[torch]' or 'gptbench[mlx]'")
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    if name not in have:
        extra = "mlx" if name == "mlx" else "torch"
        raise UserError(f"backend {name!r} is not installed; pip install 'gptbench[{extra}]'")
    return name


def backend_class(name: str) -> type[Backend]:
    module, _, attr = BACKENDS[resolve_backend_name(name)].partition(":")
    return getattr(importlib.import_module(module), attr)


def create_backend(
    config: GPTConfig,
    backend: str = "auto",
    *,
    device: str = "auto",
    seed: int = 0,
    dtype: str = "float32",
    compile: bool = False,
) -> Backend:
    """Build a freshly initialised model (GPT-2 init, seeded) on the chosen backend."""
    cls = backend_class(backend)
    return cls(config, device=device, seed=seed, dtype=dtype, compile=compile)
