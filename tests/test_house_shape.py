"""The house shape, kept: no module over 400 lines and no function over 60 lines in the
package (`workbench/`, `backends/`, `tokenizers/`), so each module keeps one job and each
function reads at a glance. A module that outgrows this is split by job, not by size."""

from __future__ import annotations

import ast

from helpers import REPO

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
PACKAGE = ("workbench", "backends", "tokenizers")


def package_files():
    files = [p for folder in PACKAGE for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 50  # the walk sees the whole package
    return files


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in package_files() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_60_lines():
    long = {}
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}
