"""The MLX decode weight layout: column-major weights for CPU generation's one-row
matmuls, applied to a model that is not training and undone before it trains. Mirrors
`backends/torch/decode.py`.

Values never change, so get/set_weights and every op still work on a model in the decode
layout; only the memory order differs.
"""

from __future__ import annotations

# the model first: it may preload a faster CBLAS, which must happen before mlx.core loads.
from gptbench.backends.mlx.model import GPT  # isort: skip

import mlx.core as mx
import mlx.nn as nn

# Below this, column-major weights buy nothing measurable: one-row decode tokens/s,
# column-major vs row-major, here: 1.0x at the tiny preset, 0.9-1.0x at `small` with 65
# tokens (42 MB), 1.08x at `small` with GPT-2's vocabulary (119 MB), 1.6x at gpt2 (124M).
DECODE_LAYOUT_MIN_BYTES = 64 << 20


def matmul_bytes(model: GPT, tied: bool) -> int:
    """Bytes of the Linear weights and a tied head: what one decoded token streams."""
    weights = [m.weight for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    weights += [model.wte.weight] if tied else []
    return sum(w.nbytes for w in weights)


def use_decode_layout(model: GPT, tied: bool) -> bool:
    """Put an inference model on the CPU in the column-major layout when it is big enough
    to gain (`DECODE_LAYOUT_MIN_BYTES`); returns whether it did (then `set_layout(...,
    column_major=False)` undoes it)."""
    if matmul_bytes(model, tied) < DECODE_LAYOUT_MIN_BYTES:
        return False
    set_layout(model, tied, column_major=True)
    return True


def set_layout(model: GPT, tied: bool, column_major: bool) -> None:
    """Store every Linear weight (and a tied head's embedding) column-major, [in, out] in
    memory, or back to row-major. Names, shapes and values never change.

    Why: decoding multiplies one row by every weight matrix, bound by memory bandwidth.
    With mlx[cpu] on the AMD EPYC dev VM, `x @ W.T` runs about 1.8x faster on the Linears
    and 1.4x on the 50,257-row head against that layout (mlx-lm's gpt2 gets it for free by
    transposing the Conv1D weights it loads): benchmarks/generate.py, the MLX rows.
    """
    def layout(w: mx.array) -> mx.array:
        return mx.contiguous(w.T).T if column_major else mx.contiguous(w)

    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    for m in linears:
        m.weight = layout(m.weight)
    if tied:
        model.wte.weight = layout(model.wte.weight)
    mx.eval([m.weight for m in linears] + ([model.wte.weight] if tied else []))
