"""LoRA (Hu et al. 2021) for the GPT spec, framework-neutral: settings, adapter names, init, merge.

A targeted Linear `W [out, in]` keeps its weights frozen and gains two trainable matrices,
`lora_a [r, in]` and `lora_b [out, r]`; its output becomes

    y = W x + b + (alpha / r) · B (A dropout(x))

`A` starts uniform in ±1/sqrt(in) (kaiming-uniform with a=sqrt(5), what the paper's
reference code, peft, litgpt and mlx-lm use) and `B` at zero, so training starts from the
base model exactly. The adapters are drawn here, in numpy, from the run's seed, so both
backends start from the same numbers; the lora files (`LoRALinear`, `apply_lora`) only
compute. Adapter tensors are named after their Linear: `h.0.attn.c_attn.lora_a`. Merging
folds the update into the base: `W' = W + (alpha / r) · B @ A` (computed in float64).
Embeddings, norms and the LM head are never adapted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError

ADAPTER_SUFFIXES = (".lora_a", ".lora_b")
# --lora-targets: a group, or one Linear of every block by its name inside the block.
GROUPS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_gate", "mlp.c_proj")}
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_gate", "mlp.c_proj")
DEFAULT_TARGETS = ("attn", "mlp")
DEFAULT_ALPHA_PER_RANK = 2.0  # alpha = 2 r (litgpt's r=8, alpha=16): a scale of 2
LORA_WITH_MUON = ("LoRA trains its adapters with AdamW: Muon orthogonalises whole hidden matrices, which LoRA freezes; "
                  "drop --optimizer muon, or train without --lora-rank")
LORA_ONE_PROCESS = ("LoRA runs train in one process (the adapters would have to exist before the model is distributed); "
                    "drop --nproc, or fine-tune every weight")


def is_adapter(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA settings of a run: rank r, alpha (scale = alpha / r), targets, input dropout."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError(f"--lora-rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"--lora-alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"--lora-targets needs at least one of {', '.join([*GROUPS, *LINEARS])}")
        for t in self.targets:
            if t not in GROUPS and _linear(t) is None:
                raise ConfigError(f"unknown --lora-targets entry {t!r}; choose from {', '.join([*GROUPS, *LINEARS])}")

    @classmethod
    def build(cls, rank: int, alpha: float | None = None, targets: str | tuple[str, ...] | None = None, dropout: float | None = None) -> "LoRAConfig":
        """From flags: `targets` as "attn,mlp"; alpha defaults to 2·rank."""
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        alpha = DEFAULT_ALPHA_PER_RANK * rank if alpha is None and isinstance(rank, int) and not isinstance(rank, bool) else alpha
        return cls(rank=rank, alpha=alpha if alpha is not None else 0, targets=tuple(targets or DEFAULT_TARGETS),
                   dropout=0.0 if dropout is None else dropout)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoRAConfig":
        if not isinstance(data, Mapping) or set(data) - {"rank", "alpha", "targets", "dropout"}:
            raise ConfigError(f"a LoRA config has rank, alpha, targets and dropout; got {data!r}")
        targets = data.get("targets", list(DEFAULT_TARGETS))
        if not isinstance(targets, (list, tuple)):
            raise ConfigError(f"LoRA targets must be a list, got {targets!r}")
        return cls(rank=data.get("rank"), alpha=data.get("alpha"), targets=tuple(targets), dropout=data.get("dropout", 0.0))  # type: ignore[arg-type]

    # ---- where the adapters go -------------------------------------------------------
    def modules(self, config: GPTConfig) -> list[str]:
        """Canonical names of the adapted Linears (`h.0.attn.c_attn`, ...), in model order.
        ConfigError when a target names a Linear this model does not have."""
        have = [name for name in LINEARS if name != "mlp.c_gate" or config.mlp == "swiglu"]
        wanted: set[str] = set()
        for t in self.targets:
            if t in GROUPS:
                wanted.update(n for n in GROUPS[t] if n in have)
                continue
            linear = _linear(t)
            if linear not in have:
                raise ConfigError(f"--lora-targets {t}: this model has no {linear} (mlp={config.mlp}); its Linear layers are {', '.join(have)}")
            wanted.add(linear)
        return [f"h.{i}.{name}" for i in range(config.n_layer) for name in have if name in wanted]

    def adapter_shapes(self, config: GPTConfig) -> dict[str, tuple[int, ...]]:
        """Every adapter tensor by name: `<linear>.lora_a` [r, in], `<linear>.lora_b` [out, r]."""
        shapes = config.canonical_shapes()
        out: dict[str, tuple[int, ...]] = {}
        for module in self.modules(config):
            n_out, n_in = shapes[f"{module}.weight"]
            out[f"{module}.lora_a"] = (self.rank, n_in)
            out[f"{module}.lora_b"] = (n_out, self.rank)
        return out

    def num_params(self, config: GPTConfig) -> int:
        return sum(int(np.prod(s)) for s in self.adapter_shapes(config).values())


def _linear(target: str) -> str | None:
    """`c_attn` / `attn.c_attn` -> `attn.c_attn`; ambiguous or unknown -> None."""
    if target in LINEARS:
        return target
    matches = [n for n in LINEARS if n.split(".")[1] == target]
    return matches[0] if len(matches) == 1 else None


def init_adapters(config: GPTConfig, lora: LoRAConfig, seed: int) -> dict[str, np.ndarray]:
    """The paper's init, identical on every backend: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    rng = np.random.default_rng([seed, 0x10A])
    out: dict[str, np.ndarray] = {}
    for name, shape in lora.adapter_shapes(config).items():
        if name.endswith(".lora_a"):
            bound = 1.0 / math.sqrt(shape[1])
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, dtype=np.float32)
    return out


def merge(config: GPTConfig, lora: LoRAConfig, base: Mapping[str, np.ndarray], adapters: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Base weights with every adapter folded in: W + (alpha/r)·B@A, in float64, as float32."""
    out = {k: np.asarray(v, dtype=np.float32) for k, v in base.items()}
    for module in lora.modules(config):
        a = np.asarray(adapters[f"{module}.lora_a"], dtype=np.float64)
        b = np.asarray(adapters[f"{module}.lora_b"], dtype=np.float64)
        w = np.asarray(base[f"{module}.weight"], dtype=np.float64)
        out[f"{module}.weight"] = (w + lora.scale * (b @ a)).astype(np.float32)
    return out
