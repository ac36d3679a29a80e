"""The import contract, checked by walking every module's imports (the `ast` of each file,
imports inside functions included), the way import-linter's layer contracts would:

- `backends` and `tokenizers` are the bottom layer: besides each other they import only
  `gptbench.errors`, `gptbench.paths` and `gptbench.fsutil`; never the CLI, the TUI, the
  trainer, the run store or the run configuration.
- Only `gptbench.tui` imports Textual.
- `gptbench --help` (and every command's --help) imports no torch, mlx, textual or datasets.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

# The package's folders and the module prefix each one maps to (pyproject's package-dir).
SOURCES = {"workbench": "gptbench", "backends": "gptbench.backends", "tokenizers": "gptbench.tokenizers"}
BOTTOM_LAYER_MAY_IMPORT = ("gptbench.backends", "gptbench.tokenizers", "gptbench.errors", "gptbench.paths", "gptbench.fsutil")
FRAMEWORKS = ("torch", "mlx", "textual", "datasets")


def modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in SOURCES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


def imports_of(path: Path, module: str) -> set[str]:
    """Every module name `path` imports, relative imports resolved."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


ALL = modules()


def test_the_walk_sees_the_whole_package():
    assert "gptbench.backends.torch.model" in ALL
    assert "gptbench.tui.screens.chat" in ALL
    assert "gptbench.runstore.writer" in ALL
    assert any(under(n, ("gptbench.tui",)) for n in imports_of(ALL["gptbench.commands.ui"], "gptbench.commands.ui"))


@pytest.mark.parametrize("module", [m for m in ALL if under(m, ("gptbench.backends", "gptbench.tokenizers"))])
def test_backends_and_tokenizers_import_only_the_bottom_layer(module):
    # (`from gptbench import paths` also names the top package, whose __init__ is a version string)
    internal = {n for n in imports_of(ALL[module], module) if under(n, ("gptbench",)) and n != "gptbench"}
    wrong = sorted(n for n in internal if not under(n, BOTTOM_LAYER_MAY_IMPORT))
    assert wrong == [], f"{module} imports {wrong}"


@pytest.mark.parametrize("module", [m for m in ALL if not under(m, ("gptbench.tui",))])
def test_only_the_tui_imports_textual(module):
    assert not any(under(n, ("textual",)) for n in imports_of(ALL[module], module)), f"{module} imports textual"


def test_a_violation_would_be_caught(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gptbench.train import Trainer\n    from ..commands import ui\n")
    names = imports_of(bad, "gptbench.backends.bad")
    assert "gptbench.train" in names
    assert "gptbench.commands.ui" in names


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["runs"], ["sample", "--help"], ["chat", "--help"],
                                  ["convert", "--help"], ["tokenizer", "--help"]])
def test_help_and_listing_import_no_framework(argv, tmp_path):
    code = (
        "import sys\nfrom gptbench.cli import main\n"
        f"try:\n    main({argv!r} + ['--runs-dir', {str(tmp_path)!r}] if {argv!r} == ['runs'] else {argv!r})\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
