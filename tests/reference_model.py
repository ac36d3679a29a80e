"""A float64 numpy forward pass of the GPT spec, written from the spec alone.

It shares no code with either backend, so agreeing with it means a backend implements the
spec, not merely that two backends share a bug.
"""

from __future__ import annotations

import numpy as np


def _norm(x: np.ndarray, w: dict, prefix: str, cfg) -> np.ndarray:
    if cfg.norm == "rmsnorm":
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps)
        return y * w[f"{prefix}.weight"]
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + cfg.norm_eps) * w[f"{prefix}.weight"]
    if cfg.bias:
        y = y + w[f"{prefix}.bias"]
    return y


def _linear(x: np.ndarray, w: dict, prefix: str, cfg) -> np.ndarray:
    y = x @ w[f"{prefix}.weight"].T
    if cfg.bias:
        y = y + w[f"{prefix}.bias"]
    return y


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def reference_rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding of x [..., T, D] at integer `positions` [T], in float64, written
    from its definition: position p turns the channel pair (i, i + D/2) by the angle
    p * theta^(-2i/D), i.e. (a, b) -> (a cos - b sin, a sin + b cos)."""
    D = x.shape[-1]
    half = D // 2
    out = np.empty(x.shape, dtype=np.float64)
    for i in range(half):
        angle = positions.astype(np.float64) * theta ** (-2.0 * i / D)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * np.cos(angle) - b * np.sin(angle)
        out[..., i + half] = a * np.sin(angle) + b * np.cos(angle)
    return out


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def reference_logits(cfg, weights: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] in float64 for token ids [B, T]."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    x = w["wte.weight"][idx]
    if cfg.pos == "learned":
        x = x + w["wpe.weight"][np.arange(T)][None]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg.n_layer):
        p = f"h.{i}"
        h = _norm(x, w, f"{p}.ln_1", cfg)
        qkv = _linear(h, w, f"{p}.attn.c_attn", cfg)
        q, k, v = np.split(qkv, 3, axis=-1)
        q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        if cfg.qk_norm:
            q, k = _rms(q, cfg.norm_eps), _rms(k, cfg.norm_eps)
        if cfg.pos == "rope":
            q, k = reference_rope(q, np.arange(T), cfg.rope_theta), reference_rope(k, np.arange(T), cfg.rope_theta)
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
        att = np.where(causal, att, -np.inf)
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att = att / att.sum(axis=-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + _linear(y, w, f"{p}.attn.c_proj", cfg)
        h = _norm(x, w, f"{p}.ln_2", cfg)
        if cfg.mlp == "gelu":
            m = _gelu_tanh(_linear(h, w, f"{p}.mlp.c_fc", cfg))
        elif cfg.mlp == "relu2":
            m = np.maximum(_linear(h, w, f"{p}.mlp.c_fc", cfg), 0.0) ** 2
        else:
            g = _linear(h, w, f"{p}.mlp.c_gate", cfg)
            m = g / (1.0 + np.exp(-g)) * _linear(h, w, f"{p}.mlp.c_fc", cfg)
        x = x + _linear(m, w, f"{p}.mlp.c_proj", cfg)
    x = _norm(x, w, "ln_f", cfg)
    head = w["wte.weight"] if cfg.tie_embeddings else w["lm_head.weight"]
    logits = x @ head.T
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * np.tanh(logits / cfg.logit_softcap)
    return logits


def reference_loss(cfg, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy over the targets that are not -1 (ignored), in float64."""
    logits = reference_logits(cfg, weights, x)
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    valid = y >= 0
    picked = np.take_along_axis(logp, np.maximum(y, 0)[..., None], axis=-1)[..., 0]
    return float(-picked[valid].mean())


def reference_gradients(cfg, weights: dict[str, np.ndarray], batches) -> tuple[list[float], dict[str, np.ndarray]]:
    """(loss of each micro-batch, gradient of their mean loss) in float64.

    Autograd through the torch model run in float64: its forward is held to
    `reference_logits` above by the contract suite, and torch's autograd is the trusted
    part, so this is a float64 oracle for every backend's gradients (MLX's included)."""
    import torch

    import torch.nn.functional as F

    from gptbench.backends.torch.model import GPT

    model = GPT(cfg).double()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(np.asarray(weights[name], dtype=np.float64)))
    losses = []
    for x, y in batches:
        logits = model(torch.from_numpy(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1), ignore_index=-1)
        (loss / len(batches)).backward()
        losses.append(loss.item())
    return losses, {name: p.grad.numpy().copy() for name, p in params.items()}


def perturbed_weights(cfg, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random weights with non-trivial norms and biases (init zeros/ones would hide bugs)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in cfg.canonical_shapes().items():
        if name.endswith(".weight") and len(shape) == 1:
            out[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (scale * rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return out


# ---- Muon, written from its definition (backends/optim.py MuonConfig's docstring) ------------------------
NS_ABC = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic coefficients


def reference_newton_schulz(G: np.ndarray, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    """Five quintic Newton-Schulz iterations on one matrix, float64: an approximately
    orthogonal matrix with G's singular vectors."""
    a, b, c = NS_ABC
    X = np.asarray(G, dtype=np.float64)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (np.linalg.norm(X) + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


def reference_muon_update(W: np.ndarray, g: np.ndarray, buf: np.ndarray, lr: float, mu: float, wd: float, blocks: int):
    """One Muon step of a [rows, cols] matrix in float64: (new W, new momentum buffer)."""
    buf = mu * buf + (1 - mu) * g
    u = (1 - mu) * g + mu * buf
    rows = W.shape[0] // blocks
    O = np.concatenate([reference_newton_schulz(u[i * rows : (i + 1) * rows]) for i in range(blocks)])
    return W * (1 - lr * wd) - lr * max(1.0, rows / W.shape[1]) ** 0.5 * O, buf
