"""Sampling in torch: the repetition penalty and the top-k / top-p / min-p filters of
`gptbench.backends.sampling` (whose numpy references they match), the sampling RNG, and the
draw. Mirrors `backends/mlx/sampling.py`."""

from __future__ import annotations

import numpy as np
import torch

from gptbench.backends.sampling import SamplingParams, apply_filters


def repetition_penalty(logits: torch.Tensor, history: np.ndarray, penalty: float) -> torch.Tensor:
    h = torch.as_tensor(np.asarray(history, dtype=np.int64), device=logits.device)
    counts = torch.zeros_like(logits).scatter_add_(1, h.clamp(min=0), (h >= 0).to(logits.dtype))
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalised, logits)


def center(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.max(dim=-1, keepdim=True).values


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    remove = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, before >= p)
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    if min_p <= 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + float(np.log(min_p))
    return logits.masked_fill(logits < threshold, float("-inf"))


def filtered_logits(logits: torch.Tensor, params: SamplingParams, history: np.ndarray | None) -> torch.Tensor:
    """The fixed filter order of gptbench.backends.sampling, vectorised over the batch."""
    return apply_filters(logits, params, history, repetition_penalty=repetition_penalty, center=center,
                         top_k=top_k_filter, top_p=top_p_filter, min_p=min_p_filter)


def make_generator(seed: int | None, device: str) -> torch.Generator:
    """A sampling RNG on `device` (a CUDA one there, else the CPU's), independent of the
    training RNG; None = seeded from the OS."""
    gen = torch.Generator(device=device if device.startswith("cuda") else "cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


@torch.inference_mode()
def sample_tokens(logits: torch.Tensor, params: SamplingParams, history: np.ndarray | None, generator: torch.Generator) -> np.ndarray:
    """One token per row (`GenerationBackend.sample`): the argmax when greedy, else a draw."""
    x = filtered_logits(logits, params, history)
    if params.greedy:
        return x.argmax(dim=-1).cpu().numpy()
    probs = torch.softmax(x, dim=-1)
    if probs.device.type != generator.device.type:
        probs = probs.cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].cpu().numpy()
