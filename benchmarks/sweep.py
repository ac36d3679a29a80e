"""What a sweep costs and what it finds.

1. Overhead of the sweep runner per trial: seconds from a trial's start to its first
   logged step (`--log-interval 1`), for trials started by `gptbench sweep` (from the moment
   the runner starts the trial) against the same spec started as a bare `gptbench train
   --no-ui` (from the moment the command is started), alternating, median over repetitions,
   and the ratio of the two measured side by side in this one run.
2. What a random sweep over the `modern` preset finds in a fixed time: `--trials` trials of
   `--trial-time` training time each (12 x 1m by default: 12 minutes of training), random
   over AdamW's and Muon's learning rates, against the preset's own settings with the same
   budget; best val bits/byte of each, on character-level tinyshakespeare. The budget
   decides (a `--max-iters` it cannot reach), with the preset's schedule shape laid over
   it: warm-up is 50/600 of the budget as in the preset's 600 steps.

    python benchmarks/sweep.py              # full: a few minutes of overhead runs + 12 x 1m (about 20 minutes)
    python benchmarks/sweep.py --quick      # the same code path, 1 repetition, 2 trials of 2s: proves the script works

Prints a table and writes benchmarks/results/sweep.json (--quick: sweep-quick.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO / "tests" / "fixtures" / "tinyshakespeare.txt"
GPTBENCH = [sys.executable, "-m", "gptbench"]
BUDGET_ITERS = 60_000  # more steps than any budget here reaches: the time budget ends every run
SMALL = ["--preset", "tiny", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--batch-size", "8",
         "--max-iters", "5", "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "2", "--sample-tokens", "0"]


def first_step_seconds(run_dir: Path, started: float) -> float:
    """Wall seconds from `started` to the run's first train record."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "train":
            return record["time"] - started
    raise RuntimeError(f"{run_dir} logged no step")


def overhead(root: Path, reps: int, common: list[str]) -> dict[str, Any]:
    """Start-up to first step: bare `gptbench train` against a sweep's trial, alternating."""
    bare, swept = [], []
    for i in range(reps):
        started = time.time()
        subprocess.run([*GPTBENCH, "--runs-dir", str(root), "train", "--no-ui", *SMALL, *common, "--seed", "1", "--name", f"bare-{i}"],
                       check=True, capture_output=True)
        bare.append(first_step_seconds(root / f"bare-{i}", started))
        subprocess.run([*GPTBENCH, "--runs-dir", str(root), "sweep", *SMALL, *common, "--grid", "seed=1", "--name", f"sw-{i}"],
                       check=True, capture_output=True)
        trial = json.loads((root / ".sweeps" / f"sw-{i}" / "sweep.json").read_text())["trials"][0]
        swept.append(first_step_seconds(root / trial["run"], trial["started"]))
    b, s = statistics.median(bare), statistics.median(swept)
    return {"bare_first_step_s": b, "sweep_first_step_s": s, "ratio": s / b, "overhead_s": s - b, "reps": reps}


def best_bpb(run_dir: Path) -> float | None:
    status = json.loads((run_dir / "status.json").read_text())
    return status.get("best_val_bpb")


def search(root: Path, trials: int, trial_time: str, common: list[str]) -> dict[str, Any]:
    """A random sweep over the modern preset's learning rates against the preset itself."""
    base = ["--preset", "modern", "--max-time", trial_time, "--max-iters", str(BUDGET_ITERS), "--warmup-iters",
            str(BUDGET_ITERS * 50 // 600), "--sample-tokens", "0", *common]
    subprocess.run([*GPTBENCH, "--runs-dir", str(root), "train", "--no-ui", *base, "--name", "preset"], check=True, capture_output=True)
    subprocess.run([*GPTBENCH, "--runs-dir", str(root), "sweep", *base, "--random", "lr=log:1e-3..1e-2",
                    "--random", "muon_lr=log:3e-3..5e-2", "--trials", str(trials), "--name", "rnd"], check=True, capture_output=True)
    listing = json.loads(subprocess.run([*GPTBENCH, "--runs-dir", str(root), "runs", "--sweep", "rnd", "--json"],
                                        check=True, capture_output=True, text=True).stdout)
    best = listing["trials"][0]
    preset = best_bpb(root / "preset")
    return {"trials": trials, "trial_time": trial_time, "preset_best_val_bpb": preset, "sweep_best_val_bpb": best["best_val_bpb"],
            "sweep_best_settings": best["settings"], "ratio": best["best_val_bpb"] / preset if preset else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="overhead repetitions (default 5)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--trial-time", default="1m", help="training time per trial (default 1m)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--quick", "--smoke", action="store_true", help="one repetition, 2 trials of 2s: checks the script")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.trials, args.trial_time = 1, 2, "2s"
    common = ["--data", str(DATA), "--tokenizer", "char", "--backend", args.backend, *(["--eval-iters", "2"] if args.quick else [])]
    with tempfile.TemporaryDirectory() as tmp:
        over = overhead(Path(tmp) / "overhead", args.reps, common)
        found = search(Path(tmp) / "search", args.trials, args.trial_time, common)
    rows = [("bare train: start-up to first step", f"{over['bare_first_step_s']:.2f}s"),
            ("sweep trial: start-up to first step", f"{over['sweep_first_step_s']:.2f}s"),
            ("sweep / bare", f"{over['ratio']:.2f}x (+{over['overhead_s']:.2f}s per trial)"),
            (f"modern preset, {args.trial_time}: best val bpb", f"{found['preset_best_val_bpb']:.4f}"),
            (f"random sweep, {args.trials} x {args.trial_time}: best val bpb", f"{found['sweep_best_val_bpb']:.4f}"),
            ("sweep best / preset", f"{found['ratio']:.3f}x  {found['sweep_best_settings']}")]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("sweep-quick.json" if args.quick else "sweep.json")
    out.write_text(json.dumps({"overhead": over, "search": found, "quick": args.quick, "time": time.time()}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
