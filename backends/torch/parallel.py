"""Where a torch model runs and how ranks share it: devices, CPU threads, the process
group and its collectives, DDP / FSDP2 wrapping, activation checkpointing, and moving full
tensors between rank 0 and the other ranks. Mirrors `backends/mlx/parallel.py`.

Several processes (started by torchrun, which sets RANK/WORLD_SIZE/LOCAL_RANK): `connect`
joins the group (gloo for CPU tensors, NCCL for CUDA ones, one GPU per local rank). The
"ddp" strategy wraps the model in DistributedDataParallel (rank 0's weights broadcast at
construction, one bucketed all-reduce per step, skipped with `no_sync` on every micro-batch
but the last); "fsdp" applies FSDP2's `fully_shard` to each block and then to the root
(which holds the embeddings, the final norm and the head, so a tied head stays in one
group), before the optimizer is built. Checkpoint state moves as full tensors: gathered to
rank 0 (`DTensor.full_tensor`) and scattered or broadcast from it, so a checkpoint is the
same file whatever trained it.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any, Sequence

import torch

from gptbench import paths
from gptbench.backends.parallel import Collectives, Parallel
from gptbench.backends.torch.model import GPT
from gptbench.errors import UserError

THREADS_ENV = paths.TORCH_THREADS


def apply_thread_setting() -> None:
    """Honour `$GPTBENCH_TORCH_THREADS` (set by `--threads`) for CPU intra-op threads.

    Why: OpenMP threads spin at barriers, so when the CPU is shared (a TUI watching the run,
    another job) a run using every core can slow down several-fold; the TUI starts its
    trainers with one core left free. Unset means torch's default (all physical cores).
    """
    value = paths.env(THREADS_ENV)
    if not value:
        return
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise UserError(f"--threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def resolve_device(device: str) -> str:
    """`auto` -> cuda > mps > cpu; an explicit device that is missing is a UserError."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps requested but MPS is not available; use --device auto or cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {device!r} for the torch backend; use auto, cpu, cuda or mps")
    return device


def rank_device(device: str, parallel: Parallel) -> str:
    """The device of one rank: GPU `LOCAL_RANK` when CUDA is used, else the CPU."""
    kind = device.split(":")[0]
    if kind == "mps" or (device == "auto" and not torch.cuda.is_available()):
        if kind == "mps":
            raise UserError("several processes cannot share --device mps; use --device cpu (or one process)")
        return "cpu"
    if kind == "cuda" or device == "auto":
        if ":" in device:
            raise UserError(f"with several processes each rank uses cuda:LOCAL_RANK; pass --device cuda instead of {device}")
        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available; use --device auto or cpu")
        if parallel.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {parallel.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; start at most that many processes per machine")
        return f"cuda:{parallel.local_rank}"
    return resolve_device(device)


def dist_timeout() -> timedelta:
    """How long a rank waits in a collective before it fails: `$GPTBENCH_DIST_TIMEOUT`
    seconds, default 30 minutes (rank 0 may prepare a large corpus while the others wait).
    A rank that dies is noticed at once (its connections close); this bounds a hung one."""
    value = paths.env(paths.DIST_TIMEOUT)
    try:
        seconds = float(value) if value else 1800.0
    except ValueError:
        raise UserError(f"{paths.DIST_TIMEOUT} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise UserError(f"{paths.DIST_TIMEOUT} must be positive, got {value!r}")
    return timedelta(seconds=seconds)


class TorchCollectives(Collectives):
    """The trainer's collectives over the default process group, on CPU tensors (gloo, also
    beside NCCL), so none of them waits for the GPU."""

    def __init__(self, parallel: Parallel, name: str) -> None:
        super().__init__(parallel)
        self.name = name

    def sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        data = json.dumps(obj).encode() if self.rank == 0 else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0 else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, src=0)
        return json.loads(buf.numpy().tobytes())

    def barrier(self) -> None:
        self.sum([0.0])

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def connect(parallel: Parallel, device: str) -> Collectives:
    """Join the process group torchrun set up (`TrainingBackend.connect`)."""
    if not parallel.distributed:
        return Collectives(parallel)
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; install a standard torch wheel to train on several processes")
    resolved = rank_device(device, parallel)
    if resolved.startswith("cuda"):
        if not dist.is_nccl_available():
            raise UserError("this torch build has no NCCL, which several GPU processes need; install a CUDA torch wheel, or use --device cpu")
        torch.cuda.set_device(resolved)
        backend, name = "cpu:gloo,cuda:nccl", "nccl"
    else:
        backend, name = "gloo", "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=dist_timeout())
    if dist.get_world_size() != parallel.world_size or dist.get_rank() != parallel.rank:
        raise RuntimeError(f"process group is rank {dist.get_rank()} of {dist.get_world_size()}, expected {parallel.rank} of {parallel.world_size}")
    return TorchCollectives(parallel, name)


def checkpoint_blocks(model: GPT) -> None:
    """Activation checkpointing per block: keep each block's input only and recompute its
    activations in the backward pass (`torch.utils.checkpoint`, non-reentrant, RNG state
    preserved, so dropout masks replay exactly and the gradients are bitwise those of the
    plain model). The block's `forward` is wrapped on the instance, so parameter names,
    state dicts and FSDP's hooks (which run around `forward`) are untouched; generation
    (a KV cache) and evaluation (no gradients) run the block directly."""
    from torch.utils.checkpoint import checkpoint

    for block in model.h:
        def forward(x: torch.Tensor, cache: Any = None, mask: torch.Tensor | None = None, rope: Any = None,
                    _run: Any = block.forward) -> torch.Tensor:
            if cache is None and torch.is_grad_enabled():
                return checkpoint(_run, x, cache, mask, rope, use_reentrant=False)
            return _run(x, cache, mask, rope)

        block.forward = forward


def wrap_model(model: GPT, device: str, parallel: Parallel) -> torch.nn.Module | None:
    """Make `model` (already on `device`) one rank's part of a data-parallel run: FSDP2
    shards it in place (each block, then the root: wte, wpe, ln_f and the tied head) and
    returns None; DDP returns the wrapper a training forward must go through. One process:
    nothing to do (None)."""
    if not parallel.distributed:
        return None
    if parallel.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.split(":")[0], (parallel.world_size,))
        for block in model.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)


def grad_sync(model: GPT, ddp: torch.nn.Module | None, fsdp: bool, last: bool) -> Any:
    """Gradients cross ranks only after the last micro-batch of a step: DDP skips its
    all-reduce inside `no_sync`, FSDP2 its reduce-scatter while sync is off."""
    if ddp is not None and not last:
        return ddp.no_sync()
    if fsdp:
        model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def reshard(model: GPT) -> None:
    """Put FSDP back in its sharded layout. A forward without backward (evaluation,
    sampling) leaves the root's parameters gathered; the state calls work on shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gather(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP shard (a collective all-gather), or `t` itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of an FSDP DTensor, or `t` itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def from_rank0(value: torch.Tensor | None, like: torch.Tensor, device: str, parallel: Parallel, fsdp: bool) -> torch.Tensor:
    """`value` (rank 0's full tensor, on the CPU) laid out like parameter `like` on every
    rank: as it is with one process, broadcast under DDP, scattered into shards under
    FSDP. Collective when distributed; the other ranks pass None."""
    if not parallel.distributed:
        assert value is not None
        return value.to(device)
    import torch.distributed as dist

    full = value.to(device) if value is not None else torch.empty(like.shape, dtype=torch.float32, device=device)
    if fsdp:
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=0)
    dist.broadcast(full, src=0)
    return full
