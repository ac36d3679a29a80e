"""The GPT spec shared by every backend.

One frozen dataclass describes the architecture completely; both backends build exactly
this model and read and write exactly the tensors named by `canonical_shapes`, so a
weights file is interchangeable between them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gptbench.errors import ConfigError, reject_unknown_keys

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")
POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2 architecture plus the variants users ask for.

    - norm: `layernorm` (GPT-2) or `rmsnorm` (no mean subtraction, weight only).
    - mlp: `gelu` (GPT-2, tanh approximation), `relu2` (squared ReLU) or `swiglu`
      (silu(x Wg) * (x Wu) Wd, hidden size 2/3 of 4*n_embd rounded up to a multiple of 64
      so the parameter count stays close to the GELU MLP).
    - bias: biases in every Linear and LayerNorm (GPT-2 has them; nanoGPT's small
      configs drop them).
    - tie_embeddings: the LM head shares the token-embedding matrix.
    - pos: `learned` (GPT-2's position table `wpe`) or `rope` (rotary embeddings on queries
      and keys, base `rope_theta`; no position table): attention then depends on how far
      apart two tokens are, not where they sit.
    - qk_norm: RMS-normalise each head's queries and keys (no weight, eps `norm_eps`)
      before attention, which bounds the attention logits (OLMo 2, nanochat).
    - logit_softcap: `cap * tanh(logits / cap)` on float32 logits; 0 = off (Gemma 2,
      nanochat use 15): bounds the logits so early training cannot blow them up.
    - zero_init_proj: initialise the residual output projections (`attn.c_proj`,
      `mlp.c_proj`) to exactly zero, so every block starts as the identity
      (modded-nanogpt, nanochat). An init option only: the architecture is unchanged.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    mlp: str = "gelu"
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    pos: str = "learned"
    rope_theta: float = 10000.0
    qk_norm: bool = False
    logit_softcap: float = 0.0
    zero_init_proj: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick e.g. n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        for name in ("dropout", "norm_eps", "rope_theta", "logit_softcap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        for name in ("bias", "tie_embeddings", "qk_norm", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.mlp not in MLPS:
            raise ConfigError(f"unknown mlp {self.mlp!r}; choose one of {', '.join(MLPS)}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.pos not in POSITIONS:
            raise ConfigError(f"unknown pos {self.pos!r}; choose one of {', '.join(POSITIONS)}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"rope rotates pairs of channels, so the head size n_embd/n_head ({self.head_dim}) must be even; "
                "change --n-embd or --n-head"
            )
        if self.rope_theta <= 1:
            raise ConfigError(f"rope_theta must be greater than 1, got {self.rope_theta}")
        if self.logit_softcap < 0:
            raise ConfigError(f"logit_softcap must be >= 0 (0 = off), got {self.logit_softcap}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "swiglu":
            hidden = (8 * self.n_embd) // 3
            return ((hidden + 63) // 64) * 64
        return 4 * self.n_embd

    @property
    def norm_has_bias(self) -> bool:
        return self.bias and self.norm == "layernorm"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON/TOML table, got {type(data).__name__}")
        reject_unknown_keys("model config", data, (f.name for f in dataclasses.fields(cls)))
        return cls(**data)

    def replace(self, **changes: Any) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    # ---- the canonical tensor layout -------------------------------------------------
    def canonical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the model by canonical name, in `[out, in]` Linear layout.

        Both torch and MLX `Linear` store `[out, in]`, so neither backend transposes.
        """
        C, V, T, H = self.n_embd, self.vocab_size, self.block_size, self.mlp_hidden
        shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, C)}
        if self.pos == "learned":
            shapes["wpe.weight"] = (T, C)

        def norm(prefix: str) -> None:
            shapes[f"{prefix}.weight"] = (C,)
            if self.norm_has_bias:
                shapes[f"{prefix}.bias"] = (C,)

        def linear(prefix: str, n_out: int, n_in: int) -> None:
            shapes[f"{prefix}.weight"] = (n_out, n_in)
            if self.bias:
                shapes[f"{prefix}.bias"] = (n_out,)

        for i in range(self.n_layer):
            p = f"h.{i}"
            norm(f"{p}.ln_1")
            linear(f"{p}.attn.c_attn", 3 * C, C)
            linear(f"{p}.attn.c_proj", C, C)
            norm(f"{p}.ln_2")
            linear(f"{p}.mlp.c_fc", H, C)
            if self.mlp == "swiglu":
                linear(f"{p}.mlp.c_gate", H, C)
            linear(f"{p}.mlp.c_proj", C, H)
        norm("ln_f")
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (V, C)
        return shapes

    def param_breakdown(self) -> dict[str, int]:
        """Parameter counts: token embeddings, position embeddings, blocks, final norm, head."""
        shapes = self.canonical_shapes()

        def count(pred) -> int:
            total = 0
            for name, shape in shapes.items():
                if pred(name):
                    n = 1
                    for d in shape:
                        n *= d
                    total += n
            return total

        return {
            "token_embeddings": count(lambda n: n == "wte.weight"),
            "position_embeddings": count(lambda n: n == "wpe.weight"),
            "blocks": count(lambda n: n.startswith("h.")),
            "final_norm": count(lambda n: n.startswith("ln_f.")),
            "lm_head": count(lambda n: n == "lm_head.weight"),
        }

    def num_params(self, non_embedding: bool = False) -> int:
        """Total parameters (tied head counted once); `non_embedding` drops positions,
        as nanoGPT does for its MFU estimate."""
        b = self.param_breakdown()
        total = sum(b.values())
        return total - b["position_embeddings"] if non_embedding else total

    def training_bytes(self, batch_size: int, *, shards: int = 1, checkpointed: bool = False) -> int:
        """A lower estimate of the memory one training step needs, in bytes, used to refuse
        what cannot fit before building it: float32 weights, gradients and two AdamW
        moments (16 bytes a parameter), the activations autograd keeps for one micro-batch
        of `batch_size` x `block_size` tokens (Korthikanti et al. 2022: 34·B·T·C 16-bit
        values a layer; fused attention stores no scores), and the logits with their
        softmax and gradient in float32.

        Per rank of a sharded run (FSDP over `shards` ranks) the 16 bytes a parameter are
        divided among them; with activation `checkpointed` blocks only each block's input
        (B·T·C float32) is kept, plus one block's activations while it is recomputed."""
        B, T, C, L, V = batch_size, self.block_size, self.n_embd, self.n_layer, self.vocab_size
        activations = (4 * L * B * T * C + 34 * 2 * B * T * C) if checkpointed else 34 * 2 * L * B * T * C
        return int(16 * self.num_params() / max(1, shards) + activations + 3 * 4 * B * T * V)

    def inference_bytes(self, batch_size: int = 1) -> int:
        """A lower estimate of the memory generation needs: float32 weights, a full KV
        cache for `batch_size` rows and one row of logits each."""
        cache = 2 * self.n_layer * batch_size * self.block_size * self.n_embd * 4
        return int(4 * self.num_params() + cache + 4 * batch_size * self.vocab_size)

    def flops_per_token(self) -> float:
        """Training FLOPs per token, nanoGPT/PaLM formula: 6N + 12·L·H·(C/H)·T."""
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * self.n_layer * self.n_head * self.head_dim * self.block_size


def rope_tables(config: GPTConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every rotary angle, float32 `[block_size, head_dim / 2]`.

    Position p turns channel pair (i, i + D/2) of a head (the half-split convention of
    GPT-NeoX, HF Llama and `mx.fast.rope(traditional=False)`) by the angle
    p * rope_theta^(-2i/D). Both backends use these very tables, computed in float64 and
    rounded once, so their rotations agree bit for bit and stay accurate at long
    positions (float32 angles drift by ~1e-4 at position 1000).
    """
    D = config.head_dim
    inv_freq = config.rope_theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    angles = np.outer(np.arange(config.block_size, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def format_params(n: int) -> str:
    """Human-readable parameter count: 0.80M, 124.44M, 1.56B."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)
