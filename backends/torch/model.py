"""The GPT spec in PyTorch, with its KV cache. Read it beside `backends/mlx/model.py`: the
same classes, in the same order, with the same names, line for line where the frameworks allow.

Module attribute names are the canonical tensor names (`wte`, `wpe`, `h.N.attn.c_attn`, ...)
and torch `Linear` stores `[out, in]`, so `state_dict()` keys are already canonical and no
tensor is transposed between the backends. The model returns logits; the loss is
`cross_entropy` below, outside the model. Dropout draws from torch's global RNG (the
backend checkpoints it). Generation appends to a per-layer `KVCache`. Rotary embeddings
come from `spec.rope_tables` (non-persistent buffers, never in a weights file), looked up
at the positions the model computes anyway, so cached decoding and left padding rotate
every token by its true position.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptbench.backends.spec import GPTConfig, rope_tables

CACHE_STEP = 256  # the KV cache grows in chunks of this many positions


class KVCache:
    """Keys and values of one layer, `[B, H, capacity, D]`, grown in `CACHE_STEP` chunks.

    `update_and_fetch` writes the new positions into the preallocated buffer and returns
    views of everything cached so far, so a decode step never concatenates the history.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.offset = 0

    def update_and_fetch(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        prev, need = self.offset, self.offset + T
        if self.keys is None or need > self.keys.shape[2]:
            capacity = ((need + CACHE_STEP - 1) // CACHE_STEP) * CACHE_STEP
            new_k = k.new_empty(B, H, capacity, D)  # never read past `offset`: no need to zero
            new_v = v.new_empty(B, H, capacity, D)
            if self.keys is not None and prev:
                new_k[:, :, :prev, :] = self.keys[:, :, :prev, :]
                new_v[:, :, :prev, :] = self.values[:, :, :prev, :]
            self.keys, self.values = new_k, new_v
        self.keys[:, :, prev:need, :] = k
        self.values[:, :, prev:need, :] = v
        self.offset = need
        return self.keys[:, :, :need, :], self.values[:, :, :need, :]


class ModelCache:
    """One KVCache per layer plus the left padding of each row (batched prompts)."""

    def __init__(self, n_layer: int, pad: torch.Tensor | None = None) -> None:
        self.layers = [KVCache() for _ in range(n_layer)]
        self.pad = pad  # [B] int64: left-padding tokens per row, or None

    @property
    def offset(self) -> int:
        return self.layers[0].offset

    def _pads(self) -> torch.Tensor:
        k = self.layers[0].keys
        return self.pad if self.pad is not None else torch.zeros(k.shape[0], dtype=torch.int64, device=k.device)

    def select(self, rows: list[int]) -> "ModelCache":
        """A cache of only `rows` (continuous batching: finished rows leave), without the
        leading positions that every kept row pads."""
        keep = torch.as_tensor(rows, dtype=torch.int64, device=self.layers[0].keys.device)
        pad = self._pads()[keep]
        drop = int(pad.min())
        out = ModelCache(len(self.layers), pad - drop if bool((pad > drop).any()) else None)
        for src, dst in zip(self.layers, out.layers):
            dst.update_and_fetch(src.keys[keep, :, drop : src.offset], src.values[keep, :, drop : src.offset])
        return out

    def join(self, other: "ModelCache") -> "ModelCache":
        """This cache's rows, then `other`'s (rows joining a batch), the shorter left-padded
        so that both end at the same position; padded keys are masked like a prompt's."""
        T = max(self.offset, other.offset)
        pad = torch.cat([self._pads() + (T - self.offset), other._pads() + (T - other.offset)])
        out = ModelCache(len(self.layers), pad if bool(pad.any()) else None)

        def left(t: torch.Tensor, n: int) -> torch.Tensor:
            return torch.cat([t.new_zeros(*t.shape[:2], T - n, t.shape[3]), t[:, :, :n]], dim=2)

        for a, b, dst in zip(self.layers, other.layers, out.layers):
            dst.update_and_fetch(torch.cat([left(a.keys, a.offset), left(b.keys, b.offset)]),
                                 torch.cat([left(a.values, a.offset), left(b.values, b.offset)]))
        return out


def padding_mask(start: int, T: int, pad: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, start+T] boolean attention mask for left-padded rows: causal, padded keys
    masked out, and a padded query still sees itself (its output is never used)."""
    keys = torch.arange(start + T, device=pad.device)
    queries = torch.arange(start, start + T, device=pad.device)[:, None]
    allowed = (keys[None, :] <= queries)[None] & (keys[None, None, :] >= pad[:, None, None])
    allowed = allowed | (keys[None, :] == queries)[None]
    return allowed[:, None]


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean attention mask of packed rows (`segments` [B, T]): causal, and a
    token sees the shared segment 0 and its own segment only (so several continuations
    after one context each see the context and themselves, never each other)."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]
    return (causal[None] & ((keys == 0) | (keys == queries)))[:, None]


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of `x` [B, H, T, D] by the angles whose cos and
    sin are [1 or B, 1, T, D/2] (the half-split convention of `spec.rope_tables`), in
    float32 (the tables' dtype), returned in the dtype of `x` (bfloat16 under autocast)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask keeping each element with probability 1 - p (to within 2^-32), from
    numpy's PCG64 seeded by one draw of torch's global generator: the masks follow
    `torch.manual_seed` and the RNG state the backend checkpoints, at ~4x the speed of
    torch's CPU `bernoulli_`, which draws one Mersenne-Twister number per element."""
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    bits = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    return torch.from_numpy(bits >= np.uint32(min(round(p * 2**32), 2**32 - 1))).view(shape)


class _Masked(torch.autograd.Function):
    """x · keep · scale, saving only the boolean mask for the backward pass (as torch's own
    dropout does). numpy multiplies: its float-by-bool loop is ~3x torch's CPU `where` and
    `mul` with a bool operand (measured at the attention weights' size)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _masked(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return _masked(grad, keep, ctx.scale), None, None


def _masked(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    out = np.multiply(x.detach().numpy(), keep.numpy())
    out *= out.dtype.type(scale)
    return torch.from_numpy(out)


class Dropout(nn.Module):
    """Inverted dropout, `nn.Dropout`'s, with its masks from `keep_mask` on the CPU in eager
    mode: torch's CPU masks were a quarter of a training step at nanoGPT's Shakespeare-char
    shape (dropout 0.2). On CUDA, MPS and under `torch.compile`, torch's own fused dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def draws_own_masks(self, x: torch.Tensor) -> bool:
        return (self.training and self.p > 0.0 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.draws_own_masks(x):
            return _Masked.apply(x, keep_mask(x.shape, self.p), 1.0 / (1.0 - self.p))
        return F.dropout(x, self.p, training=self.training) if self.p > 0.0 else x


def causal_attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: Dropout) -> torch.Tensor:
    """Causal attention with dropout on the weights, spelled out: with dropout torch's CPU
    SDPA leaves its flash kernel for the same math path, but with `bernoulli_` masks and a
    safe-softmax pass that a causal mask (no row fully masked) never needs."""
    T = q.shape[-2]
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    weights = scores.masked_fill_(future, float("-inf")).softmax(dim=-1)
    return dropout(weights) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.attn_dropout = Dropout(config.dropout)
        self.qk_norm_eps = config.norm_eps if config.qk_norm else None
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        if self.qk_norm_eps is not None:  # eps passed explicitly: torch's default depends on the dtype
            q = F.rms_norm(q, (D,), eps=self.qk_norm_eps)
            k = F.rms_norm(k, (D,), eps=self.qk_norm_eps)
        if rope is not None:  # before the cache write: the cache holds rotated keys
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        start = 0
        if cache is not None:
            start = cache.offset
            k, v = cache.update_and_fetch(k, v)
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.attn_dropout.draws_own_masks(x) and start == 0:
            y = causal_attention_with_dropout(q, k, v, self.attn_dropout)
        elif start == 0 and T > 1:
            # Training (attention dropout is fused) or a prefill: plain causal attention.
            dropout_p = self.attn_dropout.p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T > 1:
            # Several new tokens on top of a cache: torch's is_causal aligns upper-left, so
            # spell out the lower-right causal mask.
            causal = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        else:  # one new token attends to everything cached
            y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        if config.mlp == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            h = F.gelu(self.c_fc(x), approximate="tanh")  # the tanh approximation, GPT-2's gelu_new
        elif self.kind == "relu2":
            h = F.relu(self.c_fc(x)).square()
        else:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, mask, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # not parameters: rebuilt from the config, never saved
            cos, sin = rope_tables(config)
            self.register_buffer("_rope_cos", torch.from_numpy(cos), persistent=False)
            self.register_buffer("_rope_sin", torch.from_numpy(sin), persistent=False)
        self.drop = Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def init_weights(self, seed: int) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2·n_layer) (or
        exactly 0 with `zero_init_proj`), biases 0, norm gains 1, drawn from a generator
        seeded here (not the global RNG). A zeroed projection is still drawn, so every other
        tensor is the one the same seed gives without the option."""
        gen = torch.Generator().manual_seed(seed)
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.copy_(torch.randn(p.shape, generator=gen) * proj_std)
                    if self.config.zero_init_proj:
                        p.zero_()
                elif p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                elif name.endswith(".bias"):
                    p.zero_()
                else:  # norm gains
                    p.fill_(1.0)

    def forward(self, idx: torch.Tensor, cache: ModelCache | None = None, last_only: bool = False,
                keep: torch.Tensor | None = None, packed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, T, V] (or [B, 1, V] with `last_only`; [N, V] at the flat positions
        b * T + t in `keep`, so the head runs only where asked). `packed` = (positions [B, T],
        segments [B, T]) of packed rows (`segment_mask`), without a cache. Dropout follows
        `self.training`."""
        B, T = idx.shape
        start = cache.offset if cache is not None else 0
        pad = cache.pad if cache is not None else None
        pos = torch.arange(start, start + T, device=idx.device)
        mask = None
        if pad is not None:  # positions restart at 0 after each row's padding
            pos = (pos[None, :] - pad[:, None]).clamp(min=0)
            mask = padding_mask(start, T, pad)
        elif packed is not None:
            pos, mask = packed[0], segment_mask(packed[1])
        x, rope = self.wte(idx), None
        if self.config.pos == "rope":  # [T] or [B, T] positions -> [1 or B, 1, T, D/2]
            rope = (self._rope_cos[pos].view(-1, 1, T, self._rope_cos.shape[1]),
                    self._rope_sin[pos].view(-1, 1, T, self._rope_sin.shape[1]))
        else:
            x = x + self.wpe(pos)
        x = self.drop(x)
        for i, block in enumerate(self.h):
            x = block(x, cache.layers[i] if cache is not None else None, mask, rope)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        elif keep is not None:
            x = x.reshape(B * T, -1)[keep]
        logits = self.head(x)
        if self.config.logit_softcap:  # in float32 at least: tanh in bfloat16 is off by ~7e-2
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.to(torch.promote_types(logits.dtype, torch.float32)) / cap)
        return logits

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head: the token embedding, transposed, when tied; else its own matrix."""
        return F.linear(x, self.wte.weight) if self.config.tie_embeddings else self.lm_head(x)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in float32; targets of -1 are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-1)


def target_logprobs(model: GPT, idx: torch.Tensor, targets: np.ndarray, positions: np.ndarray | None = None,
                    segments: np.ndarray | None = None) -> np.ndarray:
    """log p(target) at every position, float32 numpy [B, T], 0 where a target is -1; the
    head and the log-sum-exp (float32) run only at the positions with a target. With
    `positions` and `segments` the rows are packed (see `GPT.forward`)."""
    flat = np.flatnonzero(np.asarray(targets) >= 0)
    packed = None
    if segments is not None:
        packed = tuple(torch.as_tensor(np.asarray(a, dtype=np.int64), device=idx.device) for a in (positions, segments))
    logits = model(idx, keep=torch.as_tensor(flat, device=idx.device), packed=packed).float()
    t = torch.as_tensor(np.asarray(targets, dtype=np.int64).reshape(-1)[flat], device=idx.device)
    picked = logits.gather(-1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    out = np.zeros(np.shape(targets), dtype=np.float32)
    out.reshape(-1)[flat] = picked.cpu().numpy()
    return out
