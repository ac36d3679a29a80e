"""The backends' layout by job, checked on the source (no framework imported except where a
test says so): `backends/torch/` and `backends/mlx/` mirror each other file for file, with
the names they share in the same order; their `__init__.py` stay empty; the contract module
holds the contract only; and a subpackage named `torch` never shadows the real torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

BACKENDS = REPO / "backends"
FRAMEWORKS = ("torch", "mlx")
JOBS = ("model.py", "lora.py", "optim.py", "parallel.py", "decode.py", "sampling.py", "backend.py")


def top_level_names(path: Path) -> list[str]:
    """Classes, functions and assigned constants defined at the top of a module, in order."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def test_torch_and_mlx_mirror_each_other_file_for_file():
    files = {fw: sorted(p.name for p in (BACKENDS / fw).glob("*.py")) for fw in FRAMEWORKS}
    assert files["torch"] == files["mlx"] == sorted(("__init__.py", *JOBS))


@pytest.mark.parametrize("job", JOBS)
def test_shared_names_come_in_the_same_order(job):
    torch_names, mlx_names = (top_level_names(BACKENDS / fw / job) for fw in FRAMEWORKS)
    shared = set(torch_names) & set(mlx_names)
    assert [n for n in torch_names if n in shared] == [n for n in mlx_names if n in shared]
    assert shared, f"{job}: the two files share no name"


def test_backend_classes_share_their_methods_in_the_same_order():
    def methods(framework: str, cls: str) -> list[str]:
        tree = ast.parse((BACKENDS / framework / "backend.py").read_text(encoding="utf-8"))
        (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
        return [m.name for m in node.body if isinstance(m, ast.FunctionDef)]

    torch_methods, mlx_methods = methods("torch", "TorchBackend"), methods("mlx", "MLXBackend")
    shared = set(torch_methods) & set(mlx_methods)
    assert [n for n in torch_methods if n in shared] == [n for n in mlx_methods if n in shared]
    assert {"get_weights", "train_step", "get_optimizer_state", "forward_last", "sample"} <= shared


@pytest.mark.parametrize("job", ["sampling.py", "optim.py", "decode.py"])
def test_each_job_offers_the_same_public_functions(job):
    """What the backend classes call is spelled alike on both sides."""
    public = [{n for n in top_level_names(BACKENDS / fw / job) if not n.startswith("_") and n[0].islower()}
              for fw in FRAMEWORKS]
    wanted = {"sampling.py": {"repetition_penalty", "center", "top_k_filter", "top_p_filter", "min_p_filter",
                              "filtered_logits", "make_generator", "sample_tokens"},
              "optim.py": {"adamw", "orthogonalize"},
              "decode.py": {"matmul_bytes", "use_decode_layout"}}[job]
    assert wanted <= public[0] and wanted <= public[1]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_subpackage_init_is_at_most_a_docstring(framework):
    body = ast.parse((BACKENDS / framework / "__init__.py").read_text(encoding="utf-8")).body
    assert len(body) <= 1
    assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


CONTRACT = ["StepResult", "Batch", "TrainingBackend", "GenerationBackend", "Backend"]


def test_the_contract_module_defines_the_contract_only():
    assert top_level_names(BACKENDS / "base.py") == CONTRACT


def test_nothing_takes_a_moved_name_from_the_contract_module():
    """Optimizer config, ranks, memory probing and the registry live beside base.py: every
    importer names their own module, so base.py needs no re-exports."""
    wrong = []
    for folder in ("workbench", "backends", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "gptbench.backends.base":
                    wrong += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if a.name not in CONTRACT]
    assert wrong == []


def test_the_torch_subpackage_imports_the_real_torch():
    """Run from the repository root (on sys.path): `gptbench.backends.torch` is its own
    module, and the `import torch` inside it is the installed framework."""
    code = (
        "import sys\n"
        "import gptbench.backends.torch.backend as backend\n"
        "import torch\n"
        "assert backend.torch is torch and torch.nn.Linear, torch\n"
        "assert not torch.__file__.startswith(sys.argv[1]), torch.__file__\n"
        "assert sys.modules['gptbench.backends.torch'] is not torch\n"
    )
    subprocess.run([sys.executable, "-c", code, str(BACKENDS)], check=True, timeout=120, cwd=REPO)
