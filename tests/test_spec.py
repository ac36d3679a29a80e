"""The run specification: one typed description, and nothing that can drift from it.

Flags, TOML keys, TUI fields and the README's flag table are checked against the settings
table, and the settings table against the spec's dataclasses; every way a spec travels
(flags, config.json, the rank re-exec) gives back the same spec.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from gptbench.cli import build_parser
from gptbench.errors import ConfigError, UserError
from gptbench.runstore.specfile import RunFacts, config_document, spec_from_config
from gptbench.spec import PRESETS, RunSpec, resolve_spec
from gptbench.spec.cli import ResumeRequest, request_argv, request_from_args
from gptbench.spec.resolve import value_at
from gptbench.spec.settings import BY_PATH, NOT_SETTINGS, SETTINGS
from gptbench.spec.toml import load_toml
from helpers import REPO

# options of `gptbench train` that are not settings of a run: how to run it, not what it is
TRAIN_OPTIONS = {"--no-ui", "--resume", "--preset", "--config", "--accept-changed-data", "--untied", "--runs-dir", "--help", "-h"}


def spec_paths() -> set[str]:
    """Every field of a RunSpec, as a setting path (sections expanded)."""
    from gptbench.backends.lora import LoRAConfig

    sections = {"model": RunSpec().model, "train": RunSpec().train, "runtime": RunSpec().runtime, "parallel": RunSpec().parallel}
    paths = {f.name for f in dataclasses.fields(RunSpec) if f.name not in (*sections, "lora")}
    for name, value in sections.items():
        paths |= {f"{name}.{f.name}" for f in dataclasses.fields(value)}
    return paths | {f"lora.{f.name}" for f in dataclasses.fields(LoRAConfig)}


def test_every_spec_field_is_a_setting_and_every_setting_a_field():
    assert spec_paths() == set(BY_PATH) | set(NOT_SETTINGS)
    assert not set(BY_PATH) & set(NOT_SETTINGS)


def test_setting_kinds_match_the_fields():
    spec = resolve_spec("tiny", None, {"init_from": "gpt2", "lora.rank": 4})
    for s in SETTINGS:
        value = value_at(spec, s.path)
        if value is not None and s.path != "lora.targets":
            assert isinstance(value, s.kind) and not (s.kind is int and isinstance(value, bool)), s.path


def test_train_flags_are_the_settings():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {opt for action in train._actions for opt in action.option_strings}
    expected = {s.flag for s in SETTINGS} | {f"--no-{s.flag[2:]}" for s in SETTINGS if s.switch} | TRAIN_OPTIONS
    assert flags == expected


def test_every_setting_round_trips_through_the_command_line(tmp_path):
    """One non-default value per setting: flags -> spec -> flags -> the same spec."""
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text("[]")
    changed = {"name": "r", "init_from": "gpt2", "data": "tinyshakespeare", "tokenizer": "byte", "runtime.backend": "torch",
               "runtime.device": "cpu", "runtime.dtype": "float32", "runtime.compile": True, "runtime.threads": 3, "runtime.log_to": "tensorboard",
               "parallel.strategy": "ddp", "parallel.activation_checkpointing": True, "parallel.hostfile": str(hostfile),
               "lora.rank": 2, "lora.alpha": 3.5, "lora.targets": "attn", "lora.dropout": 0.25,
               "model.norm": "rmsnorm", "model.mlp": "swiglu", "model.pos": "rope", "model.bias": False, "model.tie_embeddings": False,
               "model.qk_norm": True, "model.zero_init_proj": True, "model.n_head": 16, "model.n_embd": 1024,
               "train.optimizer": "adamw", "train.decay_lr": False, "train.sft": True, "train.train_on_prompt": True,
               "train.eval_task": "mc:items.jsonl,hellaswag"}
    for s in SETTINGS:
        if s.path not in changed and s.path != "parallel.nproc":
            base = value_at(PRESETS["finetune"], s.path)
            changed[s.path] = base + (1 if s.kind is int else 0.015625)
    spec = resolve_spec(None, None, changed)
    argv = request_argv(spec)
    again = request_from_args(build_parser().parse_args(["train", "--no-ui", *argv]))
    assert again == spec
    for path, value in changed.items():
        want = tuple(value.split(",")) if path == "lora.targets" else value
        got = getattr(again.lora, "targets") if path == "lora.targets" else value_at(again, path)
        assert got == want, path


def test_a_resume_request_round_trips():
    args = build_parser().parse_args(["train", "--resume", "r", "--max-iters", "300", "--lr", "0.0005", "--backend", "mlx",
                                      "--accept-changed-data"])
    request = request_from_args(args)
    assert request == ResumeRequest("r", {"train.max_iters": 300, "train.lr": 0.0005, "runtime.backend": "mlx"}, True)
    assert request_from_args(build_parser().parse_args(["train", *request_argv(request)])) == request


def test_toml_keys_are_the_settings(tmp_path):
    """A config file may set every setting the flags can, under the documented keys."""
    spec = resolve_spec("modern", None, {"name": "t", "data": "tinyshakespeare", "runtime.threads": 2, "parallel.nproc": 2})
    lines, tables = [f'preset = "modern"'], {}
    for s in SETTINGS:
        value = value_at(spec, s.path)
        if value is None:
            continue
        table, _, key = s.toml_key.rpartition(".")
        text = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else repr(value)
        (tables.setdefault(table, []) if table else lines).append(f"{key} = {text.replace(chr(39), chr(34))}")
    body = "\n".join(lines) + "".join(f"\n[{t}]\n" + "\n".join(rows) for t, rows in tables.items())
    path = tmp_path / "run.toml"
    path.write_text(body + "\n")
    assert resolve_spec(None, load_toml(path)) == spec


def test_toml_nan_and_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlr = nan\n")
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        resolve_spec(None, load_toml(path))
    path.write_text("[parallel]\nnprocs = 2\n")
    with pytest.raises(ConfigError, match=r"unknown \[parallel\] key\(s\): nprocs"):
        load_toml(path)


def test_tui_form_fields_are_settings():
    from gptbench.tui.screens.train import LORA_FIELDS, NUMBER_FIELDS
    from gptbench.tui.screens.train_fields import SFT_CHOICES, SFT_SETTINGS

    for f in NUMBER_FIELDS:
        assert f.path in BY_PATH
        assert f.kind in (int, float)
    assert {lf.path for lf in LORA_FIELDS} == {s.path for s in SETTINGS if s.section == "lora"}
    assert {v for _, v in SFT_CHOICES} == set(SFT_SETTINGS)
    assert {p for settings in SFT_SETTINGS.values() for p in settings} == {"train.sft", "train.train_on_prompt"} <= set(BY_PATH)


def test_readme_flag_table_is_the_settings():
    """Every setting's flag is in README's `gptbench train` table, and the table names no
    flag the parser lacks."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### `gptbench train`"):]
    table = "\n".join(line for line in section[: section.index("\n\n", section.index("| flag |"))].splitlines() if line.startswith("|"))
    named = set(re.findall(r"--[a-z][a-z0-9-]*", table))
    settings = {s.flag for s in SETTINGS}
    assert settings - named == set()
    parser_flags = settings | {f"--no-{s.flag[2:]}" for s in SETTINGS if s.switch} | TRAIN_OPTIONS
    assert named - parser_flags == set()


