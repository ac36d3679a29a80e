"""Data-parallel training on CPU (torch, gloo): step time, communication share and peak
memory per rank of 2-process DDP and FSDP2 against one process with the same global batch.

On a 2-core machine a second process brings no speed-up (each rank gets one core, the one
process gets one core too), so this measures what can be measured:

- step time: the median of timed steps after warm-up, for one process taking all N·A
  micro-batches (`single`) and for N processes taking A each (`ddp`, `fsdp`);
- communication share: each rank also times the same A micro-batches on a plain,
  unsynchronised copy of the model in the same process (its compute alone); the share is
  1 - compute / distributed step (gradient all-reduce or FSDP's all-gathers and
  reduce-scatters, and waiting for the slower rank);
- peak memory per rank: `ru_maxrss` after the distributed steps (before the copy is built),
  with and without activation checkpointing;
- the trainer's per-step stop agreement (one all-reduce of a flag), in microseconds.

GPU (NCCL) runs the same code path (`--device cuda`, one GPU per rank) but could not be run
on the machine this was written on; its numbers are not in the note.

    python benchmarks/distributed.py --smoke                      # tiny shape, few steps (CI-sized)
    python benchmarks/distributed.py                              # small and gpt2 shapes (slow on CPU)
    python benchmarks/distributed.py --shapes small --steps 10 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {
    # name: model shape, per-rank micro-batch size, vocabulary
    "tiny": (dict(n_layer=2, n_head=2, n_embd=64, block_size=64, bias=True), 4, 96),
    "small": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, bias=False), 8, 65),
    "gpt2": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True), 2, 50257),
}


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time steps, report through rank 0."""
    from gptbench.backends.memory import peak_rss
    from gptbench.backends.parallel import Parallel
    from gptbench.backends.registry import create_backend, backend_class
    from gptbench.backends.spec import GPTConfig
    from gptbench.spec import TrainConfig
    from gptbench.training.ranks import worker_parallel

    _, par = worker_parallel(args.strategy, args.ac)
    comm = backend_class("torch").connect(par, args.device)
    baseline = peak_rss()  # the interpreter, torch and the process group, before any model
    shape, batch, vocab = SHAPES[args.shape]
    cfg = GPTConfig(vocab_size=vocab, **shape)
    optim = TrainConfig().optim_config()
    backend = create_backend(cfg, "torch", device=args.device, seed=0, parallel=par)
    backend.setup_optimizer(optim)
    rng = np.random.default_rng(par.rank)
    T = cfg.block_size
    local = args.accum * (1 if par.distributed else args.world)  # this process's micro-batches per step

    def batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for _ in range(n):
            x = rng.integers(0, vocab, size=(batch, T), dtype=np.int64)
            out.append((x, np.roll(x, -1, axis=1)))
        return out

    def timed(b, n_steps: int) -> list[float]:
        times = []
        for i in range(args.warmup + n_steps):
            mb = batches(local)
            t0 = time.perf_counter()
            result = b.train_step(mb, 1e-4)
            float(result.loss)  # wait for the step (a sync torch would do at a log step anyway)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return times

    step_times = timed(backend, args.steps)
    peak = peak_rss()
    agree_us = 0.0
    if par.distributed:
        comm.any(False)
        t0 = time.perf_counter()
        for _ in range(50):
            comm.any(False)
        agree_us = (time.perf_counter() - t0) / 50 * 1e6
    compute = None
    if par.distributed:  # the same micro-batches on a plain copy: this rank's compute alone
        plain = create_backend(cfg, "torch", device=args.device, seed=0, parallel=Parallel(activation_checkpointing=args.ac))
        plain.setup_optimizer(optim)
        compute = statistics.median(timed(plain, args.steps))
    step = statistics.median(step_times)
    world = par.world_size
    slots = [0.0] * (4 * world)
    slots[par.rank], slots[world + par.rank], slots[2 * world + par.rank] = step, compute or 0.0, float(peak)
    slots[3 * world + par.rank] = float(peak - baseline)
    totals = comm.sum(slots) if par.distributed else slots
    if par.rank == 0:
        steps = totals[:world]
        computes = totals[world:2 * world]
        row = {
            "shape": args.shape, "mode": args.strategy if par.distributed else "single", "ac": args.ac,
            "processes": world, "threads_per_process": args.threads, "global_batch": batch * args.accum * args.world,
            "tokens_per_step": batch * args.accum * args.world * T, "params": cfg.num_params(),
            "step_ms": max(steps) * 1e3,
            "tokens_per_s": batch * args.accum * args.world * T / max(steps),
            "comm_share": (1 - max(computes) / max(steps)) if par.distributed else 0.0,
            "peak_rss_mb": [m / 2**20 for m in totals[2 * world:3 * world]],
            "training_mb": [m / 2**20 for m in totals[3 * world:]],  # peak minus the process before the model
            "stop_agreement_us": agree_us,
            "estimate_mb": cfg.training_bytes(batch, shards=world if args.strategy == "fsdp" and par.distributed else 1,
                                              checkpointed=args.ac) / 2**20,
        }
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    sys.stdout.flush()
    os._exit(0)  # see commands/train.py: a DDP process can abort in gloo's finalisation


def run_case(shape: str, mode: str, ac: bool, args: argparse.Namespace, out: Path) -> None:
    common = ["--worker", "--shape", shape, "--strategy", "ddp" if mode == "single" else mode, "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--accum", str(args.accum), "--world", str(args.nproc), "--device", args.device,
              "--threads", str(args.threads), "--out", str(out), *(["--ac"] if ac else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "GPTBENCH_TORCH_THREADS": str(args.threads)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    script = str(Path(__file__).resolve())
    if mode == "single":
        cmd = [sys.executable, script, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc), script, *common]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def print_row(r: dict) -> None:
    rss = "/".join(f"{m:.0f}" for m in r["peak_rss_mb"])
    train = "/".join(f"{m:.0f}" for m in r["training_mb"])
    print(f"{r['shape']:6} {r['mode']:6} {'yes' if r['ac'] else 'no':3} {r['processes']:5d} {r['global_batch']:5d} "
          f"{r['step_ms']:9.1f} {r['tokens_per_s']:9.0f} {r['comm_share'] * 100:5.1f}% {rss:>16} {train:>13} "
          f"{r['estimate_mb']:11.0f} {r['stop_agreement_us']:8.0f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,gpt2", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per process per step")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shape, 3 steps: checks the script, measures nothing")
    p.add_argument("--output", help="JSON results file (default benchmarks/results/distributed.json)")
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--ac", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.smoke:
        args.shapes, args.steps, args.warmup = "tiny", 3, 1
    rows = []
    print(f"{'shape':6} {'mode':6} {'ac':3} {'procs':>5} {'batch':>5} {'step ms':>9} {'tok/s':>9} {'comm':>6} "
          f"{'peak RSS/rank MB':>16} {'training MB':>13} {'estimate MB':>11} {'agree us':>8}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.jsonl"
        for shape in args.shapes.split(","):
            for ac in (False, True):
                for mode in ("single", "ddp", "fsdp"):
                    run_case(shape, mode, ac, args, out)
                    rows.append(json.loads(out.read_text().splitlines()[-1]))
                    print_row(rows[-1])  # as it comes: the gpt2 shape takes minutes per case on CPU
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.output) if args.output else RESULTS / ("distributed-smoke.json" if args.smoke else "distributed.json")
    path.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
