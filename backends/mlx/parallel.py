"""Where an MLX model runs and how ranks share it: the device, the ring group and its
collectives, and copying rank 0's arrays to every rank. Mirrors `backends/torch/parallel.py`.

Several processes (started by mlx.launch, which sets MLX_RANK and MLX_HOSTFILE): `connect`
joins the ring group, and the compiled step averages the accumulated gradients over ranks
with `nn.average_gradients` (one all-sum per 32 MiB of gradients) before clipping, so the
norm and the update are the global ones. MLX does not broadcast weights: every rank
initialises from the same seed, and rank 0's weights are then copied to all (an all-sum
with zeros elsewhere), which also installs a resumed checkpoint read on rank 0 only. MLX
has no activation checkpointing and no sharded strategy: both are refused here.
"""

from __future__ import annotations

# the model first: it may preload a faster CBLAS, which must happen before mlx.core loads.
import gptbench.backends.mlx.model  # noqa: F401  # isort: skip

import json
from typing import Any, Sequence

import mlx.core as mx
import numpy as np

from gptbench.backends.parallel import Collectives, Parallel
from gptbench.errors import UserError

NO_ACTIVATION_CHECKPOINTING = "the mlx backend has no activation checkpointing; drop --activation-checkpointing (or use --backend torch)"


def resolve_device(device: str | None) -> mx.Device:
    """`auto` -> the GPU when MLX has one (Metal or CUDA build), else the CPU."""
    device = (device or "auto").lower()
    if device == "auto":
        return mx.Device(mx.gpu) if mx.is_available(mx.gpu) else mx.Device(mx.cpu)
    if device == "gpu":
        if not mx.is_available(mx.gpu):
            raise UserError("--device gpu requested but this MLX build has no GPU; use --device auto or cpu")
        return mx.Device(mx.gpu)
    if device == "cpu":
        return mx.Device(mx.cpu)
    if device.split(":")[0] in ("cuda", "mps"):
        raise UserError(f"--device {device} is a torch device; the mlx backend takes --device auto, gpu or cpu")
    raise UserError(f"unknown device {device!r} for the mlx backend; use auto, gpu or cpu")


class MLXCollectives(Collectives):
    """The trainer's collectives over MLX's ring group. They run on the training device's
    stream, after the step queued there, so every rank issues collectives in one order;
    sums are float64 on the CPU (MLX's GPUs have no float64)."""

    name = "ring"

    def __init__(self, parallel: Parallel, device: mx.Device) -> None:
        super().__init__(parallel)
        self._device = device
        self._dtype = mx.float64 if device == mx.Device(mx.cpu) else mx.float32

    def _all_sum(self, a: np.ndarray, dtype: Any) -> np.ndarray:
        with mx.stream(self._device):
            out = mx.distributed.all_sum(mx.array(a, dtype=dtype))
            return np.array(out)

    def sum(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in self._all_sum(np.asarray(values, dtype=np.float64), self._dtype)]

    def any(self, flag: bool) -> bool:
        return bool(self._all_sum(np.array([1 if flag else 0], dtype=np.int32), mx.int32)[0] > 0)

    def broadcast(self, obj: Any) -> Any:
        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8) if self.rank == 0 else np.zeros(0, dtype=np.uint8)
        size = int(self._all_sum(np.array([len(data)], dtype=np.int32), mx.int32)[0])
        buf = np.zeros(size, dtype=np.int32)
        if self.rank == 0:
            buf[:] = data
        return json.loads(self._all_sum(buf, mx.int32).astype(np.uint8).tobytes())

    def barrier(self) -> None:
        self._all_sum(np.zeros(1, dtype=np.int32), mx.int32)


def connect(parallel: Parallel, device: str) -> Collectives:
    """Join the ring group mlx.launch set up (`TrainingBackend.connect`)."""
    if parallel.activation_checkpointing:
        raise UserError(NO_ACTIVATION_CHECKPOINTING)
    if not parallel.distributed:
        return Collectives(parallel)
    if parallel.strategy != "ddp":
        raise UserError(f"--strategy {parallel.strategy} is torch only; the mlx backend trains data-parallel (--strategy ddp)")
    if not mx.distributed.is_available("ring"):
        raise UserError("this MLX build has no ring backend; pip install -U mlx to train on several processes")
    group = mx.distributed.init(strict=True, backend="ring")
    if group.size() != parallel.world_size or group.rank() != parallel.rank:
        raise RuntimeError(f"MLX ring group is rank {group.rank()} of {group.size()}, expected {parallel.rank} of {parallel.world_size}")
    return MLXCollectives(parallel, resolve_device(device))


def from_rank0(arrays: list[mx.array], device: mx.Device, parallel: Parallel) -> list[mx.array]:
    """Rank 0's `arrays` on every rank (one all-sum of one flat buffer, the other ranks
    contributing zeros); the arrays themselves with one process. Collective."""
    if not parallel.distributed:
        return arrays
    with mx.stream(device):
        flat = mx.concatenate([a.astype(mx.float32).reshape(-1) for a in arrays])
        if parallel.rank != 0:
            flat = mx.zeros_like(flat)
        summed = mx.distributed.all_sum(flat)
        mx.eval(summed)
        out, start = [], 0
        for a in arrays:
            out.append(summed[start : start + a.size].reshape(a.shape))
            start += a.size
        return out
