"""The backend contracts: what the trainer and the generation engine may ask of a model.

There are two contracts because they have two different clients:

- `TrainingBackend` serves the trainer, `convert` and the parity suite: weights in and out
  as numpy by canonical name, one optimizer step over micro-batches, an evaluation loss,
  and the optimizer and RNG state that make a resumed run continue exactly.
- `GenerationBackend` serves the generation engine (`backends/generate.py`): a KV cache,
  the logits of the last position, and sampling with its own RNG.

`Backend` is both, and is what `torch_backend` and `mlx_backend` implement. Everything that
crosses the boundary is numpy or plain Python, except the opaque cache, logits and sampling
generator, which the engine only hands back to the backend that made them; so a backend
keeps its tensors on any device.

Data parallelism (several processes, one model each) is part of the contract: a process
joins its launcher's group with `backend_class(name).connect(Parallel(...), device)`, which
returns the `Collectives` the trainer needs (sums of a few floats, a stop agreement, a
broadcast of rank 0's plan), and passes the same `Parallel` to `create_backend`. The
backend then keeps gradients in sync inside `train_step`; a few calls become collective
(every rank calls them, in the same order), as their docstrings say.

Frameworks are imported lazily: importing this module (or `gptbench.cli`) never imports
torch or mlx. `create_backend(config, "auto")` picks MLX on Apple Silicon, else torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import platform
import resource
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.lora import LoRAConfig


# Muon's fixed constants (Keller Jordan's muon.py; torch.optim.Muon and mlx.optimizers.Muon
# use the same): the quintic Newton-Schulz coefficients, iterations and norm guard, and the
# momentum a warmup starts from (modded-nanogpt, nanochat).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
MUON_MOMENTUM_START = 0.85


MUON_FSDP = "--optimizer muon orthogonalises whole matrices, which FSDP shards; use --strategy ddp with muon, or adamw with fsdp"


@dataclass(frozen=True)
class MuonConfig:
    """Muon (MomentUm Orthogonalized by Newton-Schulz) for the hidden matrices.

    Every backend implements this update, in float32 whatever the training dtype, for each
    matrix W of `muon_blocks` with its clipped gradient g, at optimizer step t (0 for the
    first update) and AdamW learning rate `lr` of that step:

        mu  = momentum at t (linear from min(0.85, momentum) over `momentum_warmup` steps)
        eta = lr * lr_ratio                          # the schedule scales both optimizers
        buf = mu * buf + (1 - mu) * g                 # checkpointed as `momentum.<name>`
        u   = (1 - mu) * g + mu * buf                 # Nesterov
        O   = NS(u), each of the `blocks` row blocks separately (c_attn: q, k and v)
        W   = W * (1 - eta * weight_decay) - eta * sqrt(max(1, rows / cols)) * O

    where `rows` are one block's, and NS(X) transposes a tall X, divides it by
    (||X||_F + 1e-7), repeats NS_STEPS times `A = X X^T; X = a X + (b A + c A A) X` and
    transposes back: an approximately orthogonal matrix (singular values in ~[0.7, 1.2])
    with the singular vectors of u. Weight decay is decoupled on both backends (MLX's own
    Muon adds it to the gradient; torch's runs NS in bfloat16: neither is used).
    """

    lr_ratio: float  # Muon's peak learning rate / AdamW's (`--muon-lr` / `--lr`)
    momentum: float
    momentum_warmup: int  # steps from MUON_MOMENTUM_START up to `momentum`; 0 = constant
    weight_decay: float  # decoupled, like AdamW's

    def momentum_at(self, step: int) -> float:
        """The momentum of the update at optimizer step `step` (0-based)."""
        start = min(MUON_MOMENTUM_START, self.momentum)
        if self.momentum_warmup <= 0:
            return self.momentum
        return start + (self.momentum - start) * min(step / self.momentum_warmup, 1.0)


def muon_blocks(config: GPTConfig) -> dict[str, int]:
    """The parameters Muon trains, by canonical name, with the number of row blocks each is
    orthogonalised in: every 2-D matrix inside the blocks (`c_attn` as its three q, k, v
    blocks, so one does not steal the others' directions; c_proj, c_fc, c_gate whole).
    Embeddings, the LM head, norms and biases are not hidden matrices: AdamW trains them."""
    return {
        name: 3 if name.endswith("attn.c_attn.weight") else 1
        for name, shape in config.canonical_shapes().items()
        if name.startswith("h.") and len(shape) == 2
    }


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer hyperparameters. It has no defaults of its own: the run configuration
    (`gptbench.config.TrainConfig.optim_config()`) is the one source of them. The learning
    rate is not here: the schedule passes it to every `train_step`.

    `muon` None: AdamW trains every parameter. Otherwise Muon (see `MuonConfig`) trains
    the hidden matrices of `muon_blocks` and AdamW everything else."""

    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float  # 0 = off
    eps: float = 1e-8  # not a training flag: AdamW's denominator guard
    muon: MuonConfig | None = None


def optimizer_state_shapes(config: GPTConfig, optim: OptimConfig | None, lora: "LoRAConfig | None" = None) -> dict[str, tuple[int, ...]]:
    """What every backend's `optimizer_state_shapes` returns: AdamW's two moments for each
    parameter it trains, Muon's momentum buffer for each of `muon_blocks`. Under LoRA only
    the adapters train (with AdamW)."""
    muon = muon_blocks(config) if optim is not None and optim.muon is not None and lora is None else {}
    trained = lora.adapter_shapes(config) if lora is not None else config.canonical_shapes()
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in trained.items():
        if name in muon:
            shapes[f"momentum.{name}"] = shape
        else:
            shapes[f"exp_avg.{name}"] = shape
            shapes[f"exp_avg_sq.{name}"] = shape
    return shapes


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

STRATEGIES = ("ddp", "fsdp")  # how several processes hold the model (torch; MLX is ddp only)


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


def peak_rss() -> int:
    """This process's peak resident memory in bytes (what a CPU rank costs)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class TrainingBackend(ABC):
    """One GPT model on one framework and device, with its optimizer and RNG.

    Construct with `(config, *, device, seed, dtype, compile, parallel)`: the model is
    initialised with GPT-2's init from `seed` (the same numbers on every backend is not
    promised; the same seed on the same backend is, and so on every rank). Weight decay
    applies to tensors with 2 or more dimensions only (matrices and embeddings), never to
    biases or norm gains.

    Under `parallel.world_size > 1` (after `connect`), `train_step` takes this rank's share
    of the step's micro-batches and the gradients are averaged over all ranks before
    clipping; `get_weights`, `get_optimizer_state`, `set_weights`, `set_optimizer_state`,
    `forward_logits` and `eval_loss` are collective (every rank calls them); the RNG state is
    each rank's own.
    """

    name: ClassVar[str]
    # What `compile=None` means: whether this framework's JIT pays off by default.
    default_compile: ClassVar[bool] = False

    config: GPTConfig
    device: str  # resolved device, e.g. "cpu", "cuda:0", "mps", "gpu"
    parallel: Parallel = Parallel()

    # ---- processes ------------------------------------------------------------------
    @classmethod
    def connect(cls, parallel: Parallel, device: str = "auto") -> Collectives:
        """Join the process group a launcher set up for `parallel` (from its environment)
        and return its collectives; one process needs no group. Call it once per process,
        before `create_backend`.

        Raises: UserError if this backend cannot train on several processes or the
        request cannot be met (no such device for this rank, no communication library)."""
        if parallel.distributed:
            raise UserError(f"the {cls.name} backend cannot train on several processes")
        return Collectives(parallel)

    def peak_memory(self) -> int:
        """Peak bytes this rank has used for training: the process's peak RSS by default
        (CPU, Apple's unified memory); accelerator memory where the framework tracks it."""
        return peak_rss()

    # ---- weights --------------------------------------------------------------------
    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """Every parameter by canonical name (`GPTConfig.canonical_shapes`).

        Returns: float32 numpy arrays, copies (later steps do not change them).
        Distributed: collective (FSDP gathers the shards); rank 0 gets the full weights,
        the other ranks an empty dict."""

    @abstractmethod
    def set_weights(self, tensors: dict[str, np.ndarray]) -> None:
        """Replace every parameter.

        Args: `tensors` by canonical name, already checked against `config` (names,
        shapes, finite floats: `weights.check_tensors`); any float dtype.
        Distributed: collective; rank 0's tensors are installed on every rank (the other
        ranks pass an empty dict)."""

    @abstractmethod
    def forward_logits(self, idx: np.ndarray) -> np.ndarray:
        """Logits of every position, in eval mode (no dropout), without a cache.

        Args: `idx` int [B, T] with T <= block_size. Returns: float32 numpy [B, T, V].
        Distributed: collective under FSDP."""

    # ---- training -------------------------------------------------------------------
    @abstractmethod
    def setup_optimizer(self, optim: OptimConfig) -> None:
        """Create the optimizers over every parameter that trains (the adapters only after
        `apply_lora`): AdamW, or with `optim.muon` Muon over the hidden matrices and AdamW
        over the rest (refused under LoRA); must precede `train_step` and the state calls."""

    @abstractmethod
    def train_step(self, micro_batches: Sequence[Batch], lr: float) -> StepResult:
        """One optimizer step: accumulate gradients of the mean loss over the micro-batches,
        clip them by global norm (`grad_clip`, 0 = off), take one AdamW step at `lr` (and
        one Muon step at `lr * muon.lr_ratio`).

        Distributed: every rank passes the same number of micro-batches (its share of the
        step); gradients are averaged over ranks once, after the last micro-batch, so the
        step equals one process's over all ranks' micro-batches.

        Returns: the mean loss over this rank's micro-batches (the trainer averages it over
        ranks) and the global gradient norm before clipping, possibly unevaluated.
        Raises: RuntimeError if `setup_optimizer` was not called."""

    @abstractmethod
    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy of one batch in eval mode (no dropout), without gradients.

        Args: `x`, `y` int [B, T]; targets of -1 are ignored. Distributed: collective
        under FSDP (the forward gathers shards), so every rank calls it equally often."""

    @abstractmethod
    def optimizer_state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tensors `get_optimizer_state` returns and `set_optimizer_state` needs, by
        name and shape: `exp_avg.<param>` and `exp_avg_sq.<param>` for every parameter
        AdamW trains, `momentum.<param>` for every one Muon trains (after `apply_lora`: the
        adapters' moments only). The checkpoint reader checks a saved state against this
        before installing it."""

    @abstractmethod
    def get_optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The optimizer's tensors (every name of `optimizer_state_shapes`, zeros before the
        first step) as float32 numpy, and JSON metadata (`{"step": int}`, plus the grad
        scale under float16). Distributed: collective; the other ranks get no tensors."""

    @abstractmethod
    def set_optimizer_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Install a state saved by either backend (already validated against
        `optimizer_state_shapes`; `meta["step"]` a non-negative int). Distributed:
        collective; rank 0's tensors are installed everywhere, `meta` is the same on
        every rank."""

    @abstractmethod
    def rng_state_shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The arrays of `get_rng_state` by name, as (numpy dtype name, shape)."""

    @abstractmethod
    def get_rng_state(self) -> dict[str, np.ndarray]:
        """The framework RNG state that dropout draws from, so a resumed run continues
        bit-identically. Names are backend-specific: states do not cross backends."""

    @abstractmethod
    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore `get_rng_state`'s arrays (validated against `rng_state_shapes`)."""

    # ---- LoRA -----------------------------------------------------------------------
    lora: "LoRAConfig | None" = None  # set by apply_lora

    @abstractmethod
    def apply_lora(self, lora: "LoRAConfig") -> None:
        """Freeze the model and add LoRA adapters to the Linears `lora` targets, initialised
        by `backends.lora.init_adapters` from the construction seed (the same numbers on every
        backend). Afterwards get/set_weights still move the frozen base (canonical names),
        the forward pass includes the adapters, and the optimizer, its state and
        `optimizer_state_shapes` cover the adapters only.
        Raises: RuntimeError after `setup_optimizer` (the optimizer would miss them)."""

    @abstractmethod
    def get_adapters(self) -> dict[str, np.ndarray]:
        """Every adapter by name (`LoRAConfig.adapter_shapes`) as float32 numpy copies."""

    @abstractmethod
    def set_adapters(self, tensors: dict[str, np.ndarray]) -> None:
        """Replace every adapter (names and shapes already checked)."""

    # ---- utilities ------------------------------------------------------------------
    @classmethod
    def available_memory(cls, device: str, processes: int = 1) -> int | None:
        """Bytes free for a model on `device` (before building one), or None if unknown,
        for each of `processes` ranks on this machine. The default is the system's available
        memory shared by them: right for CPUs and for Apple's unified memory."""
        free = system_available_memory()
        return None if free is None else free // max(1, processes)

    def cpu_threads(self) -> int | None:
        """The intra-op CPU threads this backend trains with, when it trains on this
        machine's CPU in one process and can change them (`set_cpu_threads`); else None."""
        return None

    def set_cpu_threads(self, n: int) -> None:
        """Train on `n` CPU threads from the next step on (see `gptbench.backends.cpu`)."""
        raise NotImplementedError(f"{self.name} cannot change its CPU threads")

    def hints(self) -> list[str]:
        """One-line suggestions about this backend's setup (a slow library it could
        replace, say), printed when a run starts. Empty when there is nothing to say."""
        return []

    def num_params(self) -> int:
        return self.config.num_params()

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


class GenerationBackend(ABC):
    """What `backends/generate.py` drives: prefill, one cached step, sampling.

    The cache, the logits and the generator are the backend's own objects; the engine
    only passes them back. Everything else (windows, stop strings, streaming) is the
    engine's.
    """

    config: GPTConfig
    device: str

    @abstractmethod
    def new_cache(self, pad: np.ndarray | None = None) -> Any:
        """An empty KV cache for one batch.

        Args: `pad[b]` = the number of left-padding tokens of row b in the prompt that
        will be prefilled into it (batched prompts of different lengths): padded keys are
        masked and positions restart at 0 after the padding. None = no padding."""

    @abstractmethod
    def forward_last(self, ids: np.ndarray, cache: Any | None) -> Any:
        """Logits of the last position of each row, [B, V] float32, left on the device.

        Args: `ids` int [B, T]. With a cache, `ids` are the new tokens and their keys and
        values are appended to it (a prefill on an empty cache, or one decode step);
        without one, `ids` is the whole context (no padding)."""

    @abstractmethod
    def sample(self, logits: Any, params: SamplingParams, history: np.ndarray | None, generator: Any) -> np.ndarray:
        """One token per row, after the filters of `backends/sampling.py` in their order.

        Args: `logits` from `forward_last`; `history` int [B, W] (-1 = padding) for the
        repetition penalty; `generator` from `make_generator`. Returns: int64 numpy [B]."""

    @abstractmethod
    def make_generator(self, seed: int | None) -> Any:
        """A sampling RNG, independent of the training RNG; None = seeded from the OS."""


class Backend(TrainingBackend, GenerationBackend):
    """A model that both trains and generates: what each framework implements."""


def system_available_memory() -> int | None:
    """MemAvailable on Linux, physical memory on macOS; None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(needed: int, available: int | None, what: str, fix: str) -> None:
    """Refuse, before building anything, work that cannot fit in memory (UserError)."""
    if available is not None and needed > available:
        raise UserError(f"{what} needs about {needed / 2**30:,.1f} GiB but only {available / 2**30:,.1f} GiB is available; {fix}")


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
