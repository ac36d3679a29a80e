"""The torch decode weight layouts: what makes CPU generation's one-row matmuls fast
(oneDNN-prepacked weights, or column-major ones where that cannot run), applied to a model
that is not training and undone before it trains. Mirrors `backends/mlx/decode.py`.

Values never change, so get/set_weights and every op still work on a model in a decode
layout; only the memory order (or a packed copy beside each weight) differs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from gptbench.backends.torch.model import GPT

# The decode layouts pay only for a model whose matmuls stream from memory: a oneDNN call
# costs about 12 us more than MKL's before it reads a byte. Measured here (one-row decode,
# 65-token vocabulary, packed vs plain tokens/s): 0.6x at 0.8M Linear elements (the tiny
# preset), 0.76x at 3.2M, 1.04x at 4.8M, 1.5x at 7.5M, 1.7x at `small`, 1.7x at gpt2.
DECODE_LAYOUT_MIN_BYTES = 16 << 20


def matmul_bytes(model: GPT, tied: bool) -> int:
    """Bytes of the Linear weights and a tied head in float32: what one decoded token streams."""
    total = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return total + (4 * model.wte.weight.numel() if tied else 0)


def use_decode_layout(model: GPT, tied: bool, available_memory: Callable[[], int | None]) -> list[Callable[[], Any]] | None:
    """Put an inference model on the CPU in its decode layout when it is big enough to gain
    (`DECODE_LAYOUT_MIN_BYTES`): prepacked when this torch can and the packed copies fit
    beside the weights in the memory `available_memory()` reports (None: unknown), else
    column-major. Returns what undoes the prepacking, or None when nothing needs undoing
    (too small, or column-major)."""
    needed = matmul_bytes(model, tied)
    if needed < DECODE_LAYOUT_MIN_BYTES:
        return None  # small enough to stay in cache: MKL's plain path is faster
    available = available_memory()
    if available is None or available > 2 * needed:  # the packed copies must fit beside the weights
        undo = prepack_for_decoding(model, tied)
        if undo is not None:
            return undo
    column_major_for_decoding(model, tied)
    return None


def _onednn_linear_ops() -> Any:
    """torch's internal oneDNN linear ops when they exist and run here, else None."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(ops, "_reorder_linear_weight") or not hasattr(ops, "_linear_pointwise"):
        return None
    try:  # the ops are internal (torch.compile's CPU freezing uses them): check they run here
        probe = torch.ones(2, 3)
        ok = torch.allclose(ops._linear_pointwise(torch.ones(1, 3), ops._reorder_linear_weight(probe, 1), None, "none", [], ""),
                            torch.full((1, 2), 3.0))
    except (RuntimeError, TypeError):
        ok = False
    return ops if ok else None


def prepack_for_decoding(model: GPT, tied: bool) -> list[Callable[[], Any]] | None:
    """Route every Linear (and a tied head) of an inference model through oneDNN with its
    weight prepacked for one-row inputs; returns what undoes it, or None when this torch
    has no oneDNN linear (then nothing was changed).

    Why: decoding multiplies one row by every weight matrix, which is bound by memory
    bandwidth. On the AMD EPYC dev VM, MKL's path streams a 124M model's weights at about
    19 GB/s while oneDNN's prepacked inner product streams them at about 28 GB/s
    (benchmarks/generate.py: 40 -> 56 tokens/s at the gpt2 shape, the same greedy tokens).
    The dense weights stay as they are (a packed copy sits beside each), so the model can
    still be read, saved and trained; `setup_optimizer` and `set_weights` call the undo
    first (a packed copy is a snapshot). LoRA adapters are read live, not packed.
    """
    ops = _onednn_linear_ops()
    if ops is None:
        return None

    def packed(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        w = ops._reorder_linear_weight(weight.detach().contiguous(), 1)
        b = bias.detach() if bias is not None else None

        def linear(x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            y = ops._linear_pointwise(x.reshape(-1, shape[-1]).contiguous(), w, b, "none", [], "")
            return y.view(*shape[:-1], y.shape[-1])

        return linear

    def with_adapters(module: torch.nn.Linear, base: Any) -> Any:
        """A LoRA layer: the packed frozen weight plus its small update, read live."""
        def linear(x: torch.Tensor) -> torch.Tensor:
            return base(x) + module.scale * F.linear(F.linear(x, module.lora_a), module.lora_b)

        return linear

    undo = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                base = packed(module.weight, module.bias)
                module.forward = with_adapters(module, base) if hasattr(module, "lora_a") else base  # this instance only
                undo.append(lambda m=module: m.__dict__.pop("forward", None))
        if tied:
            model.head = packed(model.wte.weight, None)
            undo.append(lambda: model.__dict__.pop("head", None))
    return undo


def column_major_for_decoding(model: GPT, tied: bool) -> None:
    """Store Linear weights (and a tied head) column-major, [in, out] in memory: one-row
    matmuls run about 1.4x faster on CPU against that layout (GPT-2's Conv1D layout) than
    against row-major `[out, in]` with MKL. Names, shapes and values are unchanged."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if tied:
        weights.append(model.wte.weight)  # the tied head is the biggest matrix of all
    with torch.inference_mode(False), torch.no_grad():  # normal tensors: training may follow
        for w in weights:
            if w.stride() != (1, w.shape[0]):
                w.data = w.data.t().contiguous().t()
