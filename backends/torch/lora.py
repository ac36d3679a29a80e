"""LoRA in PyTorch: the adapted Linear and how a model gets its adapters. Read it beside
`backends/mlx/lora.py`; `backends/lora.py` has the settings and the math both share."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptbench.backends.lora import LoRAConfig
from gptbench.backends.torch.model import GPT, Dropout


class LoRALinear(nn.Linear):
    """A frozen Linear plus a trainable low-rank update (`backends/lora.py` has the math):
    y = W x + b + scale · B (A dropout(x)). Subclassing Linear keeps `weight` and `bias`
    under their canonical names; the adapters are `lora_a` [r, in] and `lora_b` [out, r]."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, scale: float, dropout: float) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.lora_a = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = scale
        self.lora_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return super().forward(x) + self.scale * update


def apply_lora(model: GPT, lora: LoRAConfig) -> None:
    """Freeze every parameter, then swap each targeted Linear for a LoRALinear holding the
    same weight and bias tensors; only the adapters (set by the backend) will train."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in lora.modules(model.config):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old: nn.Linear = getattr(parent, attr)
        new = LoRALinear(old.in_features, old.out_features, old.bias is not None, lora.rank, lora.scale, lora.dropout)
        new.to(old.weight.device)
        new.weight, new.bias = old.weight, old.bias
        setattr(parent, attr, new)
