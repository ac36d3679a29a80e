"""The train form's fields: which run-spec setting each sets, and how each validates.

Each number, LoRA and chat field is a setting of `gptbench.spec.settings` (tests check
they cannot drift); the validators are cheap file-system checks that run as you type,
the trainer reporting anything deeper itself.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.validation import Integer, Number, ValidationResult, Validator

from gptbench.errors import UserError
from gptbench.runstore import validate_run_name
from gptbench.spec import PRESETS
from gptbench.spec.resolve import value_at
from gptbench.spec.settings import BY_PATH

NAMED_CORPORA = ("default", "tinyshakespeare")
TOKENIZER_RE = re.compile(r"^(char|byte|gpt2(:.+)?|bpe:.+)$")


class RunNameValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        if not value:
            return self.success()  # blank = automatic name
        try:
            validate_run_name(value)
        except UserError:
            return self.failure("letters, digits, '.', '_' or '-'; starts with a letter or digit")
        return self.success()


class CorpusValidator(Validator):
    """A named corpus, `hf:...`, a glob, or an existing file or folder."""

    def validate(self, value: str) -> ValidationResult:
        v = value.strip()
        if not v or v in NAMED_CORPORA or v.startswith("hf:"):
            return self.success()
        if any(c in v for c in "*?["):
            return self.success() if glob.glob(str(Path(v).expanduser())) else self.failure(f"no file matches {v}")
        return self.success() if Path(v).expanduser().exists() else self.failure(f"no such file or folder: {v}")


class InitFromValidator(Validator):
    """Blank (from scratch), an existing file or folder, a run in the runs directory
    (RUN[:CHECKPOINT]), or a hub name that is cached or can be downloaded. Only cheap checks
    of the file system: the trainer reads the source itself and reports anything else."""

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)

    def validate(self, value: str) -> ValidationResult:
        from gptbench.hfcache import find_cached, is_hub_name, offline_reason

        v = value.strip()
        if not v or Path(v).expanduser().exists() or (self.runs_dir / v.partition(":")[0] / "config.json").is_file():
            return self.success()
        name = v[3:] if v.startswith("hf:") else v
        if is_hub_name(name):
            if find_cached(name.partition("@")[0], name.partition("@")[2] or None) is None and offline_reason():
                return self.failure(f"{name} is not in the Hugging Face cache and downloads are off ({offline_reason()})")
            return self.success()
        return self.failure("not a folder, a weights file, a run or a Hugging Face name (gpt2, …)")


class TokenizerValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        v = value.strip()
        return self.success() if not v or TOKENIZER_RE.match(v) else self.failure("char | byte | gpt2[:RANKS] | bpe:PATH | bpe:VOCAB_SIZE")


@dataclass(frozen=True)
class NumberField:
    path: str  # a setting of the run spec (gptbench.spec.settings), e.g. train.lr
    label: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def section(self) -> str:
        return self.path.partition(".")[0]

    @property
    def kind(self) -> type:
        return BY_PATH[self.path].kind


NUMBER_FIELDS = [
    NumberField("train.max_iters", "Max iters", 1),
    NumberField("train.batch_size", "Batch size", 1),
    NumberField("train.lr", "Learning rate", 0.0),
    NumberField("train.eval_interval", "Eval every", 1),
    NumberField("train.sample_tokens", "Sample length", 0),
    NumberField("model.block_size", "Context", 1),
    NumberField("model.n_layer", "Layers", 1),
    NumberField("model.n_head", "Heads", 1),
    NumberField("model.n_embd", "Width", 1),
    NumberField("model.dropout", "Dropout", 0.0, 1.0),
    NumberField("train.seed", "Seed", 0),
]


SOURCE_SHAPE = ("n_layer", "n_head", "n_embd")  # fixed by an init-from source (context may shrink, dropout is free)


@dataclass(frozen=True)
class LoraField:
    key: str  # lora_rank: the setting lora.rank (--lora-rank)
    label: str
    placeholder: str
    validators: tuple[Validator, ...] = ()

    @property
    def path(self) -> str:
        return "lora." + self.key.removeprefix("lora_")


LORA_FIELDS = [
    LoraField("lora_rank", "LoRA rank", "off", (Integer(minimum=1, failure_description="LoRA rank must be an integer ≥ 1"),)),
    LoraField("lora_alpha", "LoRA alpha", "2 × rank", (Number(minimum=0.0, failure_description="LoRA alpha must be a positive number"),)),
    LoraField("lora_targets", "LoRA targets", "attn,mlp"),
    LoraField("lora_dropout", "LoRA dropout", "0", (Number(minimum=0.0, maximum=0.999, failure_description="LoRA dropout must be in [0, 1)"),)),
]


# "Chat SFT": the select's value -> the settings it gives (train.sft, train.train_on_prompt)
SFT_CHOICES = (("off", "off"), ("on: loss on the answers", "on"), ("on: train on the prompt too", "prompt"))
SFT_SETTINGS = {"off": {}, "on": {"train.sft": True}, "prompt": {"train.sft": True, "train.train_on_prompt": True}}


def validators(f: NumberField) -> list[Validator]:
    if f.kind is int:
        return [Integer(minimum=f.minimum, maximum=f.maximum, failure_description=f"{f.label.lower()} must be an integer ≥ {f.minimum:g}")]
    return [Number(minimum=f.minimum, maximum=f.maximum, failure_description=f"{f.label.lower()} must be a number ≥ {f.minimum:g}")]


def preset_value(preset: str, f: NumberField) -> Any:
    return value_at(PRESETS[preset], f.path)
