"""Shared fixtures: small configs, temporary run stores and one tiny trained run.

Tests never touch the network or the user's runs directory. `../shared/data` (beside the
repo) is used where it exists; the trained fixture run uses a small built-in text so it
works on any machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINYSHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
GPT2_RANKS = SHARED_DATA / "gpt2.tiktoken"

# A small, deterministic corpus: enough structure for a model to learn something quickly.
_PAIRS = [("king", "queen"), ("cat", "dog"), ("sun", "moon")]
FIXTURE_TEXT = "".join(
    f"ROMEO: line {i} of the play, said the {_PAIRS[i % 3][0]} to the {_PAIRS[i % 3][1]}.\n"
    f"JULIET: and so it goes, {_PAIRS[i % 3][0]}.\n\n"
    for i in range(400)
)


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    """Keep every test away from ~/.cache and ./runs."""
    cache = tmp_path_factory.getbasetemp() / "gptbench-cache"
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPTBENCH_RUNS_DIR", str(tmp_path_factory.getbasetemp() / "default-runs"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if GPT2_RANKS.is_file():
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


def tiny_model_config(**overrides):
    from gptbench.backends.config import GPTConfig

    base = dict(vocab_size=67, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True)
    base.update(overrides)
    return GPTConfig(**base)


def random_tokens(config, batch=2, length=None, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, size=(batch, length or config.block_size), dtype=np.int64)


def train_fixture_run(runs_dir: Path, corpus: Path, name: str = "fixture", max_iters: int = 150, backend: str = "torch", **train):
    """Train a tiny char-level run through the real Trainer (about a second or two)."""
    from gptbench.config import resolve_run_config
    from gptbench.runstore import RunStore
    from gptbench.train import Trainer

    cfg = resolve_run_config(
        "tiny",
        None,
        {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        {"max_iters": max_iters, "eval_interval": 50, "eval_iters": 4, "batch_size": 8, "log_interval": 10,
         "warmup_iters": 10, "sample_tokens": 40, **train},
        {"data": str(corpus), "tokenizer": "char", "backend": backend, "device": "cpu", "name": name},
    )
    trainer = Trainer.new_run(RunStore(runs_dir), cfg)
    trainer.fit()
    return trainer.run


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


@pytest.fixture(scope="module")
def trained_model(trained_run):
    """`trained_run` loaded on torch/CPU (a LoadedModel), for generation tests."""
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    return load_model(RunStore(trained_run.path.parent), run=trained_run.name, backend="torch", device="cpu")
