"""Train and decode throughput of the torch and MLX backends on this machine.

    python benchmarks/backends.py            # tiny + small shapes, a few minutes on 2 cores
    python benchmarks/backends.py --quick    # fewer steps and smaller batches, ~1-2 minutes

For each model shape (the `tiny` and `small` presets with a char-sized vocab of 65) and each
backend it measures training tokens/s (full AdamW steps after warm-up, compile included in
the warm-up) and decode tokens/s (batch 1, greedy, KV cache, after the prefill), with the
device each backend picked. Extra rows: torch with one thread (OMP_NUM_THREADS=1); where a
system OpenBLAS exists, MLX with `GPTBENCH_MLX_BLAS=auto` (the Linux `mlx[cpu]` wheel links
netlib's reference BLAS; see backends/mlx/model.py _preload_cblas); and MLX with its training step run
eagerly instead of through `mx.compile` (with the fast BLAS when there is one, so matmuls
do not hide the difference).

Every case runs in its own subprocess, so environment switches (BLAS preload) apply and one
case's allocations or threads do not disturb the next. Prints a table and writes
benchmarks/results/backends.json. CPU numbers on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "backends.json"
VOCAB = 65

# (shape, batch) per mode; block size is the preset's.
PLAN = {
    "full": {"tiny": dict(batch=12, train_steps=20, warmup=3, decode_tokens=200),
             "small": dict(batch=4, train_steps=2, warmup=1, decode_tokens=200)},
    "quick": {"tiny": dict(batch=12, train_steps=6, warmup=2, decode_tokens=100),
              "small": dict(batch=2, train_steps=2, warmup=1, decode_tokens=60)},
}


def cases(mode: str, configs: list[str], backends: list[str], blas: str | None) -> list[dict]:
    out = []
    for shape in configs:
        for backend in backends:
            base = dict(shape=shape, backend=backend, variant="default", env={}, **PLAN[mode][shape])
            out.append(base)
            if backend == "torch" and shape == "tiny":
                # torch's default of one thread per core spin-waits badly when other
                # processes share the cores; one thread shows what that costs here
                out.append({**base, "variant": "1 thread", "env": {"OMP_NUM_THREADS": "1"}})
            if backend == "mlx":
                fast = {"GPTBENCH_MLX_BLAS": blas} if blas else {}
                if blas:
                    out.append({**base, "variant": "+OpenBLAS", "env": fast})
                if shape == "tiny":
                    # with the fastest BLAS available, so matmuls do not hide what compile changes
                    out.append({**base, "variant": "+OpenBLAS eager" if blas else "eager step", "env": fast,
                                "compile": False, "decode_tokens": 0})
    return out


# ---- one case, in a subprocess ------------------------------------------------------------
def run_case(case: dict) -> dict:
    import numpy as np

    from gptbench.backends.registry import create_backend
    from gptbench.backends.generate import generate_tokens
    from gptbench.backends.sampling import SamplingParams
    from gptbench.backends.spec import GPTConfig
    from gptbench.spec import PRESETS, TrainConfig

    model = {k: v for k, v in PRESETS[case["shape"]].model.to_dict().items() if k != "vocab_size"} | {"dropout": 0.0}
    cfg = GPTConfig(vocab_size=VOCAB, **model)
    be = create_backend(cfg, case["backend"], device="auto", seed=0, compile=case.get("compile"))
    be.setup_optimizer(TrainConfig().optim_config())
    rng = np.random.default_rng(0)
    B, T = case["batch"], cfg.block_size

    def batch():
        x = rng.integers(0, VOCAB, size=(B, T + 1))
        return [(x[:, :-1], x[:, 1:])]

    for _ in range(case["warmup"]):
        be.train_step(batch(), 1e-3).loss
    batches = [batch() for _ in range(case["train_steps"])]
    t0 = time.perf_counter()
    for b in batches:
        res = be.train_step(b, 1e-3)
    final_loss = res.loss  # waits for the last step
    train_s = time.perf_counter() - t0
    out = {
        "device": be.describe(),
        "params": cfg.num_params(),
        "batch": B,
        "block_size": T,
        "train_tokens_per_sec": case["train_steps"] * B * T / train_s,
        "train_step_ms": 1000 * train_s / case["train_steps"],
        "final_loss": final_loss,
    }
    if case["decode_tokens"]:
        prompt = rng.integers(0, VOCAB, size=16).tolist()
        params = SamplingParams(temperature=0.0, max_new_tokens=case["decode_tokens"])
        list(generate_tokens(be, [prompt], SamplingParams(temperature=0.0, max_new_tokens=8)))  # warm-up
        times = []
        for _ in generate_tokens(be, [prompt], params):
            times.append(time.perf_counter())
        out["decode_tokens_per_sec"] = (len(times) - 1) / (times[-1] - times[0])
    if case["backend"] == "mlx":
        from gptbench.backends.mlx import model as mlx_model

        out["mlx_blas"] = mlx_model.BLAS or "bundled reference BLAS"
    return out


# ---- driver ----------------------------------------------------------------------------------
def mlx_linked_blas() -> list[str]:
    """The BLAS/LAPACK libraries the installed MLX links (ldd on libmlx.so)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("mlx")
        lib = Path(spec.submodule_search_locations[0]) / "lib" / "libmlx.so"
        ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, timeout=30).stdout
    except Exception:  # noqa: BLE001 - informational only
        return []
    return [line.split("=>")[0].strip() for line in ldd.splitlines() if "blas" in line.lower() or "lapack" in line.lower()]


