"""Inside a launched job: which rank this process is, its environment, and why a collective failed.

Ranks find their place from the launcher's environment (`worker_parallel`): RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from torchrun; MLX_RANK and MLX_HOSTFILE from
mlx.launch. CPU ranks share the machine's cores (`rank_environment`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from gptbench import paths
from gptbench.backends.parallel import Parallel
from gptbench.errors import UserError


def worker_parallel(strategy: str = "ddp", activation_checkpointing: bool = False) -> tuple[str | None, Parallel]:
    """(framework that launched this process, its Parallel): ("torch", ...) under torchrun,
    ("mlx", ...) under mlx.launch, (None, one process) otherwise."""
    env = os.environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            parallel = Parallel(
                world_size=int(env["WORLD_SIZE"]), rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", "0")),
                local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")), strategy=strategy,
                activation_checkpointing=activation_checkpointing,
            )
            return "torch", parallel
        if "MLX_RANK" in env and "MLX_HOSTFILE" in env:
            rank = int(env["MLX_RANK"])
            hosts = _mlx_hosts(env["MLX_HOSTFILE"])
            if len(hosts) <= 1:
                return "mlx", Parallel(strategy=strategy, activation_checkpointing=activation_checkpointing)
            ip = hosts[rank].rpartition(":")[0] if rank < len(hosts) else ""
            same = [i for i, h in enumerate(hosts) if h.rpartition(":")[0] == ip]
            parallel = Parallel(
                world_size=len(hosts), rank=rank, local_rank=same.index(rank) if rank in same else 0,
                local_world_size=len(same), strategy=strategy, activation_checkpointing=activation_checkpointing,
            )
            return "mlx", parallel
    except ValueError as exc:
        raise UserError(f"cannot read this process's rank from its launcher's environment ({exc})") from None
    return None, Parallel(strategy=strategy, activation_checkpointing=activation_checkpointing)


def _mlx_hosts(path: str) -> list[str]:
    """The ring hostfile mlx.launch wrote: one list of "ip:port" per rank (empty for one)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"cannot read MLX_HOSTFILE {path}: {exc.strerror}") from None
    if not text:
        return []
    try:
        ranks = json.loads(text)
        return [str(r[0]) if isinstance(r, list) else str(r) for r in ranks]
    except (json.JSONDecodeError, TypeError, IndexError):
        raise UserError(f"MLX_HOSTFILE {path} is not mlx.launch's ring hostfile") from None


# ---- the launcher ---------------------------------------------------------------------------
PEER_LOST_RE = re.compile(r"Connection (reset|closed) by peer|connection to a peer was lost|Timed out waiting|Broken pipe|NCCL", re.I)
SOURCE_PREFIX_RE = re.compile(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")


def short_reason(exc: BaseException) -> str:
    """One line for an exception, without the C++ source location collectives prefix
    their messages with and the advice that follows the first sentence."""
    text = SOURCE_PREFIX_RE.sub("", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    cut = first.find(". ")
    if cut > 0:
        first = first[: cut + 1]
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def lost_peer(exc: BaseException) -> bool:
    """Whether an error is a collective failing because another rank is gone or stuck."""
    return isinstance(exc, RuntimeError) and bool(PEER_LOST_RE.search(str(exc)))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def rank_environment(nproc: int, threads: int | None, on_cpu: bool) -> dict[str, str]:
    """The ranks' environment: CPU ranks share the cores (torch would give each all of them,
    and spinning OpenMP threads on shared cores slow everyone down)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if on_cpu:
        per_rank = threads or max(1, usable_cpus() // nproc)
        env[paths.TORCH_THREADS] = str(per_rank)
        env.setdefault("OMP_NUM_THREADS", str(per_rank))
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env
