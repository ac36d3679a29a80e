"""Training speed alone and beside one busy process: torch's old default vs gptbench's policy.

    python benchmarks/contention.py [--reps 3] [--steps 800]

Each measurement is a real `gptbench train --no-ui` run of the tiny preset (evaluation and
samples off, so tokens/s is training alone), its tokens/s the median of its logged
windows after the first. "old default" pins torch's own choice, every core spinning
(`--threads <cores>`, which also turns adaptation off); "policy" is a plain run, whose
trainer adapts its threads to the cores other processes leave free (`gptbench.backends.cpu`).
"busy" runs `yes > /dev/null` beside the trainer (started a second before it). The
cases alternate within each repetition, so slow drift of the machine hits all alike.
Run it on an otherwise quiet machine. Prints a table and writes
benchmarks/results/contention.json.
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

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"


def measure(corpus: str, policy: bool, busy: bool, steps: int, work: Path, cache: Path) -> float:
    runs = Path(tempfile.mkdtemp(dir=work))
    cores = os.cpu_count() or 1
    flags = [] if policy else ["--threads", str(cores)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GPTBENCH_TORCH_THREADS", "MKL_NUM_THREADS")}
    env["GPTBENCH_CACHE_DIR"] = str(cache)
    hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
    try:
        if hog is not None:
            time.sleep(1.0)
        subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "train", "--no-ui", "--name", "c",
                        "--data", corpus, "--tokenizer", "char", "--preset", "tiny", "--max-iters", str(steps),
                        "--eval-interval", str(steps * 10), "--sample-tokens", "0", "--log-interval", "20", *flags],
                       check=True, capture_output=True, env=env, timeout=1800)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    rates = [json.loads(line).get("tokens_per_sec") for line in (runs / "c" / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r][1:]
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "default")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptbench-contention-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> int:
    cache = work / "cache"
    cases = [(p, b) for b in (False, True) for p in (False, True)]
    measure(args.data, True, False, 40, work, cache)  # tokenizes the corpus once, outside the timings
    results: dict[str, list[float]] = {f"{'policy' if p else 'old default'}, {'busy' if b else 'alone'}": [] for p, b in cases}
    for rep in range(args.reps):
        for p, b in cases:
            key = f"{'policy' if p else 'old default'}, {'busy' if b else 'alone'}"
            results[key].append(measure(args.data, p, b, args.steps, work, cache))
            print(f"rep {rep + 1}: {key:<22} {results[key][-1]:>9,.0f} tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    old_alone = med["old default, alone"]
    table = {
        "old default, alone": med["old default, alone"],
        "old default, busy": med["old default, busy"],
        "policy, alone": med["policy, alone"],
        "policy, busy": med["policy, busy"],
        "old default: busy / alone": med["old default, busy"] / old_alone,
        "policy: busy / old default alone": med["policy, busy"] / old_alone,
        "policy: busy / policy alone": med["policy, busy"] / med["policy, alone"],
        "policy alone / old default alone": med["policy, alone"] / old_alone,
    }
    print(f"\ngptbench contention benchmark ({os.cpu_count()} CPUs, tiny preset, {args.steps} steps, medians of {args.reps})")
    for k, v in table.items():
        print(f"  {k:<36} {v:>10,.0f}" if v > 10 else f"  {k:<36} {v:>10.2f}")
    out = HERE / "results" / "contention.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"medians": table, "runs": results, "reps": args.reps, "steps": args.steps, "cpus": os.cpu_count(),
                               "data": args.data}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
