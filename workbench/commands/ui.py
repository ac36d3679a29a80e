"""`gptbench ui` (and `gptbench` with no command): the workbench TUI.

`gptbench train` without `--no-ui` also lands here: the app starts that same training as a
`gptbench train --no-ui` subprocess (so the run survives the UI) and opens its dashboard.
Textual is imported only when the app really starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from gptbench.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="open the workbench TUI (also what `gptbench` alone does)",
        description="Browse runs, watch training live, start runs and chat with checkpoints.",
    )
    p.add_argument("--backend", default="auto", help="backend for chat: auto | torch | mlx (default auto)")
    p.add_argument("--device", default="auto", help="device for chat: auto | cpu | cuda | mps (torch) | gpu (mlx) (default auto)")
    p.set_defaults(func=run_ui)


def _data_flag(value: str) -> str:
    """A corpus path made absolute, so the trainer finds it whatever its working directory."""
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def train_flags_from_args(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The `gptbench train --no-ui` flags equivalent to a parsed `gptbench train` command,
    and the run name it will train (chosen here when not given, so the app can watch it)."""
    from gptbench.commands.train import MODEL_FLAGS, MODEL_SWITCHES, TRAIN_FLAGS

    flags: list[str] = []
    if getattr(args, "resume", None):
        name = args.resume
        flags += ["--resume", name]
    else:
        preset = getattr(args, "preset", None)
        if not preset and getattr(args, "config", None):
            from gptbench.config import load_toml

            preset = load_toml(args.config).get("preset")
        default_preset = "finetune" if getattr(args, "init_from", None) else "tiny"
        name = getattr(args, "name", None) or f"{preset or default_preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        flags += ["--name", name]
        if getattr(args, "preset", None):
            flags += ["--preset", args.preset]
        if getattr(args, "config", None):
            flags += ["--config", str(Path(args.config).expanduser().resolve())]
    if getattr(args, "data", None):
        flags += ["--data", _data_flag(args.data)]
    if getattr(args, "init_from", None):
        flags += ["--init-from", _data_flag(args.init_from)]
    for key in ("rank", "alpha", "targets", "dropout"):
        if getattr(args, f"lora_{key}", None) is not None:
            flags += [f"--lora-{key}", str(getattr(args, f"lora_{key}"))]
    for opt in ("tokenizer", "backend", "device", "dtype"):
        if getattr(args, opt, None):
            flags += [f"--{opt}", str(getattr(args, opt))]
    if getattr(args, "compile", None):
        flags.append("--compile")
    if getattr(args, "nproc", None):
        flags += ["--nproc", str(args.nproc)]
    if getattr(args, "strategy", None):
        flags += ["--strategy", args.strategy]
    if getattr(args, "activation_checkpointing", None):
        flags.append("--activation-checkpointing")
    if getattr(args, "hostfile", None):
        flags += ["--hostfile", str(Path(args.hostfile).expanduser().resolve())]
    bias = getattr(args, "bias", None)
    if bias is not None:
        flags.append("--bias" if bias else "--no-bias")
    if getattr(args, "tie_embeddings", None) is False:
        flags.append("--untied")
    for flag, key, _ in MODEL_SWITCHES:
        value = getattr(args, key, None)
        if value is not None:
            flags.append(flag if value else f"--no-{flag[2:]}")
    for flag, key, _, _ in MODEL_FLAGS + TRAIN_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            flags += [flag, str(value)]
    return name, flags


def training_startup(args: argparse.Namespace) -> Callable[[Any], None]:
    """What the app does once painted for `gptbench train` (with the UI): launch the same
    training headless in its own process and open its dashboard."""
    from gptbench.runstore import validate_run_name

    name, flags = train_flags_from_args(args)
    validate_run_name(name)
    resume = bool(getattr(args, "resume", None))

    def startup(app: Any) -> None:
        app.launcher.start(name, flags)
        app.notify(f"{'Resuming' if resume else 'Started'} training {name}", title="Training")
        app.open_dashboard(name)

    return startup


def run_ui(args: argparse.Namespace, start_training: bool = False) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError(
            "the workbench needs an interactive terminal; for scripts use a subcommand "
            "(gptbench train --no-ui, gptbench runs, gptbench sample; see gptbench --help)"
        )
    from gptbench.tui.app import create_app

    backend = getattr(args, "backend", None) or "auto"
    device = getattr(args, "device", None) or "auto"
    startup = training_startup(args) if start_training else None
    app = create_app(getattr(args, "runs_dir", None), backend, device=device, startup=startup)
    app.run()
    return int(app.return_code or 0)
