"""`gptbench ui` (and `gptbench` with no command): the workbench TUI.

`gptbench train` without `--no-ui` also lands here: the app starts that same training as a
`gptbench train --no-ui` subprocess (so the run survives the UI) and opens its dashboard.
Textual is imported only when the app really starts.
"""

from __future__ import annotations

import argparse
import sys
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


def training_startup(request: Any) -> Callable[[Any], None]:
    """What the app does once painted for `gptbench train` (with the UI): launch the same
    training request headless in its own process and open its dashboard."""
    from gptbench.spec.cli import ResumeRequest

    resume = isinstance(request, ResumeRequest)
    name = request.name

    def startup(app: Any) -> None:
        app.launcher.start(request)
        app.notify(f"{'Resuming' if resume else 'Started'} training {name}", title="Training")
        app.open_dashboard(name)

    return startup


def run_ui(args: argparse.Namespace, training: Any = None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError(
            "the workbench needs an interactive terminal; for scripts use a subcommand "
            "(gptbench train --no-ui, gptbench runs, gptbench sample; see gptbench --help)"
        )
    from gptbench.tui.app import create_app

    backend = getattr(args, "backend", None) or "auto"
    device = getattr(args, "device", None) or "auto"
    startup = training_startup(training) if training is not None else None
    app = create_app(getattr(args, "runs_dir", None), backend, device=device, startup=startup)
    app.run()
    return int(app.return_code or 0)
