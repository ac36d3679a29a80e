"""gptbench's training step against nanoGPT's, side by side in one process, torch on CPU.

nanoGPT's `model.py` comes from a path you give (clone karpathy/nanoGPT; nothing of it is
copied here). Both models get nanoGPT's architecture (tied head, no biases, learned
positions), the same initial weights (gptbench's, copied into nanoGPT's model) and the same
batches in the same order. nanoGPT trains as its `train.py` does on a CPU: eager, AdamW from
its `configure_optimizers` (fused only on CUDA, so the for-loop AdamW here), the loss scaled
by the accumulation steps, `clip_grad_norm_` at 1.0, `zero_grad(set_to_none=True)`.
gptbench trains through its backend's `train_step` (fused AdamW; optionally compiled).

The default is nanoGPT's `baby` run (config/train_shakespeare_char.py, dropout 0.2). There
gptbench's lead comes from its CPU dropout: torch's CPU `bernoulli_` draws one
Mersenne-Twister number per element and was a quarter of nanoGPT's step; gptbench draws its
masks with numpy's PCG64 (seeded from torch's generator) and spells out attention with
dropout (torch's SDPA leaves its flash kernel for a math path once dropout is on). Each
model draws its own masks, so with dropout the losses agree only statistically; `--dropout 0`
races the same shape with matching losses (there both run the same kernels: ~1.0x).

One difference is removed: nanoGPT's MLP uses the exact (erf) GELU, gptbench GPT-2's tanh
form; the nanoGPT model's GELU modules are switched to the tanh form so that the losses can
match (`--nanogpt-gelu exact` keeps nanoGPT's own: on torch 2.13's CPU kernels the tanh
form costs ~3x the erf one, ~5% of a step eager; compiled, both fuse).

Each variant trains in timed chunks, the variants alternating (the order rotating every
round), so a noisy machine slows them alike; each round gives one ratio per variant and the
table shows the median and the range; the same from process CPU time (at 2 threads it
counts OpenMP's spinning too). Losses are compared step for step; compile time (the first
step) is reported separately. MFU follows nanoGPT (6N + 12·L·H·Q·T FLOPs per token) against
the float32 matmul peak measured at the same thread count.

    python benchmarks/vs_nanogpt.py --nanogpt ../nanoGPT/model.py --rounds 3 --steps 2 --compile no   # baby, threads 1 and 2
    python benchmarks/vs_nanogpt.py --nanogpt ../nanoGPT/model.py --dropout 0 --threads 2 --rounds 3 --steps 2
    python benchmarks/vs_nanogpt.py --nanogpt ../nanoGPT/model.py --config cpu   # the README's macbook run
    python benchmarks/vs_nanogpt.py --nanogpt ../nanoGPT/model.py --quick        # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import ctypes
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import matmul_peak_flops  # noqa: E402  (a sibling benchmark script)

from gptbench.backends.optim import OptimConfig  # noqa: E402
from gptbench.backends.registry import create_backend  # noqa: E402
from gptbench.backends.spec import GPTConfig  # noqa: E402
from gptbench.data import get_batch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# nanoGPT's shakespeare_char runs. `cpu`: the README's "I only have a macbook" command (the
# shape of gptbench's `tiny` preset, which adds biases and unties the head). `baby`:
# config/train_shakespeare_char.py as is. Its dropout 0.2 makes the losses differ (measured:
# 5.1e-3 after 2 steps, eager; each model draws its own masks): compare losses with `cpu`.
CONFIGS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, steps=50),
    "baby": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2, steps=3),
}
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.99), 0.1, 1.0  # train_shakespeare_char.py
LOSS_TOL = 1e-4  # |loss difference| that still counts as the same (float32, reordered sums)


@dataclass
class Variant:
    """One model in the race: how to run a step, its losses and its timed chunks."""

    name: str
    step: Callable[[list], torch.Tensor]
    rng: torch.Tensor  # the global torch RNG while this variant trains (its dropout masks)
    first_step_s: float = 0.0
    chunk_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # process CPU time of each chunk
    faults: int = 0  # minor page faults in the timed chunks (memory the allocator gave back and took again)
    losses: list[float] = field(default_factory=list)


def keep_freed_memory() -> None:
    """glibc only: keep freed memory in the heap (no trimming, no mmap for big blocks), so a
    step's activations reuse the pages of the last step's instead of faulting in fresh
    zeroed ones (~2,000 minor faults and ~3 ms of system time a `cpu`-shape step at 1
    thread, eager). Process-wide: both sides of the race get it."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)):
        sys.exit("error: mallopt refused the settings (not glibc?); drop --keep-freed-memory")


