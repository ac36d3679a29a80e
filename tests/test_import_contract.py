"""The import contract, checked by walking every module's imports (the `ast` of each file,
imports inside functions included), the way import-linter's layer contracts would:

- `backends` and `tokenizers` are the bottom layer: besides each other they import only
  `gptbench.errors`, `gptbench.paths` and `gptbench.fsutil`; never the CLI, the TUI, the
  trainer, the run store or the run configuration.
- Only `gptbench.tui` imports Textual.
- `gptbench --help` (and every command's --help) imports no torch, mlx, textual or datasets.
- No import cycles among `gptbench` modules, function-level and TYPE_CHECKING imports
  included: a module that needs another's types takes a protocol or moves the shared piece
  down a layer (e.g. `gptbench.sources` under `loading`/`finetune`, `tui.host` under screens).
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


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from pkg import name` counts as `pkg`
    unless `pkg.name` is a module itself)."""
    graph = {}
    for module, path in ALL.items():
        deps = set()
        for name in imports_of(path, module):
            while name and name not in ALL:
                name = name.rpartition(".")[0]
            if name and name != module:
                deps.add(name)
        graph[module] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other, directly or around a loop (the
    strongly connected components with more than one module, Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


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


def test_no_import_cycles_among_gptbench_modules():
    cycles = import_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_cycle_would_be_caught():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e", "a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"x": {"y"}, "y": set()}) == []


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
