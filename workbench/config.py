"""Run configuration: presets and the resolution of defaults < preset < TOML < flags.

A run's resolved configuration is saved in its `config.json`, so a run can always be
resumed, compared or reproduced without the command line that started it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gptbench.backends.optim import MuonConfig, OptimConfig
from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError, UserError, reject_unknown_keys


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. Defaults are nanoGPT's where it has one."""

    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0 = max_iters at the time the run is created
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = off
    optimizer: str = "adamw"  # adamw | muon (Muon for the hidden matrices, AdamW for the rest)
    muon_lr: float = 0.02  # Keller Jordan's and nanochat's default
    muon_momentum: float = 0.95
    muon_momentum_warmup: int = 300  # steps from 0.85 up to muon_momentum (nanochat, modded-nanogpt)
    muon_weight_decay: float = 0.0
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    sample_tokens: int = 200  # sample logged at every eval; 0 = off
    keep_last: int = 3  # checkpoints kept besides the best
    seed: int = 1337
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "str":
                if not isinstance(value, str):
                    raise ConfigError(f"{f.name.replace('_', '-')} must be a string, got {value!r}")
            elif f.type == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f"{f.name.replace('_', '-')} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{f.name.replace('_', '-')} must be a number, got {value!r}")
            elif f.type == "int" and not isinstance(value, int):
                raise ConfigError(f"{f.name.replace('_', '-')} must be an integer, got {value!r}")
            elif not math.isfinite(value):
                raise ConfigError(f"{f.name.replace('_', '-')} must be a finite number, got {value!r}")
        positive = ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("lr", "muon_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)!r}")
        for name in ("min_lr", "weight_decay", "muon_weight_decay", "muon_momentum_warmup", "grad_clip", "warmup_iters", "lr_decay_iters", "sample_tokens", "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min-lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if not 0.0 <= self.beta1 < 1.0 or not 0.0 <= self.beta2 < 1.0:
            raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"muon-momentum must be in [0, 1), got {self.muon_momentum}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val-fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a train config must be a JSON/TOML table, got {type(data).__name__}")
        reject_unknown_keys("train config", data, TRAIN_KEYS)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def optim_config(self) -> OptimConfig:
        """The optimizer's hyperparameters, taken from here: the one source of their defaults."""
        muon = None
        if self.optimizer == "muon":
            muon = MuonConfig(lr_ratio=self.muon_lr / self.lr, momentum=self.muon_momentum,
                              momentum_warmup=self.muon_momentum_warmup, weight_decay=self.muon_weight_decay)
        return OptimConfig(weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2, grad_clip=self.grad_clip, muon=muon)

    def tokens_per_step(self, block_size: int) -> int:
        return self.batch_size * self.grad_accum * block_size


TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
OPTIMIZERS = ("adamw", "muon")

