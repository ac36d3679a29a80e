"""The backend contracts: what the trainer and the generation engine may ask of a model.

There are two contracts because they have two different clients:

- `TrainingBackend` serves the trainer, `convert` and the parity suite: weights in and out
  as numpy by canonical name, one optimizer step over micro-batches, an evaluation loss,
  and the optimizer and RNG state that make a resumed run continue exactly.
- `GenerationBackend` serves the generation engine (`backends/generate.py`): a KV cache,
  the logits of the last position, and sampling with its own RNG.

`Backend` is both, and is what `torch.backend.TorchBackend` and `mlx.backend.MLXBackend`
implement (each framework's folder is laid out by job: model, optim, parallel, decode,
sampling, backend). Everything that crosses the boundary is numpy or plain Python, except
the opaque cache, logits and sampling generator, which the engine only hands back to the
backend that made them; so a backend keeps its tensors on any device.

Data parallelism (several processes, one model each) is part of the contract: a process
joins its launcher's group with `backend_class(name).connect(Parallel(...), device)`, which
returns the `Collectives` the trainer needs (sums of a few floats, a stop agreement, a
broadcast of rank 0's plan), and passes the same `Parallel` to `create_backend`. The
backend then keeps gradients in sync inside `train_step`; a few calls become collective
(every rank calls them, in the same order), as their docstrings say.

What the contract uses lives beside it: optimizer configuration in `backends/optim.py`,
`Parallel` and `Collectives` in `backends/parallel.py`, memory probing in
`backends/memory.py`, and the lazy registry (`create_backend`, `backend_class`) in
`backends/registry.py`. Importing this module never imports torch or mlx.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from gptbench.backends.memory import peak_rss, system_available_memory
from gptbench.backends.optim import OptimConfig
from gptbench.backends.parallel import Collectives, Parallel
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.lora import LoRAConfig


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

    # True where `token_logprobs` scores packed rows (a context shared by its continuations)
    shares_context: bool = False

    @abstractmethod
    def forward_logits(self, idx: np.ndarray) -> np.ndarray:
        """Logits of every position, in eval mode (no dropout), without a cache.

        Args: `idx` int [B, T] with T <= block_size. Returns: float32 numpy [B, T, V].
        Distributed: collective under FSDP."""

    def token_logprobs(self, idx: np.ndarray, targets: np.ndarray, positions: np.ndarray | None = None,
                       segments: np.ndarray | None = None) -> np.ndarray:
        """log p(targets[b, t] | idx[b, :t + 1]) at every position, in eval mode, without a
        cache: what log-likelihood scoring (`gptbench.evaluation`) reads, computed where the
        logits are so [B, T, V] never crosses to numpy. A row may be right-padded: causal
        attention keeps padding from changing the positions before it.

        Packed rows (only where `shares_context`): `positions` int [B, T] gives each token's
        position (each below block_size; T itself may exceed it) and `segments` int [B, T]
        what it attends to: the tokens before it in segment 0 or in its own segment. One
        context (segment 0) then serves several continuations (segments 1, 2, ...) in one row.

        Args: `idx`, `targets` int [B, T], T <= block_size unless packed; a target of -1
        gives 0. Returns: float32 numpy [B, T]. This default goes through `forward_logits`
        and does not pack."""
        if segments is not None:
            raise NotImplementedError(f"{type(self).__name__} does not score packed rows (shares_context is False)")
        logits = self.forward_logits(idx).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        logp = logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))
        t = np.asarray(targets)
        picked = np.take_along_axis(logp, np.maximum(t, 0)[..., None], axis=-1)[..., 0]
        return np.where(t >= 0, picked, 0.0).astype(np.float32)

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
        masked and positions restart at 0 after the padding. None = no padding.

        Continuous batching (`gptbench.serving`) changes a batch between tokens through two
        methods of the cache object: `cache.select(rows)` (a cache of only those rows) and
        `cache.join(other)` (both caches' rows, left-padded to one length), each giving
        every row exactly the context it had."""

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
