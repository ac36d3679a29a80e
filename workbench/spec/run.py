"""The run specification: one frozen, typed, versioned description of a run.

A `RunSpec` is the only way a run's settings travel: the command line and TOML files are
mapped onto it (`gptbench.spec.cli`, `gptbench.spec.toml`), the TUI's train form builds
one, the launcher re-executes ranks with it (`spec_to_argv`), and `config.json` is its
serialised form, read and written only by the run-directory owner
(`gptbench.runstore.specfile`). Its sections validate themselves on construction and the
spec checks the contradictions between them, once, so an invalid spec never exists.

Settings are addressed by *paths*: `model.n_layer`, `train.lr`, `runtime.backend`,
`parallel.nproc`, `lora.rank`, or a top-level field such as `data`. An override is a
mapping from paths to values; `with_overrides` applies one and validates the result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from gptbench.backends.optim import MUON_FSDP
from gptbench.backends.parallel import FSDP_TORCH_ONLY, STRATEGIES
from gptbench.backends.lora import LORA_ONE_PROCESS, LORA_WITH_MUON, LoRAConfig
from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError, reject_unknown_keys
from gptbench.spec.train import TrainConfig

SPEC_VERSION = 1
BACKENDS = ("auto", "torch", "mlx")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LORA_NEEDS_SOURCE = "--lora-rank trains adapters on pretrained weights; add --init-from SRC (e.g. gpt2, a Hugging Face folder or RUN)"


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _check_optional_int(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"--{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"--{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class RuntimeSpec:
    """Where and how the run computes. `compile` None = the backend's default; `threads`
    None = torch's CPU threads adapted to the cores other processes leave free."""

    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    compile: bool | None = None
    threads: int | None = None
    log_to: str = ""  # trackers that mirror the metrics, comma-separated (gptbench.trackers); "" = none

    def __post_init__(self) -> None:
        from gptbench.trackers import parse_log_to

        if not isinstance(self.log_to, str):
            raise ConfigError(f"log-to must be a comma-separated list of trackers, got {self.log_to!r}")
        object.__setattr__(self, "log_to", ",".join(parse_log_to(self.log_to)))
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"--device must be a device name (auto, cpu, cuda, mps, gpu), got {self.device!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        _check_optional_int("threads", self.threads, 1)


@dataclass(frozen=True)
class ParallelSpec:
    """How many processes train the run (torchrun, or mlx.launch for MLX) and how."""

    nproc: int = 1
    strategy: str = "ddp"
    activation_checkpointing: bool = False
    hostfile: str | None = None

    def __post_init__(self) -> None:
        _check_optional_int("nproc", self.nproc, 1)
        _check_choice("strategy", self.strategy, STRATEGIES)
        if not isinstance(self.activation_checkpointing, bool):
            raise ConfigError(f"activation_checkpointing must be true or false, got {self.activation_checkpointing!r}")


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run. `model.vocab_size` is the tokenizer's, filled in when
    the run is created; with `init_from` the model is the source's, and `model_given` names
    the model fields the user set, which are checked against it."""

    preset: str = "tiny"
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str | None = None
    tokenizer: str | None = "char"
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    init_from: str | None = None
    model_given: tuple[str, ...] = ()
    lora: LoRAConfig | None = None
    name: str | None = None
    command: str | None = None  # the command line that created the run, for the record

    def __post_init__(self) -> None:
        for name in ("data", "tokenizer", "init_from", "name", "command"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name.replace('_', '-')} must be a string, got {value!r}")
        if self.lora is not None:
            if not self.init_from:
                raise ConfigError(LORA_NEEDS_SOURCE)
            if self.train.optimizer == "muon":
                raise ConfigError(LORA_WITH_MUON)
            if self.parallel.nproc > 1:
                raise ConfigError(LORA_ONE_PROCESS)
        if self.parallel.strategy == "fsdp":
            if self.runtime.backend == "mlx":
                raise ConfigError(FSDP_TORCH_ONLY)
            if self.train.optimizer == "muon":
                raise ConfigError(MUON_FSDP)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The model for a tokenizer of `vocab_size` ids."""
        return replace(self.model, vocab_size=vocab_size)

    def given_model(self) -> dict[str, Any]:
        """The model fields the user set explicitly (checked against an --init-from source)."""
        return {k: getattr(self.model, k) for k in self.model_given}

    # ---- serialised form ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with `spec_version`; `from_dict` reads it back exactly."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(model=self.model.to_dict(), train=self.train.to_dict(), runtime=dataclasses.asdict(self.runtime),
                   parallel=dataclasses.asdict(self.parallel), model_given=list(self.model_given),
                   lora=self.lora.to_dict() if self.lora else None)
        return {"spec_version": SPEC_VERSION, **out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSpec":
        data = dict(data)
        version = data.pop("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ConfigError(f"run specification version {version} is not readable by this gptbench (reads {SPEC_VERSION}); upgrade gptbench")
        reject_unknown_keys("run specification", data, {f.name for f in dataclasses.fields(cls)})
        sections = dict(
            model=GPTConfig.from_dict(data.get("model", {})),
            train=TrainConfig.from_dict(data.get("train", {})),
            runtime=_section(RuntimeSpec, "runtime", data.get("runtime", {})),
            parallel=_section(ParallelSpec, "parallel", data.get("parallel", {})),
            model_given=tuple(data.get("model_given", ())),
            lora=LoRAConfig.from_dict(data["lora"]) if data.get("lora") else None,
        )
        return cls(**{**data, **sections})


def _section(kind: type, name: str, data: Mapping[str, Any]) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"the {name} section must be a table, got {type(data).__name__}")
    reject_unknown_keys(name, data, {f.name for f in dataclasses.fields(kind)})
    return kind(**data)


def default_run_name(preset: str, when: float | None = None) -> str:
    """The name a run gets when none is given: its preset and the local time it started."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"
