"""Pytest fixtures: isolation from the user's files, temporary run stores, one trained run.

Tests never touch the network, the user's runs directory or anything outside the clone
(helpers.py holds the shared functions and the paths of the committed fixture files). A
user's clone has nothing beside it, so reading the developers' `../shared` folder fails the
test that did it (an audit hook sees every `open`, in CI as everywhere).
Property tests run under a derandomized hypothesis profile without an example database
when `$CI` is set, so CI is deterministic; locally they explore new examples each run.
Every cache a library keeps on disk (Hugging Face, hypothesis' examples, torch's Inductor
and Triton kernels, anything under XDG_CACHE_HOME) points into one temporary folder for
the session, set at import so subprocesses and session fixtures inherit it: a test never
reads what an earlier run or the user left there, and leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from helpers import FIXTURE_TEXT, GPT2_RANKS, REPO, train_fixture_run

BESIDE_THE_CLONE = str(REPO.parent / "shared")
_outside_reads: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path == BESIDE_THE_CLONE or path.startswith(BESIDE_THE_CLONE + os.sep):
            _outside_reads.append(path)


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _reads_only_the_clone():
    """Fail a test that opened a file in the `shared/` folder beside the clone."""
    seen = len(_outside_reads)
    yield
    new = _outside_reads[seen:]
    assert not new, f"the test read {new[0]} outside the clone; use tests/fixtures/ instead"

# Tests send SIGINT and SIGHUP to trainers and expect a graceful stop. A trainer keeps an
# inherited SIG_IGN (the nohup convention), and a suite started under nohup or in the
# background (`cmd &` without job control) hands SIG_IGN to every child: restore them here,
# so children start with the default dispositions however pytest was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

SESSION_CACHES = Path(tempfile.mkdtemp(prefix="gptbench-test-caches-"))
atexit.register(shutil.rmtree, SESSION_CACHES, ignore_errors=True)
CACHE_VARIABLES = {
    "HF_HOME": "huggingface",  # hub models and datasets (HF_HUB_CACHE, HF_DATASETS_CACHE follow it)
    "XDG_CACHE_HOME": "xdg",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",  # torch.compile's kernels
    "TRITON_CACHE_DIR": "triton",
    "TORCH_HOME": "torch",
    "MPLCONFIGDIR": "matplotlib",
}
for _name, _sub in CACHE_VARIABLES.items():
    os.environ[_name] = str(SESSION_CACHES / _sub)
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
    os.environ.pop(_name, None)  # derived from HF_HOME, not from the user's settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, database=DirectoryBasedExampleDatabase(str(SESSION_CACHES / "hypothesis")))
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    """Keep every test away from ~/.cache and ./runs."""
    cache = tmp_path_factory.getbasetemp() / "gptbench-cache"
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPTBENCH_RUNS_DIR", str(tmp_path_factory.getbasetemp() / "default-runs"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GPTBENCH_GPT2_RANKS", str(GPT2_RANKS))


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "play.txt"
    p.write_text(FIXTURE_TEXT, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file):
    """A finished tiny char-level run (torch) in its own runs directory. Read-only: copy it
    (shutil.copytree) before any test that changes it."""
    runs = tmp_path_factory.mktemp("trained-runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("GPTBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gptbench-cache"))
    try:
        return train_fixture_run(runs, corpus_file)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only add contention.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pinned_torch_threads(monkeypatch):
    """Bit-exact comparisons: one torch thread for a library run and a CLI run alike. A
    different count sums in a different order, and the CLI's adaptive policy would change
    the count when the machine is busy; it leaves a count the user fixed alone."""
    import torch

    n = torch.get_num_threads()
    monkeypatch.setenv("GPTBENCH_TORCH_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained_model(trained_run):
    """`trained_run` loaded on torch/CPU (a LoadedModel), for generation tests."""
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    return load_model(RunStore(trained_run.path.parent), run=trained_run.name, backend="torch", device="cpu")