def find_openblas() -> str | None:
    import ctypes.util

    return "auto" if sys.platform == "linux" and ctypes.util.find_library("openblas") else None


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "torch", "mlx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, smaller batches")
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--backends", default=None, help="default: every installed backend")
    ap.add_argument("--no-blas", action="store_true", help="skip the MLX + OpenBLAS cases")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0

    from gptbench.backends.registry import available_backends

    mode = "quick" if args.quick else "full"
    backends = args.backends.split(",") if args.backends else available_backends()
    blas = None if args.no_blas else find_openblas()
    rows = []
    t_all = time.perf_counter()
    for case in cases(mode, args.configs.split(","), backends, blas):
        env = {**os.environ, **case["env"]}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{case['shape']}/{case['backend']}/{case['variant']} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({k: v for k, v in case.items() if k != "env"} | res | {"wall_s": time.perf_counter() - t0})
        r = rows[-1]
        print(f"  {r['shape']:<6} {r['backend']:<6} {r['variant']:<15} train {r['train_tokens_per_sec']:>9.0f} tok/s"
              f"  decode {r.get('decode_tokens_per_sec', float('nan')):>7.1f} tok/s  ({r['wall_s']:.0f}s)", file=sys.stderr)

    header = f"{'shape':<6} {'params':>7} {'backend':<8} {'variant':<15} {'device':<12} {'batch':>8} {'train tok/s':>12} {'step ms':>9} {'decode tok/s':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        dec = f"{r['decode_tokens_per_sec']:.1f}" if "decode_tokens_per_sec" in r else "-"
        print(f"{r['shape']:<6} {r['params'] / 1e6:>6.2f}M {r['backend']:<8} {r['variant']:<15} {r['device']:<12} "
              f"{r['batch']:>3}x{r['block_size']:<4} {r['train_tokens_per_sec']:>12.0f} {r['train_step_ms']:>9.1f} {dec:>13}")
    report = {
        "benchmark": "backends",
        "mode": mode,
        "time": time.time(),
        "wall_s": time.perf_counter() - t_all,
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "versions": versions(),
        "mlx_links": mlx_linked_blas(),
        "notes": "CPU timings on a shared machine are indicative; each case ran in its own process.",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out} ({report['wall_s']:.0f}s); MLX links: {', '.join(report['mlx_links']) or 'unknown'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
