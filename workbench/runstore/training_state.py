"""A checkpoint's training state, validated name by name and shape by shape before a
backend sees it, so a damaged or foreign state file is refused with its name and reason
instead of resuming a run that is no longer exact.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from gptbench.runstore.checkpoints import CheckpointInfo
from gptbench.runstore.format import CorruptRunError, check_fields


@dataclass
class TrainingState:
    """A checkpoint's training state, validated: what `Trainer` installs to resume exactly."""

    optimizer: dict[str, np.ndarray]
    optimizer_meta: dict[str, Any]
    rng: dict[str, np.ndarray]  # empty when the state was saved by another backend
    trainer: dict[str, Any]  # step, backend, batch_rng, best_val_loss, tokens_seen, elapsed


RNG_PREFIX = "rng."  # the state file's framework-RNG tensors; every other tensor is an optimizer moment


def _typed(default: Any, *types: type) -> Any:
    return field(default=default, metadata={"types": types})


@dataclass
class Progress:
    """Where training stands, as a checkpoint's trainer header records it (beside the
    backend that wrote it and the optimizer's counters): what a resumed run continues from."""

    step: int = _typed(0, int)
    batch_rng: dict[str, Any] | None = _typed(None, dict)  # numpy's bit-generator state of the batch stream
    best_val_loss: float | None = _typed(None, int, float, type(None))
    tokens_seen: int = _typed(0, int)
    elapsed: float = _typed(0.0, int, float)

    def header(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_header(self, header: Mapping[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, header[f.name])
        self.elapsed = float(self.elapsed)


# the trainer header's schema: the progress fields, the backend and the optimizer's meta
TRAINER_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "backend": (str,), "optimizer": (dict,), **{f.name: f.metadata["types"] for f in dataclasses.fields(Progress)},
}


def load_training_state(
    ckpt: CheckpointInfo,
    optimizer_shapes: Mapping[str, tuple[int, ...]],
    rng_shapes: Mapping[str, tuple[str, tuple[int, ...]]],
    backend: str,
) -> TrainingState:
    """Read and check `ckpt`'s state file against what the backend expects. Raises
    CorruptRunError naming the file and the first thing wrong with it."""
    from gptbench.backends.weights import WeightsError, load_tensors

    path = ckpt.state_path
    where = str(path)
    if not path.is_file():
        raise CorruptRunError(f"{where} is missing, so step {ckpt.step} cannot be resumed exactly; delete {ckpt.path.name} to resume from the checkpoint before it")
    try:
        tensors, meta = load_tensors(path)
    except WeightsError as exc:
        raise CorruptRunError(str(exc)) from None
    try:
        trainer = json.loads(meta["trainer"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CorruptRunError(f"{where} is not a gptbench training state (no trainer state in its header)") from None
    trainer = check_fields(trainer, TRAINER_STATE_FIELDS, {}, f"{where} (trainer state)")
    if trainer["step"] != ckpt.step:
        raise CorruptRunError(f"{where} says step {trainer['step']} but belongs to step {ckpt.step}")
    opt_meta = check_fields(trainer["optimizer"], {"step": (int,)}, {"grad_scale": (int, float)}, f"{where} (optimizer)")
    if opt_meta["step"] < 0:
        raise CorruptRunError(f"{where}: optimizer step must be >= 0, got {opt_meta['step']}")
    _check_batch_rng(trainer["batch_rng"], where)
    if trainer["tokens_seen"] < 0 or trainer["elapsed"] < 0:
        raise CorruptRunError(f"{where}: tokens_seen and elapsed must be >= 0")
    optimizer = {k: v for k, v in tensors.items() if not k.startswith(RNG_PREFIX)}
    _check_tensor_set(optimizer, optimizer_shapes, where, "optimizer moments", exact=True)
    rng = {k[len(RNG_PREFIX):]: v for k, v in tensors.items() if k.startswith(RNG_PREFIX)}
    if trainer["backend"] == backend:
        for name, (dtype, shape) in rng_shapes.items():
            got = rng.get(name)
            if got is None or got.dtype.name != dtype or tuple(got.shape) != tuple(shape):
                found = "missing" if got is None else f"{got.dtype.name} {list(got.shape)}"
                raise CorruptRunError(f"{where}: RNG state {name!r} is {found}, expected {dtype} {list(shape)} (truncated or damaged)")
    else:
        rng = {}  # framework RNG states do not translate across backends
    return TrainingState(optimizer, opt_meta, rng, trainer)


def _check_batch_rng(state: dict[str, Any], where: str) -> None:
    try:
        bits = getattr(np.random, state["bit_generator"])()
        bits.state = state
    except Exception:  # noqa: BLE001 - numpy raises TypeError/ValueError/KeyError/AttributeError
        raise CorruptRunError(f"{where}: the batch RNG state is damaged (not a numpy bit-generator state)") from None


def _check_tensor_set(tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], where: str, what: str, *, exact: bool) -> None:
    missing = [n for n in shapes if n not in tensors]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CorruptRunError(f"{where} has no {what} for {missing[0]}{more}, so resuming would not be exact; delete it to resume from the checkpoint before it")
    extra = [n for n in tensors if n not in shapes]
    if exact and extra:
        raise CorruptRunError(f"{where} has unexpected {what} {extra[0]} (a different model?)")
    for name, shape in shapes.items():
        arr = tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise CorruptRunError(f"{where}: {name} has shape {list(arr.shape)}, the model needs {list(shape)}")
        if arr.dtype.kind != "f":
            raise CorruptRunError(f"{where}: {name} has dtype {arr.dtype.name}; {what} are floating point")
        if not np.isfinite(arr).all():
            raise CorruptRunError(f"{where}: {name} holds NaN or infinite values")