def load_nanogpt(path: str) -> Any:
    if not Path(path).is_file():
        sys.exit(f"error: no nanoGPT model.py at {path}; clone karpathy/nanoGPT and pass --nanogpt PATH/model.py")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus(path: str | None, vocab: int) -> np.ndarray:
    """Byte tokens of `path` (default: the standard library's own source), the `vocab` most
    frequent bytes numbered and every other byte mapped to 0: char-level text, local."""
    if path:
        raw = Path(path).read_bytes()
    else:
        files = sorted(Path(os.__file__).parent.glob("*.py"))[:80]
        raw = b"".join(p.read_bytes() for p in files)
    ids = np.frombuffer(raw, dtype=np.uint8)
    common = np.argsort(np.bincount(ids, minlength=256), kind="stable")[::-1][:vocab]
    table = np.zeros(256, dtype=np.uint16)
    table[common] = np.arange(vocab, dtype=np.uint16)
    return table[ids]


def gptbench_variant(cfg: GPTConfig, compile: bool) -> Variant:
    be = create_backend(cfg, "torch", device="cpu", seed=0, compile=compile)
    be.setup_optimizer(OptimConfig(weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1], grad_clip=GRAD_CLIP))

    def step(micro: list) -> torch.Tensor:
        return be.train_step([(x.numpy(), y.numpy()) for x, y in micro], LR)._loss

    v = Variant("gptbench+compile" if compile else "gptbench", step, torch.get_rng_state())
    v.backend = be  # type: ignore[attr-defined]  (the weights nanoGPT's model copies)
    return v


def nanogpt_variant(ng: Any, cfg: GPTConfig, weights: dict[str, np.ndarray], compile: bool, gelu: str) -> Variant:
    conf = ng.GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    model = ng.GPT(conf)
    if gelu == "tanh":  # gptbench's (GPT-2's) GELU, so that the losses can match
        for block in model.transformer.h:
            block.mlp.gelu = torch.nn.GELU(approximate="tanh")
    theirs = model.state_dict()
    mapped = {f"transformer.{k}": torch.from_numpy(np.array(v)) for k, v in weights.items()}
    mapped["lm_head.weight"] = mapped["transformer.wte.weight"]  # tied, as in nanoGPT
    missing = set(theirs) - set(mapped)
    if missing or set(mapped) - set(theirs):
        sys.exit(f"error: weight names differ: nanoGPT only {sorted(missing)}, gptbench only {sorted(set(mapped) - set(theirs))}")
    model.load_state_dict(mapped)
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")
    model.train()
    net = torch.compile(model) if compile else model

    def step(micro: list) -> torch.Tensor:  # nanoGPT's train.py loop body, on CPU
        for group in opt.param_groups:
            group["lr"] = LR
        total = torch.zeros(())
        for x, y in micro:
            _, loss = net(x, y)
            (loss / len(micro)).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total / len(micro)

    return Variant("nanogpt+compile" if compile else "nanogpt", step, torch.get_rng_state())


def run_chunk(v: Variant, batches: list) -> float:
    torch.set_rng_state(v.rng)
    losses = []
    faults0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), time.process_time()
    for micro in batches:
        losses.append(v.step(micro))
    dt = time.perf_counter() - t0
    v.cpu_s.append(time.process_time() - c0)
    v.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    v.rng = torch.get_rng_state()
    v.losses.extend(float(x) for x in losses)  # read after the clock stops
    return dt


def race(variants: list[Variant], batches: list, rounds: int, steps: int) -> None:
    """One untimed first step each (compilation), then `rounds` rounds of `steps` timed
    steps per variant, the order rotating each round; every variant sees the same batches."""
    for v in variants:
        v.first_step_s = run_chunk(v, batches[:1])
    for r in range(rounds):
        chunk = batches[1 + r * steps : 1 + (r + 1) * steps]
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            v.chunk_s.append(run_chunk(v, chunk))
            print(f"    round {r + 1}/{rounds} {v.name:17} {v.chunk_s[-1] * 1000 / steps:8.2f} ms/step", flush=True)


def summarise(variants: list[Variant], threads: int, tokens_per_step: int, steps: int, flops_per_token: float, peak: float) -> list[dict]:
    base = variants[0]
    rows = []
    for v in variants:
        tps = tokens_per_step * steps * len(v.chunk_s) / sum(v.chunk_s)
        ratios = [b / c for b, c in zip(base.chunk_s, v.chunk_s)]
        cpu_ratios = [b / c for b, c in zip(base.cpu_s, v.cpu_s)]
        diff = max(abs(a - b) for a, b in zip(v.losses, base.losses))
        rows.append({
            "threads": threads, "variant": v.name, "tokens_per_sec": tps, "ms_per_step": 1000 * sum(v.chunk_s) / (steps * len(v.chunk_s)),
            "ratio_vs_nanogpt_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_time_ratio_median": statistics.median(cpu_ratios), "cpu_time_ratio_min": min(cpu_ratios), "cpu_time_ratio_max": max(cpu_ratios),
            "first_step_s": v.first_step_s, "mfu": flops_per_token * tps / peak, "peak_flops": peak,
            "max_loss_diff": diff, "page_faults_per_step": v.faults / (steps * len(v.chunk_s)), "losses_match": diff <= LOSS_TOL, "final_loss": v.losses[-1],
        })
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'threads':>7} {'variant':17} {'ms/step':>8} {'tokens/s':>9} {'ratio (median, range)':>24} {'MFU':>6} "
          f"{'1st step':>8} {'max|Δloss|':>10} {'faults/step':>11} {'CPU-time ratio':>20}")
    for r in rows:
        rng = f"{r['ratio_vs_nanogpt_median']:.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        print(f"{r['threads']:7d} {r['variant']:17} {r['ms_per_step']:8.2f} {r['tokens_per_sec']:9.0f} {rng:>24} "
              f"{100 * r['mfu']:5.1f}% {r['first_step_s']:7.2f}s {r['max_loss_diff']:10.2e} {r['page_faults_per_step']:11.0f} "
              f"{r['cpu_time_ratio_median']:8.3f} ({r['cpu_time_ratio_min']:.2f}-{r['cpu_time_ratio_max']:.2f})")


