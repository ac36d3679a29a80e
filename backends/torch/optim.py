"""The torch optimizers: AdamW as the contract defines it, and Muon with its Newton-Schulz
orthogonalisation. Mirrors `backends/mlx/optim.py`.

AdamW is torch's own (fused where this torch has it) with weight decay on >= 2-D tensors
only. Muon is the float32 update of `backends.optim.MuonConfig`: `torch.optim.Muon` runs
Newton-Schulz in bfloat16, 1-3% off the exact update, and takes no split blocks. Muon
orthogonalises whole matrices, so it trains with one process or DDP, not FSDP's shards.
"""

from __future__ import annotations

from typing import Any

import torch

from gptbench.backends.optim import NS_COEFFICIENTS, NS_EPS, NS_STEPS, MuonConfig, OptimConfig


def _torch_at_least(major: int, minor: int) -> bool:
    found = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return found >= (major, minor)


def adamw(params: list[torch.nn.Parameter], optim: OptimConfig, device: str) -> torch.optim.AdamW:
    """AdamW over `params`, decaying the >= 2-D ones (matrices and embeddings) only; the
    learning rate is set per step by the backend."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs: dict[str, Any] = {"lr": 0.0, "betas": (optim.beta1, optim.beta2), "eps": optim.eps}
    # One fused kernel per step instead of a dozen foreach passes over the parameters:
    # ~5% of a tiny CPU step (benchmarks/train_throughput.py). CPU support came in 2.4.
    if device.startswith("cuda") or (device == "cpu" and _torch_at_least(2, 4)):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, **kwargs)


def orthogonalize(updates: list[torch.Tensor]) -> list[torch.Tensor]:
    """NS of `backends.optim.MuonConfig` for every update, each [blocks, rows, cols], in float32.

    Blocks of the same (transposed when tall) shape run through the iteration as one batch:
    the hidden matrices of a GPT come in two or three shapes, so a step is a few batched
    matmul chains instead of one per matrix."""
    a, b, c = NS_COEFFICIENTS
    oriented = [u.mT if u.shape[-2] > u.shape[-1] else u for u in updates]
    same_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(oriented):
        same_shape.setdefault(tuple(x.shape[1:]), []).append(i)
    out: list[torch.Tensor] = list(updates)
    for members in same_shape.values():
        X = torch.cat([oriented[i] for i in members])
        X = X / (torch.linalg.matrix_norm(X, keepdim=True) + NS_EPS)
        for _ in range(NS_STEPS):
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
        for i, part in zip(members, X.split([oriented[i].shape[0] for i in members])):
            out[i] = part.mT if updates[i].shape[-2] > updates[i].shape[-1] else part
    return out


class Muon(torch.optim.Optimizer):
    """Muon over 2-D matrices: the update of `backends.optim.MuonConfig`, in float32.

    Each parameter group holds the matrices orthogonalised in the same number of row
    blocks (`blocks`); `lr` is set per step by the backend. The step counter drives the
    momentum warmup and is checkpointed as the optimizer step."""

    def __init__(self, blocks: dict[torch.nn.Parameter, int], muon: MuonConfig) -> None:
        groups: dict[int, list[torch.nn.Parameter]] = {}
        for p, k in blocks.items():
            groups.setdefault(k, []).append(p)
        super().__init__([{"params": ps, "blocks": k} for k, ps in groups.items()], {"lr": 0.0})
        self.muon = muon
        self.steps = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        mu = self.muon.momentum_at(self.steps)
        params, updates = [], []
        for group in self.param_groups:
            k = group["blocks"]
            for p in group["params"]:
                g = p.grad.float()
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g, alpha=1 - mu)
                updates.append((g * (1 - mu) + buf * mu).view(k, -1, p.shape[1]))
                params.append((p, group))
        for (p, group), o in zip(params, orthogonalize(updates)):
            lr, rows = group["lr"], p.shape[0] // group["blocks"]
            if self.muon.weight_decay:
                p.mul_(1 - lr * self.muon.weight_decay)
            p.add_(o.reshape(p.shape).to(p.dtype), alpha=-lr * max(1.0, rows / p.shape[1]) ** 0.5)
        self.steps += 1
