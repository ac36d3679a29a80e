"""A checkpoint's training state, described once as components that save and load themselves.

Each component (the trainer's progress, the optimizer, the framework RNG) turns its part of
a live run into tensors and a JSON header entry and back (torchtitan's `Stateful` is the
model). `collect` assembles a checkpoint's state from them and `restore` installs one. The
file layout is the run store's (`runstore.training_state`, which validates it on read):
optimizer tensors by their own names, RNG tensors under `RNG_PREFIX`, and one `trainer`
header holding the `Progress` fields, the backend and each component's meta under its `key`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from gptbench.backends.base import Backend
from gptbench.runstore.training_state import RNG_PREFIX, Progress

class Stateful(Protocol):
    """One part of the training state. `key` names its entry in the trainer header."""

    key: str

    def save(self) -> tuple[dict[str, np.ndarray], Any]: ...
    def load(self, tensors: dict[str, np.ndarray], header: Any) -> None: ...


class OptimizerState:
    """The optimizer's moments (tensors) and step counters (header). Collective under
    FSDP: every rank helps gather them; rank 0 holds the result."""

    key = "optimizer"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def save(self) -> tuple[dict[str, np.ndarray], Any]:
        return self.backend.get_optimizer_state()

    def load(self, tensors: dict[str, np.ndarray], header: Any) -> None:
        self.backend.set_optimizer_state(tensors, header)


class RngState:
    """The framework RNG (dropout). Rank 0 continues its stream on resume; the other ranks
    keep the stream of their rank. Empty when the state came from another backend."""

    key = "rng"

    def __init__(self, backend: Backend, rank: int) -> None:
        self.backend, self.rank = backend, rank

    def save(self) -> tuple[dict[str, np.ndarray], Any]:
        return {f"{RNG_PREFIX}{k}": v for k, v in self.backend.get_rng_state().items()}, None

    def load(self, tensors: dict[str, np.ndarray], header: Any) -> None:
        if tensors and self.rank == 0:
            self.backend.set_rng_state(tensors)


def collect(progress: Progress, backend_name: str, components: list[Stateful]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A checkpoint's state tensors and trainer header, from every component."""
    tensors: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {"step": progress.step, "backend": backend_name}
    for component in components:
        part, meta = component.save()
        tensors.update(part)
        if meta is not None:
            header[component.key] = meta
    header.update({k: v for k, v in progress.header().items() if k != "step"})
    return tensors, header


def restore(progress: Progress, components: list[Stateful], tensors: dict[str, dict[str, np.ndarray]], header: dict[str, Any]) -> None:
    """Install a checkpoint's state: `tensors` by component key (rank 0 holds them; the
    other ranks pass empty ones to the collective loads), `header` the trainer header."""
    for component in components:
        component.load(tensors.get(component.key, {}), header.get(component.key))
    progress.load_header(header)
