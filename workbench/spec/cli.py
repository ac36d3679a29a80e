"""The command line of a run: flags <-> specification, one pair of functions.

`add_spec_arguments` declares one flag per setting (`gptbench.spec.settings`);
`overrides_from_args` reads them back as overrides, and `overrides_to_argv` writes
overrides as flags again. A new run is a `RunSpec` (`spec_from_args`, `spec_to_argv`), a
resume a `ResumeRequest`; every re-execution (the TUI's trainer subprocess, torchrun and
mlx.launch ranks) passes one of them whole through these functions.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from gptbench.errors import UserError
from gptbench.spec.resolve import resolve_spec, spec_overrides
from gptbench.spec.run import RunSpec, default_run_name
from gptbench.spec.settings import SETTINGS, Setting

# flags whose value is a path: made absolute at once, so a process started elsewhere finds it
PATH_SETTINGS = ("data", "init_from", "parallel.hostfile")
LAUNCHER_ONLY = ("parallel.nproc", "parallel.hostfile")  # what the launcher consumes; ranks never see it


def finite_float(text: str) -> float:
    """argparse type: a float that is a number (NaN and infinities are refused here, so
    they can never reach a schedule, a clip or a config file)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_spec_arguments(p: argparse.ArgumentParser, data_help: str = "") -> None:
    """One flag per setting, all defaulting to None (= not given)."""
    for s in SETTINGS:
        help_ = data_help if s.path == "data" and data_help else s.help
        if s.switch:
            p.add_argument(s.flag, dest=s.dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            kind = s.parse or (finite_float if s.kind is float else s.kind)
            p.add_argument(s.flag, dest=s.dest, type=kind, default=None, metavar=s.metavar, help=help_)
    p.add_argument("--untied", dest="tie_embeddings", action="store_false", default=None, help="a separate LM head (= --no-tie-embeddings)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, by path (paths of files made absolute)."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(args, s.dest, None)
        if value is not None:
            out[s.path] = _absolute(value) if s.path in PATH_SETTINGS else value
    return out


def _absolute(value: str) -> str:
    """A path that exists (or a glob) made absolute; anything else (a hub name, RUN:best,
    `tinyshakespeare`, `hf:...`) as given."""
    if value.startswith("hf:"):
        return value
    p = Path(value).expanduser()
    if p.exists():
        return str(p.resolve())
    if any(c in value for c in "*?[") and p.parent.exists():
        return str(p.parent.resolve() / p.name)
    return value


def overrides_to_argv(overrides: Mapping[str, Any]) -> list[str]:
    """Flags that give exactly these settings (the inverse of `overrides_from_args`)."""
    argv: list[str] = []
    for s in SETTINGS:
        if s.path in overrides and overrides[s.path] is not None:
            argv += _flag(s, overrides[s.path])
    return argv


def _flag(s: Setting, value: Any) -> list[str]:
    if s.switch:
        return [s.flag if value else f"--no-{s.flag[2:]}"]
    if isinstance(value, (tuple, list)):
        value = ",".join(value)
    return [s.flag, repr(value) if isinstance(value, float) else str(value)]


def spec_to_argv(spec: RunSpec, *, for_rank: bool = False) -> list[str]:
    """`gptbench train` flags that build exactly `spec` again; `for_rank` leaves out what
    only the launcher uses (a rank is one of the processes, it launches none)."""
    overrides = spec_overrides(spec)
    if for_rank:
        overrides = {k: v for k, v in overrides.items() if k not in LAUNCHER_ONLY}
    return [*overrides_to_argv(overrides), "--preset", spec.preset]


@dataclass(frozen=True)
class ResumeRequest:
    """Continue run `name` from its last checkpoint with these settings changed."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    accept_changed_data: bool = False

    def to_argv(self, *, for_rank: bool = False) -> list[str]:
        overrides = {k: v for k, v in self.overrides.items() if not (for_rank and k in LAUNCHER_ONLY)}
        return ["--resume", self.name, *overrides_to_argv(overrides), *(["--accept-changed-data"] if self.accept_changed_data else [])]


TrainRequest = RunSpec | ResumeRequest


def request_argv(request: TrainRequest, *, for_rank: bool = False) -> list[str]:
    """`gptbench train` flags that ask for `request` again, whole."""
    if isinstance(request, ResumeRequest):
        return request.to_argv(for_rank=for_rank)
    return spec_to_argv(request, for_rank=for_rank)


def request_from_args(args: argparse.Namespace, now: float | None = None) -> TrainRequest:
    """What `gptbench train ARGS` asks for: a new run's spec (named: every process that
    trains or watches it must agree on the name) or a resume."""
    from gptbench.runstore.format import validate_run_name

    overrides = overrides_from_args(args)
    if getattr(args, "resume", None) is not None:
        validate_run_name(args.resume)
        if getattr(args, "preset", None) or getattr(args, "config", None):
            raise UserError("--preset and --config cannot be combined with --resume; the run keeps its config")
        if "name" in overrides:
            raise UserError("give --name NAME for a new run or --resume NAME to continue one, not both")
        if "init_from" in overrides or any(p.startswith("lora.") for p in overrides):
            raise UserError("--init-from and --lora-* cannot be combined with --resume; the run keeps its source and LoRA settings")
        from gptbench.spec.resolve import with_overrides

        with_overrides(RunSpec(), {k: v for k, v in overrides.items() if k.startswith(("runtime.", "parallel."))})  # validated now
        return ResumeRequest(args.resume, overrides, bool(getattr(args, "accept_changed_data", False)))
    if getattr(args, "accept_changed_data", False):
        raise UserError("--accept-changed-data only applies with --resume")
    if "name" in overrides:
        validate_run_name(overrides["name"])
    from gptbench.spec.toml import load_toml

    toml = load_toml(args.config) if getattr(args, "config", None) else None
    spec = resolve_spec(getattr(args, "preset", None), toml, overrides)
    return spec if spec.name else replace(spec, name=default_run_name(spec.preset, now if now is not None else time.time()))
