"""`gptbench` command line: argparse with one module per subcommand.

Each command module exposes `register(subparsers)` that adds its parser and sets
`func(args) -> int`. Heavy imports (torch, mlx, textual, datasets) happen inside the
command functions, so `gptbench --help` stays fast and works with any one framework.

Every `UserError` is printed as one line and exits with status 2; so is an operating-system
error (a full disk, a read-only folder) or running out of memory: never a traceback for
what the user or the machine can fix.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from gptbench import __version__
from gptbench.errors import UserError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "gptbench.commands.train",
    "gptbench.commands.runs",
    "gptbench.commands.sweep",
    "gptbench.commands.export_logs",
    "gptbench.commands.sample",
    "gptbench.commands.chat",
    "gptbench.commands.convert",
    "gptbench.commands.eval",
    "gptbench.commands.serve",
    "gptbench.commands.tokenizer",
    "gptbench.commands.ui",
]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gptbench: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gptbench",
        description="Train, watch and talk to small GPT models. With no command, opens the TUI.",
    )
    parser.add_argument("--version", action="version", version=f"gptbench {__version__}")
    parser.add_argument(
        "--runs-dir",
        default=None,
        help="directory holding runs (default: $GPTBENCH_RUNS_DIR or ./runs)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():  # `gptbench train --runs-dir X` works too
        command.add_argument("--runs-dir", default=argparse.SUPPRESS, help="directory holding runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            from gptbench.commands.ui import run_ui

            return int(run_ui(args) or 0)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"gptbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gptbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("gptbench: error: out of memory; use a smaller model, batch or --max-new-tokens", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's, not the code's: a full disk, a read-only folder
        print(f"gptbench: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed, where, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    hint = {
        errno.ENOSPC: "free some disk space and try again",
        errno.EDQUOT: "your disk quota is full; free some space",
        errno.EFBIG: "a file grew past this system's size limit (ulimit -f)",
        errno.EROFS: "the folder is on a read-only file system; choose another",
        errno.EACCES: "check the permissions, or choose another folder",
        errno.EPERM: "check the permissions, or choose another folder",
    }.get(exc.errno or 0, "")
    reason = exc.strerror or type(exc).__name__
    return f"{reason}{where}" + (f"; {hint}" if hint else "")


if __name__ == "__main__":
    raise SystemExit(main())
