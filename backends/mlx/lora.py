"""LoRA in MLX: the adapted Linear and how a model gets its adapters. Read it beside
`backends/torch/lora.py`; `backends/lora.py` has the settings and the math both share."""

from __future__ import annotations

from gptbench.backends.mlx.model import GPT, dropout  # isort: skip  (model.py loads the faster CBLAS before mlx.core)

import mlx.core as mx
import mlx.nn as nn

from gptbench.backends.lora import LoRAConfig


class LoRAKeys:
    """Where `LoRALinear`s take their dropout keys: the training step sets `key` before the
    forward pass and clears it after (eval and generation leave it None: no dropout). MLX
    has no global RNG a compiled step could restore, and the Linears' call signature has
    no key, so the keys travel here; the layers draw in call order, which is fixed."""

    def __init__(self) -> None:
        self.key: mx.array | None = None

    def next(self) -> mx.array | None:
        if self.key is None:
            return None
        self.key, sub = mx.random.split(self.key)
        return sub


class LoRALinear(nn.Linear):
    """A frozen Linear plus a trainable low-rank update (`backends/lora.py` has the math):
    y = W x + b + scale · B (A dropout(x)). Subclassing Linear keeps `weight` and `bias`
    under their canonical names; the adapters are `lora_a` [r, in] and `lora_b` [out, r]."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, scale: float, dropout: float, keys: LoRAKeys) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.lora_a = mx.zeros((rank, in_features))
        self.lora_b = mx.zeros((out_features, rank))
        self.scale = scale
        self.lora_dropout = dropout
        self.keys = keys

    def __call__(self, x: mx.array) -> mx.array:
        key = self.keys.next() if self.lora_dropout > 0 else None
        update = (dropout(x, self.lora_dropout, key) @ self.lora_a.T) @ self.lora_b.T
        return super().__call__(x) + self.scale * update


def apply_lora(model: GPT, lora: LoRAConfig) -> LoRAKeys:
    """Freeze every parameter, then swap each targeted Linear for a LoRALinear holding the
    same weight and bias arrays; only the adapters (set by the backend) will train.
    Returns the dropout key holder the training step feeds."""
    keys = LoRAKeys()
    model.freeze()
    for name in lora.modules(model.config):
        parent_name, _, attr = name.rpartition(".")
        parent: nn.Module = model
        for part in parent_name.split("."):
            parent = parent[int(part)] if isinstance(parent, list) else getattr(parent, part)
        old: nn.Linear = getattr(parent, attr)
        new = LoRALinear(old.weight.shape[1], old.weight.shape[0], "bias" in old, lora.rank, lora.scale, lora.dropout, keys)
        new.weight = old.weight
        if "bias" in old:
            new.bias = old.bias
        new.freeze(keys=["weight", "bias"] if "bias" in old else ["weight"], recurse=False)
        setattr(parent, attr, new)
    return keys
