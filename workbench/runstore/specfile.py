"""config.json <-> RunSpec: the one place a run's configuration is written and read.

`config.json` (run format 2) is a run's `RunSpec` in its serialised form plus the facts
training found out (`RunFacts`: the corpus' hash, the tokenizer's fingerprint, the device
it really ran on, the lineage of a fine-tune). Its layout is unchanged since format 2, so
runs written before the specification existed read as specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptbench.backends.lora import LoRAConfig
from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError
from gptbench.runstore.format import RUN_FORMAT_VERSION, CorruptRunError, software_versions
from gptbench.spec.run import ParallelSpec, RunSpec, RuntimeSpec
from gptbench.spec.train import TrainConfig


@dataclass(frozen=True)
class RunFacts:
    """What creating (or resuming) a run found out, recorded beside its spec."""

    created: float
    backend: str  # resolved: torch | mlx
    device: str  # the device it really runs on (e.g. "cpu", "cuda:0")
    compile: bool | None
    tokenizer_kind: str
    vocab_size: int
    fingerprint: str
    data: dict[str, Any] = field(default_factory=dict)  # the corpus record (sha256, tokens, cache, val_bytes, ...)
    parallel: dict[str, Any] | None = None  # the latest session's processes: world_size, strategy, comm, ...
    init_from: dict[str, Any] | None = None  # a fine-tune's source reference (spec, kind, label, path, sha256)
    trainable_params: int | None = None  # LoRA: the adapters' parameter count
    extra: dict[str, Any] = field(default_factory=dict)  # other records (e.g. converted_from)


def config_document(spec: RunSpec, facts: RunFacts) -> dict[str, Any]:
    """The JSON object config.json holds for `spec` (whose name must be set)."""
    if not spec.name:
        raise ValueError("a run's spec must be named before its config is written")
    doc: dict[str, Any] = {
        "format_version": RUN_FORMAT_VERSION,
        "name": spec.name,
        "created": facts.created,
        "preset": spec.preset,
        "model": spec.model.to_dict(),
        "train": spec.train.to_dict(),
        "data": {**facts.data, "spec": spec.data},
        "tokenizer": {"spec": spec.tokenizer, "kind": facts.tokenizer_kind, "vocab_size": facts.vocab_size,
                      "fingerprint": facts.fingerprint},
        "backend": facts.backend,
        "device": facts.device,
        "device_request": spec.runtime.device,
        "dtype": spec.runtime.dtype,
        "compile": facts.compile,
        "params": spec.model.num_params(),
        "param_breakdown": spec.model.param_breakdown(),
        "versions": software_versions(),
        "command": spec.command,
    }
    if facts.parallel is not None:
        doc["parallel"] = facts.parallel
    if spec.runtime.log_to:
        doc["log_to"] = spec.runtime.log_to
    if facts.init_from:
        doc["init_from"] = facts.init_from
    if spec.lora is not None:
        doc["lora"] = spec.lora.to_dict()
        doc["trainable_params"] = facts.trainable_params
    return {**doc, **facts.extra}


def spec_from_config(cfg: dict[str, Any], where: str = "config.json") -> RunSpec:
    """The RunSpec a validated config.json describes; CorruptRunError if it holds none."""
    try:
        par = cfg.get("parallel") or {}
        world = par.get("world_size", 1)
        return RunSpec(
            preset=cfg.get("preset", "tiny"),
            model=GPTConfig.from_dict(cfg["model"]),
            train=TrainConfig.from_dict(cfg["train"]),
            data=cfg["data"].get("spec"),
            tokenizer=cfg["tokenizer"].get("spec"),
            runtime=RuntimeSpec(backend=cfg["backend"], device=cfg.get("device_request") or "auto",
                                dtype=cfg.get("dtype") or "auto", compile=cfg.get("compile"), log_to=cfg.get("log_to") or ""),
            parallel=ParallelSpec(nproc=world if isinstance(world, int) and world > 0 else 1,
                                  strategy=par.get("strategy") if par.get("strategy") in ("ddp", "fsdp") else "ddp",
                                  activation_checkpointing=par.get("activation_checkpointing") is True),
            init_from=(cfg.get("init_from") or {}).get("spec"),
            lora=LoRAConfig.from_dict(cfg["lora"]) if cfg.get("lora") else None,
            name=cfg["name"],
            command=cfg.get("command"),
        )
    except (ConfigError, KeyError, AttributeError, TypeError) as exc:
        raise CorruptRunError(f"{where}: {exc}") from None


_SPEC_KEYS = {"format_version", "name", "preset", "model", "train", "device_request", "dtype", "command", "lora", "params",
              "param_breakdown", "versions"}


def facts_from_config(cfg: dict[str, Any], where: str = "config.json") -> RunFacts:
    """The facts a validated config.json records beside the spec."""
    try:
        tok, data = cfg["tokenizer"], {k: v for k, v in cfg["data"].items() if k != "spec"}
        extra = {k: v for k, v in cfg.items() if k not in _SPEC_KEYS and k not in _FACT_KEYS}
        return RunFacts(created=float(cfg["created"]), backend=cfg["backend"], device=cfg["device"], compile=cfg.get("compile"),
                        tokenizer_kind=tok.get("kind", ""), vocab_size=tok.get("vocab_size", 0), fingerprint=tok.get("fingerprint", ""),
                        data=data, parallel=cfg.get("parallel"), init_from=cfg.get("init_from"),
                        trainable_params=cfg.get("trainable_params"), extra=extra)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise CorruptRunError(f"{where}: {exc}") from None


_FACT_KEYS = {"created", "backend", "device", "compile", "tokenizer", "data", "parallel", "init_from", "trainable_params"}


def read_spec(run: Any) -> RunSpec:
    """A run's specification (`run` is a `gptbench.runstore.Run`)."""
    return spec_from_config(run.config(), str(run.config_path))


def read_config(run: Any) -> tuple[RunSpec, RunFacts]:
    """A run's specification and the facts recorded beside it."""
    cfg, where = run.config(), str(run.config_path)
    return spec_from_config(cfg, where), facts_from_config(cfg, where)
