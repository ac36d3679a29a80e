"""The timed parts of benchmarks/gpu.sh: GPT-2 124M training (bf16, compiled) and decoding.

    python benchmarks/gpu_check.py train  --out DIR [--steps 200] [--batch 16]
    python benchmarks/gpu_check.py decode --out DIR [--tokens 256]
    python benchmarks/gpu_check.py train|decode --dry-run --out DIR   # CPU, tiny shapes

`train` builds the `gpt2` shape (12 x 768, context 1024, vocab 50304 as nanoGPT pads it),
bfloat16 autocast, torch.compile, fused AdamW, and trains on random tokens. Every step
prints as it ends and is appended to DIR/train_steps.jsonl, so a run cut off still reports.
The loss of step i is read once step i+1 is queued (a CUDA event, not a sync of the whole
stream), so printing costs the GPU no idle time. MFU = 6N + 12·L·H·Q·T FLOPs per token
(nanoGPT's) x tokens/s over the chip's dense bf16 peak, from its name (H100 SXM and H200:
989 TFLOP/s; H100 PCIe 756; A100 312); unknown chips and CPUs print no MFU.

`decode` generates greedily from 16-token prompts at batch 1 and 16 through gptbench's
generation engine (KV cache, bf16), tokens/s after the prefill. Peak memory is CUDA's
`max_memory_allocated` per part (reset between parts); on a CPU the process's peak RSS.

NOT YET RUN ON A GPU (no device was lent while this was written): the CUDA-only branches
below (events, pinned copies, peak-memory resets, the peak table) ran only as far as a
CPU `--dry-run` takes them, which is not at all for the `cuda` lines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gptbench.backends.generate import generate_tokens
from gptbench.backends.optim import OptimConfig
from gptbench.backends.registry import create_backend
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.data import get_batch

GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0, bias=True)
TINY = dict(n_layer=1, n_head=2, n_embd=64, block_size=64, vocab_size=512, dropout=0.0, bias=True)
# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name.
PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12))


def chip(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((peak for key, peak in PEAKS if key in name), None)


def peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class Lagged:
    """A step's loss, copied to the host without stalling the queue (CUDA: a pinned copy
    and an event; CPU: the value itself, read at once), read after the next step is queued."""

    def __init__(self, step: int, loss: torch.Tensor, device: str) -> None:
        self.step, self.event = step, None
        if device.startswith("cuda"):
            self.host = loss.detach().float().to("cpu", non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = loss.detach().float()

    def wait(self) -> float:
        if self.event is not None:
            self.event.synchronize()
        return float(self.host)


def emit(out: Path, name: str, record: dict) -> None:
    with (out / name).open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(args: argparse.Namespace, device: str, out: Path) -> dict:
    cfg = GPTConfig(**(TINY if args.dry_run else GPT2))
    be = create_backend(cfg, "torch", device=device, seed=0, dtype="bfloat16", compile=True)
    be.setup_optimizer(OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0))
    reset_peak(device)
    name, peak = chip(device)
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg.vocab_size, size=4_000_000 if not args.dry_run else 100_000).astype(np.uint16)
    tokens = args.batch * cfg.block_size
    print(f"train: {name}, gpt2 shape {'(tiny: dry run)' if args.dry_run else ''} {cfg.num_params() / 1e6:.1f}M params, "
          f"batch {args.batch} x {cfg.block_size}, bf16, compiled, {args.steps} steps", flush=True)
    (out / "train_steps.jsonl").unlink(missing_ok=True)
    times: list[float] = []
    t_start = t_prev = time.perf_counter()
    lag = device.startswith("cuda")  # a CPU computes inside train_step: nothing to overlap

    def report(done: Lagged) -> None:
        nonlocal t_prev
        loss = done.wait()
        now = time.perf_counter()
        dt, t_prev = now - t_prev, now
        times.append(dt)
        tps = tokens / dt
        mfu = cfg.flops_per_token() * tps / peak if peak else None
        emit(out, "train_steps.jsonl", {"step": done.step, "loss": loss, "seconds": dt, "tokens_per_sec": tps, "mfu": mfu})
        print(f"  step {done.step:4d}  loss {loss:7.4f}  {dt * 1000:9.1f} ms  {tps:10.0f} tok/s"
              + (f"  MFU {100 * mfu:5.1f}%" if mfu else ""), flush=True)

    pending = None
    for step in range(args.steps):
        current = Lagged(step, be.train_step([get_batch(data, args.batch, cfg.block_size, rng)], 6e-4)._loss, device)
        if pending is not None:
            report(pending)
        pending = current if lag else report(current)
    if pending is not None:
        report(pending)
    steady = times[min(args.warmup, len(times) - 1):]
    tps = tokens * len(steady) / sum(steady)
    result = {"part": "train", "chip": name, "peak_flops": peak, "params": cfg.num_params(), "batch": args.batch,
              "block_size": cfg.block_size, "steps": args.steps, "first_step_seconds": times[0], "warmup_steps": args.warmup,
              "tokens_per_sec": tps, "mfu": cfg.flops_per_token() * tps / peak if peak else None,
              "peak_memory_bytes": peak_memory(device), "wall_seconds": time.perf_counter() - t_start}
    mfu = f", MFU {100 * result['mfu']:.1f}%" if result["mfu"] else ""
    print(f"train: {tps:,.0f} tokens/s over steps {args.warmup}-{args.steps - 1}{mfu}; first step (compile) "
          f"{times[0]:.1f} s; peak memory {result['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)
    return result


def decode(args: argparse.Namespace, device: str, out: Path) -> dict:
    cfg = GPTConfig(**(TINY if args.dry_run else GPT2))
    be = create_backend(cfg, "torch", device=device, seed=0, dtype="bfloat16")
    name, _ = chip(device)
    rng = np.random.default_rng(0)
    rows = []
    list(generate_tokens(be, [[1, 2, 3, 4]], SamplingParams(temperature=0.0, max_new_tokens=8)))  # warm-up
    for batch in (1, 16):
        reset_peak(device)
        prompts = rng.integers(0, cfg.vocab_size, size=(batch, 16)).tolist()
        timing: dict = {}
        n, t0 = 0, time.perf_counter()
        for tok in generate_tokens(be, prompts, SamplingParams(temperature=0.0, max_new_tokens=args.tokens), timing=timing):
            n += 1
        tok.tolist()  # the last token on the host: every step done
        seconds = time.perf_counter() - t0 - timing["prefill_seconds"]
        tps = batch * (n - 1) / seconds
        row = {"part": "decode", "chip": name, "batch": batch, "new_tokens": n, "prefill_seconds": timing["prefill_seconds"],
               "tokens_per_sec": tps, "peak_memory_bytes": peak_memory(device)}
        emit(out, "decode_rows.jsonl", row)
        print(f"decode: batch {batch:2d}  {tps:10.0f} tokens/s ({tps / batch:7.0f} per row), prefill "
              f"{timing['prefill_seconds'] * 1000:.1f} ms, peak memory {row['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)
        rows.append(row)
    return {"part": "decode", "chip": name, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("train", "decode"))
    ap.add_argument("--out", required=True, help="folder for the JSON")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the same code, in seconds")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the tokens/s (compilation, autotuning)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256, help="new tokens per decode run")
    args = ap.parse_args()
    if args.dry_run:
        args.steps, args.warmup, args.batch, args.tokens = min(args.steps, 6), min(args.warmup, 2), min(args.batch, 4), min(args.tokens, 16)
        device = "cpu"
    else:
        device = "cuda"
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --dry-run to check the script on a CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = (train if args.part == "train" else decode)(args, device, out)
    result.update(device=device, dry_run=args.dry_run, torch=torch.__version__)
    (out / f"{args.part}.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / (args.part + '.json')}", flush=True)


if __name__ == "__main__":
    main()
