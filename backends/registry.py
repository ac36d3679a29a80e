"""The backend registry: which frameworks are installed, what `auto` means here, and the
one place a backend class is imported (lazily, by module path).

Why lazy: `gptbench --help` and `gptbench runs` must run with only one of torch / mlx
installed, and without paying for importing either (tests/test_import_contract.py).
`create_backend(config, "auto")` picks MLX on Apple Silicon, else torch."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from typing import TYPE_CHECKING

from gptbench.backends.parallel import Parallel
from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import Backend

# Where each backend class lives: imported only when that backend is chosen.
BACKENDS: dict[str, str] = {
    "torch": "gptbench.backends.torch.backend:TorchBackend",
    "mlx": "gptbench.backends.mlx.backend:MLXBackend",
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
    compile: bool | None = None,
    parallel: Parallel | None = None,
) -> Backend:
    """Build a freshly initialised model (GPT-2 init, seeded) on the chosen backend.

    `compile` compiles the training step and evaluation with the framework's JIT
    (`torch.compile`, `mx.compile`); None = the backend's `default_compile`. `parallel`
    (after `connect`) makes this process one rank of a data-parallel run: collective, every
    rank builds its backend at the same point, with the same `seed`."""
    cls = backend_class(backend)
    compile = cls.default_compile if compile is None else bool(compile)
    if parallel is None or parallel == Parallel():
        return cls(config, device=device, seed=seed, dtype=dtype, compile=compile)
    return cls(config, device=device, seed=seed, dtype=dtype, compile=compile, parallel=parallel)
