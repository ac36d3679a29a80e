"""Optimizer configuration shared by every backend: AdamW's hyperparameters, Muon's update
and which matrices it trains, and the optimizer-state names a checkpoint holds.

Why here and not in the contract (`base.py`): the run configuration builds these values
without importing a backend, and each framework's `optim.py` implements the update they
describe (`backends/torch/optim.py`, `backends/mlx/optim.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gptbench.backends.spec import GPTConfig

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