def test_spec_serialises_exactly_and_refuses_other_versions():
    spec = resolve_spec(None, None, {"init_from": "gpt2", "lora.rank": 4, "model.block_size": 64, "name": "x"})
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="run specification version 99"):
        RunSpec.from_dict({**spec.to_dict(), "spec_version": 99})


def test_config_json_is_the_spec():
    spec = resolve_spec("modern", None, {"name": "m", "data": "tinyshakespeare", "runtime.dtype": "float32"})
    spec = dataclasses.replace(spec, model=spec.model_config(65), runtime=dataclasses.replace(spec.runtime, backend="torch"))
    facts = RunFacts(created=1.0, backend="torch", device="cpu", compile=None, tokenizer_kind="char", vocab_size=65, fingerprint="f",
                     parallel={"world_size": 1, "strategy": "single"})
    assert spec_from_config(config_document(spec, facts)) == spec


@pytest.mark.parametrize("overrides, message", [
    ({"parallel.strategy": "fsdp", "runtime.backend": "mlx"}, "--strategy fsdp is torch only"),
    ({"parallel.strategy": "fsdp", "train.optimizer": "muon"}, "--optimizer muon orthogonalises whole matrices"),
    ({"lora.rank": 4}, "add --init-from SRC"),
    ({"lora.alpha": 4.0, "init_from": "gpt2"}, "--lora-alpha needs --lora-rank R"),
    ({"lora.rank": 4, "init_from": "gpt2", "train.optimizer": "muon"}, "LoRA trains its adapters with AdamW"),
    ({"lora.rank": 4, "init_from": "gpt2", "parallel.nproc": 2}, "LoRA"),
    ({"runtime.threads": 0}, "--threads must be >= 1"),
    ({"parallel.nproc": 0}, "--nproc must be >= 1"),
    ({"runtime.dtype": "fp8"}, "unknown dtype 'fp8'"),
    ({"train.lr": math.inf}, "lr must be a finite number"),
])
def test_contradictions_are_refused_once(overrides, message):
    with pytest.raises(ConfigError) as exc:
        resolve_spec(None, None, overrides)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_resume_says_in_one_line_what_changed(tmp_path, corpus_file):
    from gptbench.cli import main

    runs = tmp_path / "runs"
    base = ["--runs-dir", str(runs), "train", "--no-ui", "--threads", "1"]
    shape = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--eval-iters", "1", "--sample-tokens", "0"]
    assert main([*base, "--name", "r", "--data", str(corpus_file), "--max-iters", "4", "--eval-interval", "2", *shape]) == 0
    assert main([*base, "--resume", "r", "--max-iters", "6", "--lr", "0.0005"]) == 0
    log = (runs / "r" / "log.txt").read_text()
    changed = [line for line in log.splitlines() if "resumed with" in line]
    assert len(changed) == 1
    assert "max_iters 4 -> 6" in changed[0]
    assert "lr 0.001 -> 0.0005" in changed[0]
    with pytest.raises(UserError, match="cannot resume 'r' with a different n_layer=2 \\(run has 1\\)"):
        from gptbench.runstore import RunStore
        from gptbench.training import Trainer

        Trainer.resume_run(RunStore(runs), "r", {"model.n_layer": 2, "train.max_iters": 8})
