"""Kill a real trainer 20 times at seeded moments and report what the run directory survived.

Usage: python benchmarks/faults.py [--kills 20] [--seed 0] [--max-iters 10000]

Moments mix crash points (the trainer SIGKILLs itself just before or after renaming a
checkpoint half, its config or its status: see `fsutil`) with SIGKILLs from outside at
random times. After every kill the run directory is checked: every file parses, `runs`
does not call it corrupt, every checkpoint and its training state validate. Then the run
is resumed (or claimed again) until the next kill, and finally trained to the end and
compared, loss for loss, with an uninterrupted run. Prints a table and writes
benchmarks/results/faults.json: kills survived / tried by phase (before, during, after the
first checkpoint), steps lost (max), and leftover bytes after the kills and after the
final save.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the harness the fault tests use

import fault_harness as fh  # noqa: E402


def moments(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    out: list[tuple] = [("after", 1, "status.json"), ("after", 1, "config.json")]  # before the first checkpoint
    while len(out) < n:
        if rng.random() < 0.6:
            out.append((rng.choice(["before", "after"]), rng.randint(1, 6), rng.choice([".safetensors", ".safetensors", "status.json"])))
        else:
            out.append(("time", rng.uniform(2.0, 6.0)))
    return out[:n]


def bytes_of(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iters", type=int, default=10000,
                    help="long enough that no kill moment comes after the run has finished")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="gptbench-faults-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> int:
    corpus = work / "corpus.txt"
    from helpers import FIXTURE_TEXT

    corpus.write_text(FIXTURE_TEXT * 4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPTBENCH_CACHE_DIR": str(work / "cache")}
    runs, ref = work / "runs", work / "ref"
    plan = moments(args.kills, args.seed)
    leftover_peak = 0
    reports = []
    def resumes_from() -> int:
        return (fh.last_checkpoint_step(runs / "k") or 0) if (runs / "k" / "config.json").exists() else 0

    for moment in plan:  # one at a time, so leftovers can be measured after each kill
        if reports:
            reports[-1].resumed_from = resumes_from()  # what the next start continues from
        reports += fh.kill_and_resume(runs, "k", corpus, [moment], max_iters=args.max_iters, env=env)
        if (runs / "k").exists():
            leftover_peak = max(leftover_peak, bytes_of(fh.leftovers(runs / "k")))
    leftover_after_kills = bytes_of(fh.leftovers(runs / "k")) if (runs / "k").exists() else 0
    if reports:
        reports[-1].resumed_from = resumes_from()
    done = fh.finish(runs, "k", corpus, max_iters=args.max_iters, env=env)
    straight = fh.finish(ref, "k", corpus, max_iters=args.max_iters, env=env)
    stitched_equal = fh.train_losses(runs / "k") == fh.train_losses(ref / "k")
    live = bytes_of(list((runs / "k" / "checkpoints").glob("*.safetensors")))

    killed = [r for r in reports if r.killed]
    phases: dict[str, list] = {}
    for r in killed:
        phases.setdefault(r.phase, []).append(r)
    lost = [max(0, r.reached - (r.resumed_from or 0)) for r in killed if r.resumed_from is not None]
    result = {
        "kills_tried": len(killed),
        "kills_survived": sum(1 for r in killed if not r.problems),
        "by_phase": {k: {"tried": len(v), "survived": sum(1 for r in v if not r.problems)} for k, v in sorted(phases.items())},
        "steps_lost_max": max(lost, default=0),
        "leftover_bytes_peak_after_a_kill": leftover_peak,
        "leftover_bytes_after_kills": leftover_after_kills,
        "leftover_bytes_after_final_save": bytes_of(fh.leftovers(runs / "k")),
        "live_checkpoint_bytes": live,
        "finished": done.returncode == 0 and straight.returncode == 0,
        "stitched_losses_equal_uninterrupted": stitched_equal,
        "problems": [{"moment": list(r.moment), "problems": r.problems} for r in killed if r.problems],
        "moments": [list(m) for m in plan],
    }
    print(f"gptbench fault injection: {len(plan)} moments, max_iters {args.max_iters}, seed {args.seed}")
    print(f"{'phase':<26} {'survived/tried':>15}")
    for k, v in result["by_phase"].items():
        print(f"{k:<26} {v['survived']:>7}/{v['tried']:<7}")
    for key in ("kills_survived", "kills_tried", "steps_lost_max", "leftover_bytes_peak_after_a_kill", "leftover_bytes_after_kills",
                "leftover_bytes_after_final_save", "live_checkpoint_bytes", "stitched_losses_equal_uninterrupted"):
        print(f"{key:<40} {result[key]}")
    if result["kills_tried"] < len(plan):
        print(f"only {result['kills_tried']} of {len(plan)} moments came before the run finished: raise --max-iters")
    out = HERE / "results" / "faults.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    ok = result["kills_survived"] == result["kills_tried"] == len(plan) and stitched_equal
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
