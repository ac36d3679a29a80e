"""The optimisation, schedule and bookkeeping section of a run specification.

Defaults are nanoGPT's where it has one. Every value is checked on construction (types,
ranges, NaN and infinities), so an invalid section never exists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from gptbench.backends.optim import MuonConfig, OptimConfig
from gptbench.errors import ConfigError, UserError, reject_unknown_keys


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. Defaults are nanoGPT's where it has one."""

    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    max_time: float = 0.0  # training-time budget in seconds (0 = none): see training.schedule
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
    sft: bool = False  # supervised fine-tuning on conversations (gptbench.chat.sft)
    train_on_prompt: bool = False  # with sft: train on every token, not only the assistant's
    eval_task: str = ""  # tasks scored at every evaluation (gptbench.evaluation), comma-separated; "" = none

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
        for name in ("max_time", "min_lr", "weight_decay", "muon_weight_decay", "muon_momentum_warmup", "grad_clip", "warmup_iters", "lr_decay_iters", "sample_tokens", "keep_last"):
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
        if self.train_on_prompt and not self.sft:
            raise ConfigError("train-on-prompt applies to chat data only; add --sft (or drop --train-on-prompt)")
        if self.eval_task:
            from gptbench.evaluation.tasks import split_tasks

            try:
                split_tasks(self.eval_task)
            except UserError as exc:
                raise ConfigError(f"eval-task: {exc}") from None

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
