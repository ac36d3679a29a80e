"""Deterministic run directories written by hand (fixed timestamps and metrics), for the
TUI tests and snapshots, plus helpers to drive the app.

Nothing here trains: the curves are formulas, the weights seeded numpy. A run that must
look `running` gets this process's pid and a fresh heartbeat, so `Run.live_state()` keeps
it running for the length of a test.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

FROZEN_NOW = 1_717_243_200.0  # 2024-06-01 12:00:00 UTC: "now" for snapshot tests
CHARS = "\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def frozen_clock() -> float:
    return FROZEN_NOW


def _model(n_layer: int = 2, n_head: int = 2, n_embd: int = 32, block_size: int = 32, vocab: int = len(CHARS)) -> dict[str, Any]:
    return {
        "vocab_size": vocab, "block_size": block_size, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
        "dropout": 0.0, "bias": False, "norm": "layernorm", "mlp": "gelu", "tie_embeddings": True, "norm_eps": 1e-5,
    }


def _lr(step: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, decay: int = 2000) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay:
        return min_lr
    r = (step - warmup) / max(1, decay - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr - min_lr)


def write_run(
    root: Path,
    name: str,
    *,
    state: str = "finished",
    step: int = 2000,
    max_iters: int = 2000,
    created: float = FROZEN_NOW - 3 * 3600,
    elapsed: float = 312.0,
    tokenizer: str = "char",
    corpus: str = "tinyshakespeare.txt",
    backend: str = "torch",
    device: str = "cpu",
    model: dict[str, Any] | None = None,
    params: int = 28_416,
    scale: float = 1.0,
    error: str = "",
    lr: float = 1e-3,
    eval_interval: int = 250,
    checkpoint: bool = False,
    pid: int = 0,
    heartbeat: float | None = None,
    log_error: bool = False,
    converted_from: str = "",
) -> Path:
    """A run directory as the trainer writes it (through `RunWriter`, with fixed times),
    with formula metrics up to `step`. `log_error` also writes `error` to log.txt (as the
    trainer does since the run directory's version 2); `converted_from` makes it look like
    `gptbench convert` output (no metrics)."""
    from gptbench.runstore import EvalRecord, RunState, RunWriter, SampleRecord, TrainRecord
    from gptbench.tokenizers.byte import ByteTokenizer
    from gptbench.tokenizers.char import CharTokenizer

    model = model or _model()
    tok = CharTokenizer(CHARS) if tokenizer == "char" else ByteTokenizer()
    writer = RunWriter.create(root, name)
    writer._started = created + 5.0
    cfg = {
        "format_version": 2, "name": name, "created": created, "preset": "tiny", "model": model,
        "train": {"batch_size": 12, "grad_accum": 1, "max_iters": max_iters, "lr": lr, "min_lr": lr / 10,
                  "warmup_iters": 100, "lr_decay_iters": max_iters, "decay_lr": True, "weight_decay": 0.1,
                  "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0, "eval_interval": eval_interval, "eval_iters": 20,
                  "log_interval": 10, "sample_tokens": 200, "keep_last": 3, "seed": 1337, "val_fraction": 0.1},
        "data": {"name": corpus, "spec": f"/data/{corpus}", "train_tokens": 1_003_854, "val_tokens": 111_540},
        "tokenizer": {"spec": tokenizer, "kind": tokenizer.split(":")[0], "vocab_size": model["vocab_size"],
                      "fingerprint": tok.fingerprint()},
        "backend": backend, "device": device, "device_request": "auto", "dtype": "float32", "compile": False,
        "params": params, "param_breakdown": {"token_embeddings": 2080, "position_embeddings": 1024, "blocks": 25_312, "lm_head": 0},
        "versions": {"python": "3.11.7", "gptbench": "0.1.0", "numpy": "2.1.0", "torch": "2.13.0"},
        "command": f"gptbench train --name {name}",
    }
    if converted_from:
        cfg.update(command="convert", converted_from={"source": converted_from, "kind": "hf", "dtype": "float32"},
                   data={"spec": None, "name": f"converted from {converted_from}"})
    writer.save_tokenizer(tok)
    writer.write_config(cfg)
    best = None
    t0 = created + 5.0
    morning = time.mktime((2024, 6, 1, 9, 0, 0, 0, 0, -1))  # log stamps read 2024-06-01 09:00:SS in any time zone
    writer.log(f"run {name}: {params / 1e3:.1f}K parameters", at=morning)
    for s in range(0, step + 1 if not converted_from else 0, 10):
        loss = scale * (3.0 * math.exp(-s / 500) + 1.3 + 0.04 * math.sin(s / 23))
        if s % eval_interval == 0 or s == step:
            val = scale * (3.0 * math.exp(-s / 500) + 1.42)
            best = val if best is None else min(best, val)
            writer.append_metric(EvalRecord(s, round(loss - 0.01, 5), round(val, 5), round(math.exp(val), 3), s * 0.15, t0 + s * 0.16,
                                            val_bpb=round(val / math.log(2), 5)))  # one byte a token (char on ASCII, byte)
            writer.log(f"step {s}: train loss {loss - 0.01:.4f}, val loss {val:.4f}", at=morning + s // 100 % 60)
        if s:
            writer.append_metric(TrainRecord(s, round(loss, 5), _lr(s, lr, lr / 10, 100, max_iters), 0.9,
                                             6100.0 + 400 * math.sin(s / 70), s * 0.15, t0 + s * 0.16))
    if step and not converted_from:
        writer.append_metric(SampleRecord(step - step % eval_interval,
                                          "ROMEO: the king said to the queen,\nand so it goes, my lord.\nJULIET: the cat to the dog.", t0))
    if checkpoint:
        write_checkpoint(writer, model, step, best)
    if error and log_error:
        writer.log(error, at=morning + 30)
    if heartbeat is None:
        heartbeat = time.time() if state == "running" else created + 5.0 + elapsed
    writer.set_status(
        RunState(state), pid=pid or 999_999, host=os.uname().nodename,
        heartbeat=heartbeat, step=step, max_iters=max_iters,
        best_val_loss=round(best, 5) if best else None, tokens_per_sec=6123.0, elapsed=elapsed, **({"error": error} if error else {}),
    )
    writer.close()
    return root / name


def write_checkpoint(writer: Any, model: dict[str, Any], step: int, val_loss: float | None) -> None:
    """Seeded random weights in the gptbench format (enough to load and generate)."""
    from gptbench.backends.spec import GPTConfig

    config = GPTConfig.from_dict(model)
    rng = np.random.default_rng(0)
    tensors = {k: (rng.standard_normal(shape) * 0.02).astype(np.float32) for k, shape in config.canonical_shapes().items()}
    for k in tensors:
        if k.endswith("ln_1.weight") or k.endswith("ln_2.weight") or k == "ln_f.weight":
            tensors[k] = np.ones_like(tensors[k])
    writer.save_checkpoint(step, config, tensors, None, None, val_loss=val_loss, keep_last=1)


def make_fixture_runs(root: Path) -> Path:
    """Five runs covering every state the browser shows (one of them corrupt)."""
    root.mkdir(parents=True, exist_ok=True)
    write_run(root, "baby-char", checkpoint=True)
    write_run(root, "gpt2-wide", state="stopped", step=1200, max_iters=5000, created=FROZEN_NOW - 2 * 86400,
              elapsed=3620.0, tokenizer="byte", corpus="wiki.txt", params=10_612_224, scale=1.6, lr=6e-4,
              model=_model(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab=256))
    write_run(root, "lr-too-high", state="failed", step=300, max_iters=2000, created=FROZEN_NOW - 26 * 60,
              elapsed=41.0, error="loss became nan at step 300; lower --lr or raise --warmup-iters", lr=3e-2, scale=1.2)
    write_run(root, "live-run", state="running", step=700, max_iters=2000, created=FROZEN_NOW - 8 * 60,
              elapsed=105.0, pid=os.getpid(), scale=0.9)
    broken = root / "broken-run"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{ this is not json")
    return root


def copy_trained_run(trained_run: Any, runs_dir: Path) -> Path:
    """Copy the session's trained fixture run (read-only) into a test's runs directory."""
    src = Path(trained_run.path)
    dst = runs_dir / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def screen_text(app: Any) -> str:
    """The current screen as plain text (what a user would read), via the same render path
    as `App.export_screenshot`."""
    import io

    from rich.console import Console

    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system="truecolor", legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


async def settle(pilot: Any, rounds: int = 3) -> None:
    """Let workers finish and their results reach the screen."""
    from textual.worker import WorkerCancelled

    for _ in range(rounds):
        for _attempt in range(10):
            try:
                await pilot.app.workers.wait_for_complete()
                break
            except WorkerCancelled:
                # an exclusive worker (e.g. details of the selected run) was superseded by a
                # newer one while we waited: the app working as designed, so wait again
                await pilot.pause()
        await pilot.pause()


async def wait_for(pilot: Any, predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Pump the app until `predicate()` is true (file system and subprocess driven tests)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def table_names(app: Any) -> list[str]:
    """Run names in the order the runs table shows them."""
    from gptbench.tui.widgets.runtable import RunTable

    table = app.screen.query_one(RunTable)
    return [str(r.key.value) for r in table.ordered_rows]


def row_text(app: Any, name: str) -> str:
    """All cells of a run's row as text (including columns scrolled out of view)."""
    from gptbench.tui.widgets.runtable import RunTable

    table = app.screen.query_one(RunTable)
    return " | ".join(str(getattr(c, "plain", c)) for c in table.get_row(name))


def notifications(app: Any) -> list[str]:
    """Messages of the toasts the app has shown (and not yet expired)."""
    return [n.message for n in app._notifications]


def squash(text: str) -> str:
    """Screen text with runs of spaces collapsed (column alignment is not the point)."""
    import re

    return re.sub(r" +", " ", text)


def region_text(app: Any, selector: str) -> str:
    """What the screen shows inside one widget's region, its lines joined by spaces and
    runs of spaces collapsed (wrapped text reads as one line)."""
    region = app.screen.query_one(selector).region
    lines = screen_text(app).splitlines()[region.y : region.y + region.height]
    return squash(" ".join(line[region.x : region.x + region.width] for line in lines)).strip()