# Presets set model shape and training hyperparameters; vocab_size always comes from the
# tokenizer. `tiny` is nanoGPT's CPU shakespeare_char command, `small` its GPU config.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # `tiny` keeps nanoGPT's shape and schedule but adds biases, unties the head and drops
    # weight decay: at 0.8M parameters and 2000 steps the model underfits, and these
    # regularisers cost more than they give (tinyshakespeare, full val split, 2000 steps:
    # 1.917 -> 1.877; see benchmarks/quality.py).
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=True, tie_embeddings=False),
        "train": dict(batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
                      weight_decay=0.0, eval_interval=250, eval_iters=20),
    },
    "small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
        "train": dict(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99, eval_interval=250, eval_iters=200),
    },
    # `modern`: today's recipe (modded-nanogpt's speedrun, nanochat) on `tiny`'s task and scale:
    # the same shape, context and batch, so the comparison is the recipe alone. Measured on
    # char-level tinyshakespeare, val loss over the whole val split, seed 1337, one run each
    # (steps to val loss <= 1.88, evaluated every 25 steps near it; wall-clock is
    # benchmarks/time_to_target.py's job):
    #   - tiny needs ~2000 steps (the end of its schedule); modern 375, and ends at ~1.77 after
    #     600. A modern step costs ~1.75x a tiny one on a CPU (Newton-Schulz on 24 matrices
    #     every step), so modern reaches 1.88 in about a third of tiny's wall-clock.
    #   - Added one at a time to tiny: rope 2000 -> 1300 steps (a 64-entry position table is
    #     slow to learn), qk-norm -> 1225, relu2 -> 725, rmsnorm without biases -> 700;
    #     zero-init and soft-cap: 850, 825 (noise: those curves sit at 1.885-1.89 for 100
    #     steps); muon -> 600; modern's schedule and learning rates -> 375.
    #   - Left out of modern one at a time: qk-norm 400, soft-cap 400, zero-init 375 (kept: the
    #     recipe's, neutral here). swiglu instead of relu2 (+9% parameters): 375, no gain.
    #   - muon_lr=0.01: 0.02 (nanochat's default, for N(0, 1/sqrt(C)) weights; ours are
    #     N(0, 0.02), so the same spectral step is a larger relative change) was a little
    #     slower, 0.05 slower again. lr=3e-3 (AdamW: embeddings, head, norms): 6e-3 the same.
    #     betas (0.8, 0.95): modded-nanogpt's.
    #   - max_iters=600 (50-step warmup, momentum 0.85 -> 0.95 over 100): a 400-step schedule
    #     reaches 1.88 a little sooner (350) but ends barely below it; 300 steps never do.
    #     batch 24 reaches it in 225 steps, about the same wall-clock.
    "modern": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False, norm="rmsnorm", mlp="relu2",
                      tie_embeddings=False, pos="rope", qk_norm=True, logit_softcap=15.0, zero_init_proj=True),
        "train": dict(batch_size=12, max_iters=600, lr=3e-3, min_lr=3e-4, warmup_iters=50, beta1=0.8, beta2=0.95,
                      weight_decay=0.0, optimizer="muon", muon_lr=0.01, muon_momentum_warmup=100,
                      eval_interval=100, eval_iters=20),
    },
    # `modern-small`: the same recipe at `small`'s GPU shape (6 x 384, context 256, dropout 0.2
    # against overfitting a 1 MB corpus). Not measured here (no GPU): half of small's steps,
    # on the CPU finding that the recipe needs a fifth to a third of them; Muon's lr 0.02 is
    # the CPU preset's relative step size at this width (the spectral norm of N(0, 0.02)
    # weights grows with sqrt(width)); AdamW's lr stays small's.
    "modern-small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False, norm="rmsnorm", mlp="relu2",
                      tie_embeddings=False, pos="rope", qk_norm=True, logit_softcap=15.0, zero_init_proj=True),
        "train": dict(batch_size=64, max_iters=2500, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta1=0.8, beta2=0.95,
                      optimizer="muon", muon_lr=0.02, muon_momentum_warmup=300, eval_interval=250, eval_iters=200),
    },
    "gpt2": {
        "model": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=6e-4, min_lr=6e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    "gpt2-medium": {
        "model": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=3e-4, min_lr=3e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    "gpt2-large": {
        "model": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=2.5e-4, min_lr=2.5e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    "gpt2-xl": {
        "model": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=2e-4, min_lr=2e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    # nanoGPT's finetune_shakespeare: a small constant learning rate, a short run, frequent
    # evaluation. No model section: the shape comes from --init-from, dropout is --dropout
    # (default 0). For LoRA, raise --lr about tenfold (the adapters start from zero).
    "finetune": {
        "model": {},
        "train": dict(batch_size=1, grad_accum=32, max_iters=20, lr=3e-5, min_lr=0.0, decay_lr=False, warmup_iters=0,
                      beta2=0.95, eval_interval=5, eval_iters=40),
    },
}
DEFAULT_PRESET = "tiny"
FINETUNE_PRESET = "finetune"  # the default preset with --init-from
NEEDS_INIT_FROM = (FINETUNE_PRESET,)

RUN_KEYS = ("data", "tokenizer", "backend", "device", "dtype", "compile", "name", "init_from")
LORA_KEYS = ("rank", "alpha", "targets", "dropout")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run, resolved. `model` lacks vocab_size until the tokenizer
    is known; `model_config(vocab)` completes it."""

    preset: str
    model: dict[str, Any]
    train: TrainConfig
    data: str | None = None
    tokenizer: str | None = "char"
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    compile: bool | None = None  # None = the backend's default (see Backend.default_compile)
    name: str | None = None
    command: str | None = None  # the command line that created the run, for the record
    # Fine-tuning: the source of the initial weights (then `model` holds only the keys given
    # explicitly, checked against the source, and `tokenizer` is None unless given), and
    # LoRA settings (LoRAConfig.to_dict()) when only adapters train.
    init_from: str | None = None
    lora: dict[str, Any] | None = None

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The model for a tokenizer of `vocab_size` ids; a fine-tuning run's `model` is the
        source's whole config and keeps its own vocab_size (it may exceed the tokenizer's)."""
        return GPTConfig.from_dict({"vocab_size": vocab_size, **self.model})


MODEL_KEYS = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot parse {p}: {exc}") from None
    reject_unknown_keys("config-file", data, {"preset", "model", "train", "lora", *RUN_KEYS})
    reject_unknown_keys("[model]", data.get("model", {}), MODEL_KEYS)
    reject_unknown_keys("[train]", data.get("train", {}), TRAIN_KEYS)
    reject_unknown_keys("[lora]", data.get("lora", {}), LORA_KEYS)
    return data


def resolve_run_config(
    preset: str | None = None,
    toml: Mapping[str, Any] | None = None,
    model_flags: Mapping[str, Any] | None = None,
    train_flags: Mapping[str, Any] | None = None,
    run_flags: Mapping[str, Any] | None = None,
    lora_flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """defaults < preset < TOML file < command-line flags (None values mean 'not given').

    With `init_from` the model comes from the source: `model` keeps only the keys given in
    the TOML file or as flags (to be checked against it), the tokenizer only when given,
    and the preset defaults to `finetune`."""
    toml = dict(toml or {})
    init_from = (run_flags or {}).get("init_from") or toml.get("init_from")
    preset = preset or toml.get("preset") or (FINETUNE_PRESET if init_from else DEFAULT_PRESET)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset in NEEDS_INIT_FROM and not init_from:
        raise ConfigError(f"preset {preset} fine-tunes pretrained weights; add --init-from SRC (e.g. gpt2, a Hugging Face folder or RUN)")
    model: dict[str, Any] = {k: v for k, v in GPTConfig().to_dict().items() if k != "vocab_size"}
    model.update(PRESETS[preset]["model"])
    train: dict[str, Any] = TrainConfig().to_dict()
    train.update(PRESETS[preset]["train"])
    model.update(toml.get("model", {}))
    train.update(toml.get("train", {}))
    reject_unknown_keys("model", model_flags or {}, MODEL_KEYS)
    reject_unknown_keys("train", train_flags or {}, TRAIN_KEYS)
    model.update({k: v for k, v in (model_flags or {}).items() if v is not None})
    train.update({k: v for k, v in (train_flags or {}).items() if v is not None})
    run = {k: toml[k] for k in RUN_KEYS if k in toml}
    run.update({k: v for k, v in (run_flags or {}).items() if v is not None})
    train_cfg = TrainConfig.from_dict(train)
    if train_cfg.lr_decay_iters == 0:
        train_cfg = dataclasses.replace(train_cfg, lr_decay_iters=train_cfg.max_iters)
    GPTConfig.from_dict({**model, "vocab_size": 1})  # validate the shape early
    lora = _resolve_lora(toml.get("lora", {}), lora_flags or {}, bool(init_from))
    if lora is not None and train_cfg.optimizer == "muon":
        from gptbench.backends.lora import LORA_WITH_MUON

        raise ConfigError(LORA_WITH_MUON)
    if init_from:
        model = {**toml.get("model", {}), **{k: v for k, v in (model_flags or {}).items() if v is not None}}
        run.setdefault("tokenizer", None)
    return RunConfig(preset=preset, model=model, train=train_cfg, lora=lora, **run)


def _resolve_lora(toml: Mapping[str, Any], flags: Mapping[str, Any], init_from: bool) -> dict[str, Any] | None:
    """The LoRA section (TOML < flags), validated; None without a rank."""
    from gptbench.backends.lora import LoRAConfig

    given = {**toml, **{k: v for k, v in flags.items() if v is not None}}
    reject_unknown_keys("lora", given, LORA_KEYS)
    if not given:
        return None
    if "rank" not in given:
        raise ConfigError(f"--lora-{sorted(given)[0]} needs --lora-rank R (LoRA is on when a rank is given)")
    if not init_from:
        raise ConfigError("--lora-rank trains adapters on pretrained weights; add --init-from SRC (e.g. gpt2, a Hugging Face folder or RUN)")
    return LoRAConfig.build(given["rank"], given.get("alpha"), given.get("targets"), given.get("dropout")).to_dict()
