"""The MLX optimizers: AdamW as the contract defines it, and Muon with its Newton-Schulz
orthogonalisation. Mirrors `backends/torch/optim.py`.

AdamW is `mlx.optimizers.AdamW` with `bias_correction=True` (MLX defaults to False; torch
always corrects), eps added after the bias-corrected sqrt(v) (MLX's and torch's placement
agree) and weight decay on >= 2-D tensors only. Muon is the float32 update of
`backends.optim.MuonConfig`, the same math as torch's: `mlx.optimizers.Muon` adds weight
decay to the gradient and cannot split c_attn.
"""

from __future__ import annotations

# the model first: it may preload a faster CBLAS, which must happen before mlx.core loads.
import gptbench.backends.mlx.model  # noqa: F401  # isort: skip

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path, tree_unflatten

from gptbench.backends.optim import NS_COEFFICIENTS, NS_EPS, NS_STEPS, MuonConfig, OptimConfig


class AdamW(optim.AdamW):
    """`mlx.optimizers.AdamW` with weight decay only on >= 2-D tensors (matrices and
    embeddings), the rule torch's parameter groups implement; biases and norm gains get
    plain (bias-corrected) Adam. The decision is made on static shapes, so it compiles."""

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if parameter.ndim >= 2:
            return super().apply_single(gradient, parameter, state)
        return optim.Adam.apply_single(self, gradient, parameter, state)


def adamw(optim_config: OptimConfig) -> AdamW:
    """AdamW with `optim_config`'s hyperparameters; the learning rate is set per step by the
    backend."""
    return AdamW(
        learning_rate=0.0,
        betas=[optim_config.beta1, optim_config.beta2],
        eps=optim_config.eps,
        weight_decay=optim_config.weight_decay,
        bias_correction=True,
    )


def orthogonalize(updates: list[mx.array]) -> list[mx.array]:
    """NS of `backends.optim.MuonConfig` for every update, each [blocks, rows, cols], in float32.

    Blocks of the same (transposed when tall) shape run through the iteration as one batch:
    the hidden matrices of a GPT come in two or three shapes, so a step is a few batched
    matmul chains instead of one per matrix."""
    a, b, c = NS_COEFFICIENTS
    oriented = [u.swapaxes(-1, -2) if u.shape[-2] > u.shape[-1] else u for u in updates]
    same_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(oriented):
        same_shape.setdefault(tuple(x.shape[1:]), []).append(i)
    out: list[mx.array] = list(updates)
    for members in same_shape.values():
        X = mx.concatenate([oriented[i] for i in members])
        X = X / (mx.linalg.norm(X, axis=(-2, -1), keepdims=True) + NS_EPS)
        for _ in range(NS_STEPS):
            A = X @ X.swapaxes(-1, -2)
            X = a * X + (b * A + c * (A @ A)) @ X
        ends = np.cumsum([oriented[i].shape[0] for i in members])[:-1].tolist()
        for i, part in zip(members, mx.split(X, ends, axis=0)):
            out[i] = part.swapaxes(-1, -2) if updates[i].shape[-2] > updates[i].shape[-1] else part
    return out


class Muon(optim.Optimizer):
    """Muon over 2-D matrices: the update of `backends.optim.MuonConfig`, in float32.

    `blocks` gives each parameter's row blocks by canonical name (the path MLX passes).
    The learning rate and the momentum are arrays in the state, set by the backend before
    every step from `steps` (updates taken, the momentum warmup's clock), so the compiled
    training step sees them change (a Python attribute would be frozen into the trace)."""

    def __init__(self, blocks: dict[str, int], muon: MuonConfig) -> None:
        super().__init__()
        self.blocks = blocks
        self.muon = muon
        self.steps = 0
        self.state["learning_rate"] = mx.array(0.0, dtype=mx.float32)
        self.state["momentum"] = mx.array(muon.momentum, dtype=mx.float32)

    def init_single(self, parameter: mx.array, state: dict) -> None:
        state["momentum_buffer"] = mx.zeros(parameter.shape, dtype=mx.float32)

    def apply_gradients(self, gradients: dict, parameters: dict) -> dict:
        if not self._initialized:
            self.init(gradients)
        self.state["step"] = self.step + 1
        mu, eta, wd = self.state["momentum"], self.state["learning_rate"], self.muon.weight_decay

        def nesterov(path: str, g: mx.array, state: dict) -> mx.array:
            g = g.astype(mx.float32)
            state["momentum_buffer"] = mu * state["momentum_buffer"] + (1 - mu) * g
            return (1 - mu) * g + mu * state["momentum_buffer"]

        updates = tree_flatten(tree_map_with_path(nesterov, gradients, self.state))
        params = dict(tree_flatten(tree_map(lambda g, p: p, gradients, parameters)))
        orthogonal = orthogonalize([u.reshape(self.blocks[name], -1, u.shape[1]) for name, u in updates])
        new = []
        for (name, _), o in zip(updates, orthogonal):
            p = params[name]
            rows = p.shape[0] // self.blocks[name]
            if wd:
                p = p * (1 - eta * wd)
            new.append((name, (p - (eta * max(1.0, rows / p.shape[1]) ** 0.5) * o.reshape(p.shape)).astype(p.dtype)))
        return tree_unflatten(new)
