"""Helpers the tests share: tiny configs, token batches, fixture files, a trained run.

Tests import this module (`from helpers import ...`); `conftest.py` only declares pytest
fixtures. Every file a test reads lives in the clone (`tests/fixtures/`), never beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
TINYSHAKESPEARE = FIXTURES / "tinyshakespeare.txt"  # public domain, 1,115,394 bytes
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
GPT2_RANKS = FIXTURES / "gpt2.tiktoken"  # GPT-2's BPE ranks (r50k_base), as tiktoken saves them
# The torch device of the device-capable tests (the backend contract, torch's specifics):
# cpu unless $GPTBENCH_TEST_DEVICE names another (benchmarks/gpu.sh sets cuda). No test
# needs a GPU; MLX tests and everything else stay on the CPU.
TORCH_TEST_DEVICE = os.environ.get("GPTBENCH_TEST_DEVICE", "cpu")

# A small, deterministic corpus: enough structure for a model to learn something quickly.
_PAIRS = [("king", "queen"), ("cat", "dog"), ("sun", "moon")]
FIXTURE_TEXT = "".join(
    f"ROMEO: line {i} of the play, said the {_PAIRS[i % 3][0]} to the {_PAIRS[i % 3][1]}.\n"
    f"JULIET: and so it goes, {_PAIRS[i % 3][0]}.\n\n"
    for i in range(400)
)


def tiny_model_config(**overrides):
    from gptbench.backends.spec import GPTConfig

    base = dict(vocab_size=67, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True)
    base.update(overrides)
    return GPTConfig(**base)


def random_tokens(config, batch=2, length=None, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, size=(batch, length or config.block_size), dtype=np.int64)


def optim_config(**overrides):
    """The run defaults' AdamW settings (`TrainConfig().optim_config()`), with overrides."""
    import dataclasses

    from gptbench.spec import TrainConfig

    return dataclasses.replace(TrainConfig().optim_config(), **overrides)


def resolve_config(preset=None, toml=None, model_flags=None, train_flags=None, run_flags=None, lora_flags=None):
    """A run spec from per-section settings (what the tests used to pass as flag dicts)."""
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings

    return resolve_spec(preset, toml, spec_settings(model=model_flags, train=train_flags, lora=lora_flags, **(run_flags or {})))


def train_fixture_run(runs_dir: Path, corpus: Path, name: str = "fixture", max_iters: int = 150, backend: str = "torch",
                      tokenizer: str = "char", model: dict | None = None, **train):
    """Train a tiny run (char-level unless `tokenizer` says otherwise) through the real
    Trainer (about a second or two); `model` adds model keys (e.g. today's recipe, or a
    tied head) to its 2 x 32 shape."""
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    cfg = resolve_spec("tiny", None, spec_settings(
        model={"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, **(model or {})},
        train={"max_iters": max_iters, "eval_interval": 50, "eval_iters": 4, "batch_size": 8, "log_interval": 10,
               "warmup_iters": 10, "sample_tokens": 40, **train},
        data=str(corpus), tokenizer=tokenizer, backend=backend, device="cpu", name=name,
    ))
    trainer = Trainer.new_run(RunStore(runs_dir), cfg)
    trainer.fit()
    return trainer.run


# ---- the CLI, as a user meets it ----------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `gptbench ARGV` in-process: (exit code, stderr)."""
    rc, _, err = run_cli_output(capsys, *argv)
    return rc, err


def run_cli_output(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `gptbench ARGV` in-process: (exit code, stdout, stderr); usage errors included."""
    from gptbench.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def tree_snapshot(root: Path, ignore: tuple[str, ...] = (".lock",)) -> dict[str, bytes]:
    """Every file under `root` and its bytes (to prove a failed command changed nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ignore}


def assert_one_line(err: str, *needles: str) -> None:
    """A user error as the CLI prints it: one line, no traceback, naming the problem."""
    assert err.startswith("gptbench: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def save_hf_gpt2(folder: Path, *, prefixed: bool = True, vocab_size: int = 50257, seed: int = 0, scale: float = 8.0, tokenizer=None, **shape):
    """A tiny GPT-2 made by transformers itself (GPT2LMHeadModel(GPT2Config(...))) standing in
    for pretrained weights, saved with save_pretrained. Matrices are scaled up so its greedy
    continuations are far from ties. `prefixed=False` rewrites the file in the hub's
    original layout (no `transformer.` prefix, like openai-community/gpt2). A gptbench
    `tokenizer` adds its Hugging Face tokenizer files. Returns the model (eval mode)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptbench.backends.weights import load_tensors, save_tensors

    torch.manual_seed(seed)
    dims = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    dims.update(shape)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **dims)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
            else:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    if not prefixed:
        tensors, meta = load_tensors(folder / "model.safetensors")
        save_tensors(folder / "model.safetensors", {k.removeprefix("transformer."): v for k, v in tensors.items()}, meta)
    if tokenizer is not None:
        from gptbench.tokenizers.hf_files import write_hf_tokenizer

        write_hf_tokenizer(tokenizer, folder, dims["n_positions"])
    return model