def one_thread_count(args: argparse.Namespace, ng: Any, cfg: GPTConfig, batches: list, threads: int, steps: int) -> list[dict]:
    torch.set_num_threads(threads)
    peak, _ = matmul_peak_flops("torch", "cpu", seconds=0.5 if args.quick else 2.0)
    torch.manual_seed(1337)
    ours = [gptbench_variant(cfg, compile=False)]
    if args.compile == "yes" or (args.compile is None and not args.quick):
        ours.append(gptbench_variant(cfg, compile=True))
    weights = ours[0].backend.get_weights()
    theirs = [nanogpt_variant(ng, cfg, weights, False, args.nanogpt_gelu)]
    if args.nanogpt_compile:
        theirs.append(nanogpt_variant(ng, cfg, weights, True, args.nanogpt_gelu))
    variants = theirs + ours
    print(f"  threads {threads}: float32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    race(variants, batches, args.rounds, steps)
    return summarise(variants, threads, cfg.block_size * args.batch_size * args.grad_accum, steps, cfg.flops_per_token(), peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", required=True, help="path to nanoGPT's model.py")
    ap.add_argument("--config", choices=sorted(CONFIGS), help="nanoGPT's run (default: baby; cpu with --quick)")
    ap.add_argument("--dropout", type=float, help="override the config's dropout (0: losses can match)")
    ap.add_argument("--threads", default="1,2", help="torch CPU thread counts, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds (each variant one chunk per round)")
    ap.add_argument("--steps", type=int, default=0, help="steps per chunk (default: the config's)")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--text", help="a text file to train on (default: the Python standard library's source)")
    ap.add_argument("--compile", choices=("yes", "no"), help="race gptbench+compile too (default: yes; no with --quick)")
    ap.add_argument("--nanogpt-gelu", choices=("tanh", "exact"), default="tanh",
                    help="nanoGPT's GELU: tanh = gptbench's (losses match; default), exact = nanoGPT's own erf form")
    ap.add_argument("--nanogpt-compile", action="store_true", help="add nanoGPT compiled (its train.py's GPU default)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 3 steps, no compile unless --compile yes")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc mallopt for the whole process (both sides): compare tokens/s with and without")
    ap.add_argument("--out", default=str(RESULTS / "vs_nanogpt.json"))
    args = ap.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    args.config = args.config or ("cpu" if args.quick else "baby")
    shape = dict(CONFIGS[args.config])
    if args.dropout is not None:
        shape["dropout"] = args.dropout
    args.batch_size, steps = shape.pop("batch_size"), shape.pop("steps")
    steps = 3 if args.quick else (args.steps or steps)
    args.rounds = 2 if args.quick else args.rounds
    cfg = GPTConfig(vocab_size=65, bias=False, tie_embeddings=True, **shape)
    ng = load_nanogpt(args.nanogpt)
    data = corpus(args.text, cfg.vocab_size)
    rng = np.random.default_rng(1337)
    batches = [[tuple(torch.from_numpy(a) for a in get_batch(data, args.batch_size, cfg.block_size, rng)) for _ in range(args.grad_accum)]
               for _ in range(1 + args.rounds * steps)]
    print(f"nanoGPT {args.config} shape: {cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size}, batch {args.batch_size}x{args.grad_accum}, "
          f"dropout {cfg.dropout}, {cfg.num_params() / 1e6:.2f}M params; {args.rounds} rounds x {steps} steps; torch {torch.__version__}", flush=True)
    rows = []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        rows += one_thread_count(args, ng, cfg, batches, threads, steps)
    print_rows(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "dropout": cfg.dropout, "model": cfg.to_dict() if hasattr(cfg, "to_dict") else str(cfg),
                               "batch_size": args.batch_size, "grad_accum": args.grad_accum, "rounds": args.rounds,
                               "steps_per_chunk": steps, "nanogpt_gelu": args.nanogpt_gelu,
                               "keep_freed_memory": args.keep_freed_memory, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
