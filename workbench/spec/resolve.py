"""Building a run specification: defaults < preset < TOML file < flags, and overrides.

Overrides are mappings from setting paths (`train.lr`, `model.n_layer`, `lora.rank`,
`data`, ...; see `gptbench.spec.settings`) to values; None means "not given". The same
functions serve a new run (`resolve_spec`), a resume (`with_overrides` on the saved spec)
and the way back to flags (`spec_overrides`, what `spec_to_argv` prints).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any, Mapping

from gptbench.backends.lora import LoRAConfig
from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError
from gptbench.spec.presets import DEFAULT_PRESET, FINETUNE_PRESET, NEEDS_INIT_FROM, PRESETS, SFT_PRESET
from gptbench.spec.run import ParallelSpec, RunSpec, RuntimeSpec
from gptbench.spec.settings import BY_PATH
from gptbench.spec.train import TrainConfig

Overrides = Mapping[str, Any]
_SECTIONS = {"model": GPTConfig, "train": TrainConfig, "runtime": RuntimeSpec, "parallel": ParallelSpec}
_TOP = ("data", "tokenizer", "init_from", "name", "command", "preset")
_LORA_KEYS = ("rank", "alpha", "targets", "dropout")


def _split(overrides: Overrides) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Given values by section (`model`, `train`, ...) and the top-level ones; unknown paths refused."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in (*_SECTIONS, "lora")}
    top: dict[str, Any] = {}
    for path, value in overrides.items():
        if value is None:
            continue
        section, _, key = path.rpartition(".")
        if section in sections:
            valid = _LORA_KEYS if section == "lora" else [f.name for f in dataclasses.fields(_SECTIONS[section])]
            if key not in valid:
                raise ConfigError(f"unknown {section} key(s): {key}; valid keys are {', '.join(sorted(valid))}")
            sections[section][key] = value
        elif not section and path in _TOP:
            top[path] = value
        else:
            raise ConfigError(f"unknown setting {path!r}")
    return sections, top


def with_overrides(spec: RunSpec, overrides: Overrides) -> RunSpec:
    """`spec` with the given values replaced, validated as a whole."""
    sections, top = _split(overrides)
    model = GPTConfig.from_dict({**spec.model.to_dict(), **sections["model"]}) if sections["model"] else spec.model
    train = TrainConfig.from_dict({**spec.train.to_dict(), **sections["train"]}) if sections["train"] else spec.train
    runtime = replace(spec.runtime, **sections["runtime"])
    parallel = replace(spec.parallel, **sections["parallel"])
    lora = _lora(spec.lora, sections["lora"])
    return replace(spec, model=model, train=train, runtime=runtime, parallel=parallel, lora=lora, **top)


def _lora(current: LoRAConfig | None, given: dict[str, Any]) -> LoRAConfig | None:
    """The LoRA section with `given` applied; LoRA is on when a rank is given."""
    if not given:
        return current
    merged = {**(current.to_dict() if current else {}), **given}
    if "rank" not in merged:
        raise ConfigError(f"--lora-{sorted(given)[0]} needs --lora-rank R (LoRA is on when a rank is given)")
    return LoRAConfig.build(merged["rank"], merged.get("alpha") if "alpha" in given or current else None,
                            merged.get("targets"), merged.get("dropout"))


def resolve_spec(preset: str | None = None, toml: Overrides | None = None, flags: Overrides | None = None) -> RunSpec:
    """A new run's specification: defaults < preset < TOML file < flags (None = not given).

    With `init_from` the model comes from the source: `model_given` records the model keys
    set in the file or as flags (to be checked against it), the tokenizer is the source's
    unless given, and the preset defaults to `finetune` (`sft` with `train.sft`)."""
    given = {k: v for k, v in (toml or {}).items() if v is not None}
    given.update({k: v for k, v in (flags or {}).items() if v is not None})
    default = SFT_PRESET if given.get("train.sft") else FINETUNE_PRESET if given.get("init_from") else DEFAULT_PRESET
    preset = preset or given.pop("preset", None) or default
    given.pop("preset", None)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset in NEEDS_INIT_FROM and not given.get("init_from"):
        raise ConfigError(f"preset {preset} fine-tunes pretrained weights; add --init-from SRC (e.g. gpt2, a Hugging Face folder or RUN)")
    spec = PRESETS[preset]
    if given.get("init_from"):
        given_model = tuple(f.name for f in dataclasses.fields(GPTConfig) if f"model.{f.name}" in given)  # in field order
        spec = replace(spec, tokenizer=None, model_given=given_model)
    spec = with_overrides(spec, given)
    if spec.train.lr_decay_iters == 0:
        spec = replace(spec, train=replace(spec.train, lr_decay_iters=spec.train.max_iters))
    return spec


def spec_overrides(spec: RunSpec) -> dict[str, Any]:
    """The settings that take `spec`'s preset to `spec`: what `resolve_spec` needs to build
    it again (the inverse of `resolve_spec` for a spec it made)."""
    base = resolve_spec(spec.preset, flags={"init_from": spec.init_from, "tokenizer": spec.tokenizer})
    if spec.lora is not None:  # LoRA's defaults (alpha 2R, ...) need not be spelled out
        base = replace(base, lora=LoRAConfig.build(spec.lora.rank))
    out: dict[str, Any] = {k: getattr(spec, k) for k in ("init_from", "tokenizer") if getattr(spec, k) is not None}
    for path, setting in BY_PATH.items():
        if setting.section == "model" and spec.init_from and setting.key not in spec.model_given:
            continue
        value, default = value_at(spec, path), value_at(base, path)
        if path == "train.lr_decay_iters" and value == spec.train.max_iters and base.train.lr_decay_iters == base.train.max_iters:
            continue
        if value != default or path == "lora.rank" or (setting.section == "model" and setting.key in spec.model_given):
            out[path] = value
    return out


def value_at(spec: RunSpec, path: str) -> Any:
    """The value of setting `path` in `spec` (LoRA targets as "attn,mlp"; None without LoRA)."""
    section, _, key = path.rpartition(".")
    if section == "lora":
        if spec.lora is None:
            return None
        value = getattr(spec.lora, key)
        return ",".join(value) if key == "targets" else value
    return getattr(getattr(spec, section) if section else spec, key)


def changes(before: RunSpec, after: RunSpec) -> list[tuple[str, Any, Any]]:
    """(path, old, new) for every setting that differs between two specs."""
    return [(p, value_at(before, p), value_at(after, p)) for p in BY_PATH if value_at(before, p) != value_at(after, p)]


RUNTIME_KEYS = ("backend", "device", "dtype", "compile", "threads", "log_to")


def spec_settings(model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                  lora: Mapping[str, Any] | None = None, parallel: Mapping[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """Overrides from sections, for code that builds specs (`top` takes `data`, `tokenizer`,
    `init_from`, `name` and the runtime keys `backend`, `device`, `dtype`, `compile`, `threads`)."""
    out: dict[str, Any] = {}
    for section, values in (("model", model), ("train", train), ("lora", lora), ("parallel", parallel)):
        out.update({f"{section}.{k}": v for k, v in (values or {}).items()})
    out.update({f"runtime.{k}" if k in RUNTIME_KEYS else k: v for k, v in top.items()})
    return out
