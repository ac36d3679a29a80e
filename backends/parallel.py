"""A process's place in a data-parallel run and the collectives the trainer needs from it.

Why apart from the contract (`base.py`): the launcher describes a rank (`Parallel`) before
any backend is chosen, and the trainer's collectives (`Collectives`) are plain floats and
JSON; each framework's `parallel.py` subclasses them over its own communication library."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from gptbench.errors import UserError

STRATEGIES = ("ddp", "fsdp")  # how several processes hold the model (torch; MLX is ddp only)
FSDP_TORCH_ONLY = "--strategy fsdp is torch only; the mlx backend trains data-parallel (--strategy ddp)"


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run, as its launcher (torchrun, mlx.launch)
    described it. The default is one process.

    `strategy`: "ddp" keeps a full model on every rank and averages gradients (DDP on
    torch, `average_gradients` on MLX); "fsdp" shards parameters, gradients and optimizer
    state across ranks (torch FSDP2 `fully_shard`, one group per block, then the root).
    With one process it is ignored. `activation_checkpointing` recomputes each block's
    activations in the backward pass instead of keeping them (less memory, ~1/3 more
    compute); it applies with one process too."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine (they share its RAM)
    strategy: str = "ddp"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r}; choose {' or '.join(STRATEGIES)}")
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {self.rank} is outside a world of {self.world_size} processes (check RANK/WORLD_SIZE)")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def strategy_name(self) -> str:
        """What the status shows: the strategy, or "single" for one process."""
        return self.strategy if self.distributed else "single"


class Collectives:
    """The few cross-process operations the trainer needs, on plain floats and JSON, so the
    training loop stays framework-free. Every method is collective: all ranks call it, in
    the same order, or the run hangs until the launcher or the group's timeout ends it.

    This base class is the group of one process (every operation is the identity); the
    torch (gloo/NCCL) and MLX (ring) backends return subclasses from `connect`."""

    name = "local"  # the communication backend: local, gloo, nccl, ring

    def __init__(self, parallel: Parallel | None = None) -> None:
        self.parallel = parallel or Parallel()

    @property
    def rank(self) -> int:
        return self.parallel.rank

    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 where the framework has it."""
        return [float(v) for v in values]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop request, a failure)."""
        return bool(flag)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's JSON-able `obj`, on every rank (what the others pass is ignored)."""
        return json.loads(json.dumps(obj))

    def barrier(self) -> None:
        """Return once every rank has called it."""

    def close(self) -> None:
        """Leave the group. After this no collective may be called."""


def rank_seed(seed: int, rank: int) -> int:
    """The dropout seed of rank `rank` > 0: every rank starts from the same weights (same
    `seed`), but draws its own dropout masks. Rank 0 keeps `seed`'s stream, the one a
    single process uses."""
    digest = hashlib.sha256(f"gptbench-rank/{seed}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
