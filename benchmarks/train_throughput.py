"""Training throughput and MFU on CPU (or any device), excluding evaluation.

MFU follows nanoGPT: FLOPs per token = 6N + 12·L·H·(C/H)·T (N = non-embedding params),
divided by a float32 matmul peak measured in this same process (best of several square
matmul sizes), so the ratio is honest for this machine at this moment.

    python benchmarks/train_throughput.py                 # tiny and small presets, torch, CPU
    python benchmarks/train_throughput.py --presets tiny --steps 200 --backend mlx
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gptbench.backends.registry import create_backend
from gptbench.spec import resolve_spec
from gptbench.data import get_batch

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak_flops(backend: str, device: str, seconds: float = 2.0) -> tuple[float, int]:
    """Best float32 matmul FLOP/s over a few square sizes (the MFU denominator)."""
    best, best_n = 0.0, 0
    if backend == "torch":
        import torch

        for n in (256, 512, 1024, 2048):
            a = torch.randn(n, n, device=device)
            b = torch.randn(n, n, device=device)
            for _ in range(3):
                a @ b
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 4:
                a @ b
                reps += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            flops = 2 * n**3 * reps / (time.perf_counter() - t0)
            if flops > best:
                best, best_n = flops, n
    else:
        import mlx.core as mx

        for n in (256, 512, 1024, 2048):
            a = mx.random.normal((n, n))
            b = mx.random.normal((n, n))
            mx.eval(a @ b)
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 4:
                mx.eval(a @ b)
                reps += 1
            flops = 2 * n**3 * reps / (time.perf_counter() - t0)
            if flops > best:
                best, best_n = flops, n
    return best, best_n


def measure(preset: str, backend: str, device: str, steps: int, warmup: int, vocab: int, compile: bool) -> dict:
    cfg = resolve_spec(preset)
    model_cfg = cfg.model_config(vocab)
    t = cfg.train
    be = create_backend(model_cfg, backend, device=device, seed=0, compile=compile)
    be.setup_optimizer(t.optim_config())
    rng = np.random.default_rng(0)
    data = rng.integers(0, vocab, size=1_000_000).astype(np.uint16)
    T = model_cfg.block_size

    def step() -> object:
        batches = [get_batch(data, t.batch_size, T, rng) for _ in range(t.grad_accum)]
        return be.train_step(batches, t.lr)

    for _ in range(warmup):
        step().loss
    t0 = time.perf_counter()
    for _ in range(steps):
        res = step()
    res.loss  # one sync at the end
    dt = time.perf_counter() - t0
    tokens = steps * t.tokens_per_step(T)
    return {
        "preset": preset,
        "backend": backend,
        "device": be.device,
        "params": model_cfg.num_params(),
        "tokens_per_step": t.tokens_per_step(T),
        "steps": steps,
        "seconds": dt,
        "ms_per_step": 1000 * dt / steps,
        "tokens_per_sec": tokens / dt,
        "flops_per_token": model_cfg.flops_per_token(),
        "achieved_flops": model_cfg.flops_per_token() * tokens / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 300 tiny, 10 small)")
    ap.add_argument("--vocab", type=int, default=65, help="vocabulary size (65 = tinyshakespeare chars)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", default="", help="torch CPU thread counts to try, e.g. 1,2 (default: torch's default)")
    args = ap.parse_args()

    # The MFU denominator is the machine's best matmul rate: measured with every core.
    peak, peak_n = matmul_peak_flops(args.backend, args.device)
    thread_counts = [int(t) for t in args.threads.split(",") if t] or [None]
    rows = []
    for preset in args.presets.split(","):
        for threads in thread_counts:
            if threads is not None and args.backend == "torch":
                import torch

                torch.set_num_threads(threads)
            steps = args.steps or {"tiny": 300, "small": 10}.get(preset, 5)
            r = measure(preset, args.backend, args.device, steps, warmup=max(3, steps // 10), vocab=args.vocab, compile=args.compile)
            r["threads"] = threads
            r["peak_flops"] = peak
            r["mfu"] = r["achieved_flops"] / peak
            rows.append(r)
    print(f"float32 matmul peak (all cores): {peak / 1e9:.1f} GFLOP/s (n={peak_n}), {args.backend} on {rows[0]['device']}")
    print(f"{'preset':8} {'threads':>7} {'params':>9} {'tok/step':>9} {'ms/step':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>7}")
    for r in rows:
        print(
            f"{r['preset']:8} {str(r['threads'] or 'default'):>7} {r['params'] / 1e6:8.2f}M {r['tokens_per_step']:9d} "
            f"{r['ms_per_step']:9.2f} {r['tokens_per_sec']:10.0f} {r['achieved_flops'] / 1e9:9.1f} {100 * r['mfu']:6.1f}%"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "train_throughput.json"
    out.write_text(json.dumps({"peak_flops": peak, "peak_matmul_n": peak_n, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
