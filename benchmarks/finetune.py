"""Fine-tuning: does starting from pretrained weights pay, and what does LoRA save?

1. Quality at equal steps. Pretrain a small model (the `tiny` shape, byte tokenizer, tied
   head) on the built-in default corpus (Python's standard library), then train on
   tinyshakespeare for the same number of steps three ways: full fine-tuning, LoRA, and
   from scratch. Reported: val loss over the whole val split (fine-tuned must beat from
   scratch) and tokens/s.
2. Memory. Peak RSS of full vs LoRA fine-tuning at the gpt2 (124M) shape on CPU, each
   configuration in its own process (peak RSS is per process and never goes down), plus
   the RSS of a process that only imports and loads, for scale. Target: LoRA <= 0.6x full.

    python benchmarks/finetune.py                 # the full benchmark (quiet machine: minutes)
    python benchmarks/finetune.py --smoke         # seconds: every code path, numbers meaningless

Writes benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TINYSHAKESPEARE = REPO / "tests" / "fixtures" / "tinyshakespeare.txt"
GPT2_RANKS = REPO / "tests" / "fixtures" / "gpt2.tiktoken"
MEMORY_TARGET = 0.6


def peak_rss_bytes() -> int:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ---- 1. quality at equal steps ---------------------------------------------------------------
def train(runs: str, name: str, data: str, iters: int, train: dict, run: dict, lora: dict | None = None, preset: str = "tiny") -> dict:
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer, full_split_loss

    model = {} if run.get("init_from") else {"tie_embeddings": True}
    cfg = resolve_spec(preset, None, spec_settings(model=model, train={"max_iters": iters, "sample_tokens": 0, "eval_interval": max(1, iters // 4), **train},
                                                   lora=lora, **{"data": data, "tokenizer": "byte", "name": name, **run}))
    trainer = Trainer.new_run(RunStore(runs), cfg)
    t0 = time.perf_counter()
    outcome = trainer.fit()
    seconds = time.perf_counter() - t0
    if outcome.state != "finished":
        raise SystemExit(f"{name}: training {outcome.state} at step {outcome.step}; no result written")
    tps = sorted(r["tokens_per_sec"] for r in trainer.run.metrics() if r["type"] == "train" and r.get("tokens_per_sec"))
    val = full_split_loss(trainer.backend, trainer.data.val, trainer.model_cfg.block_size)
    trainable = trainer.backend.lora.num_params(trainer.model_cfg) if trainer.backend.lora else trainer.model_cfg.num_params()
    return {"name": name, "iters": iters, "val_loss_full_split": val, "train_seconds": seconds,
            "median_tokens_per_sec": tps[len(tps) // 2] if tps else None, "trainable_params": trainable, "lr": cfg.train.lr}


def quality(args: argparse.Namespace) -> list[dict]:
    common = {"backend": args.backend, "device": args.device}
    batch = {"batch_size": args.batch_size, "grad_accum": 1, "eval_iters": args.eval_iters, "log_interval": 10}
    with tempfile.TemporaryDirectory() as runs:
        base = train(runs, "pretrained", "default", args.pretrain_iters, batch, common)
        base["name"] = "pretrain (default corpus)"
        data = str(args.data)
        rows = [
            train(runs, "full", data, args.iters, {**batch, "lr": args.full_lr}, {**common, "init_from": "pretrained:last"}, preset="finetune"),
            train(runs, "lora", data, args.iters, {**batch, "lr": args.lora_lr}, {**common, "init_from": "pretrained:last"},
                  {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}, preset="finetune"),
            train(runs, "scratch", data, args.iters, batch, common),
        ]
    return [base, *rows]


# ---- 2. peak memory, one process per configuration -----------------------------------------------
def memory_child(mode: str, source: str, data: str, block: int, steps: int) -> None:
    """Runs in its own process: fine-tune (or only load) and print the peak RSS as JSON."""
    os.environ.setdefault("GPTBENCH_GPT2_RANKS", str(GPT2_RANKS))
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    lora = {"rank": 8} if mode == "lora" else None
    with tempfile.TemporaryDirectory() as runs:
        cfg = resolve_spec(None, None, spec_settings(
            model={"block_size": block}, lora=lora,
            train={"max_iters": max(1, steps), "batch_size": 1, "grad_accum": 1, "eval_iters": 1, "eval_interval": 10**6, "sample_tokens": 0, "lr": 1e-5},
            init_from=source, data=data, tokenizer="gpt2", backend="torch", device="cpu", name=mode))
        trainer = Trainer.new_run(RunStore(runs), cfg)
        t0 = time.perf_counter()
        if mode != "load":
            trainer.fit()
        print(json.dumps({"mode": mode, "peak_rss_bytes": peak_rss_bytes(), "params": trainer.model_cfg.num_params(),
                          "seconds": time.perf_counter() - t0}))


def memory(args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from gptbench.backends.spec import GPTConfig
    from gptbench.backends.weights import save_weights

    shape = GPTConfig() if not args.smoke_shape else GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128)  # GPTConfig() is gpt2 124M
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pretrained.safetensors"
        rng = np.random.default_rng(0)  # stand-in weights: memory does not depend on their values
        save_weights(source, shape, {n: (rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in shape.canonical_shapes().items()})
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "GPTBENCH_TORCH_THREADS": str(args.threads),
               "GPTBENCH_CACHE_DIR": str(Path(tmp) / "cache")}
        for mode in ("load", "full", "lora"):
            cmd = [sys.executable, __file__, "--memory-child", mode, "--source", str(source), "--data", str(args.data),
                   "--block-size", str(min(args.mem_block, shape.block_size)), "--mem-steps", str(args.mem_steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"memory child {mode} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few steps and a small memory shape: checks the script, not the numbers")
    ap.add_argument("--data", default=str(TINYSHAKESPEARE), help="the fine-tuning corpus (default: the fixture tinyshakespeare)")
    ap.add_argument("--pretrain-iters", type=int, default=3000)
    ap.add_argument("--iters", type=int, default=500, help="steps of each fine-tuning / from-scratch run")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--full-lr", type=float, default=3e-4)
    ap.add_argument("--lora-lr", type=float, default=3e-3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the memory processes")
    ap.add_argument("--mem-block", type=int, default=256, help="context length of the 124M memory runs")
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--memory-child", choices=("load", "full", "lora"), help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--block-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.source, args.data, args.block_size, args.mem_steps)
        return
    args.smoke_shape = False
    if args.smoke:
        args.pretrain_iters, args.iters, args.eval_iters, args.batch_size = 20, 10, 2, 4
        args.mem_block, args.mem_steps = 32, 1

    rows = quality(args)
    print(f"{'run':28} {'steps':>6} {'lr':>8} {'trainable':>10} {'val loss':>9} {'tokens/s':>9}")
    for r in rows:
        tps = f"{r['median_tokens_per_sec']:9.0f}" if r["median_tokens_per_sec"] else f"{'-':>9}"
        print(f"{r['name']:28} {r['iters']:6d} {r['lr']:8.0e} {r['trainable_params']:10,d} {r['val_loss_full_split']:9.4f} {tps}")
    by = {r["name"]: r for r in rows}
    beats = by["full"]["val_loss_full_split"] < by["scratch"]["val_loss_full_split"] and by["lora"]["val_loss_full_split"] < by["scratch"]["val_loss_full_split"]
    print(f"fine-tuned beats from scratch at {args.iters} steps: {'PASS' if beats else 'FAIL'}")

    mem = memory(args)
    print(f"\n{'peak RSS, gpt2 124M shape, CPU':32} {'GiB':>7}")
    for r in mem:
        print(f"{r['mode']:32} {r['peak_rss_bytes'] / 2**30:7.2f}")
    ratio = next(r for r in mem if r["mode"] == "lora")["peak_rss_bytes"] / next(r for r in mem if r["mode"] == "full")["peak_rss_bytes"]
    print(f"LoRA / full peak RSS = {ratio:.2f} (target <= {MEMORY_TARGET}): {'PASS' if ratio <= MEMORY_TARGET else 'FAIL'}")

    result = {"smoke": args.smoke, "quality": rows, "finetuned_beats_scratch": beats, "memory": mem,
              "memory_shape": "gpt2 124M", "memory_block_size": args.mem_block, "lora_to_full_rss": ratio,
              "memory_target": MEMORY_TARGET, "memory_pass": ratio <= MEMORY_TARGET}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'finetune.json'}")


if __name__ == "__main__":
    main()
