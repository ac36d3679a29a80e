"""Quality: the `tiny` preset on tinyshakespeare, then val loss over the WHOLE val split.

Target: <= 1.88 after 2000 iterations (nanoGPT's published CPU figure for this config).

    python benchmarks/quality.py [--data ../shared/data/tinyshakespeare.txt] [--iters 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gptbench.runstore import RunStore
from gptbench.spec import resolve_spec
from gptbench.spec.resolve import spec_settings
from gptbench.training import Trainer, full_split_loss

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as runs:
        cfg = resolve_spec("tiny", None, spec_settings(
            train={"max_iters": args.iters, "sample_tokens": 0, "eval_interval": max(1, args.iters // 4), "seed": args.seed},
            data=args.data, tokenizer="char", backend=args.backend, device=args.device, name="quality",
        ))
        trainer = Trainer.new_run(RunStore(runs), cfg)
        t0 = time.perf_counter()
        outcome = trainer.fit()
        if outcome.state != "finished":
            raise SystemExit(f"training {outcome.state} at step {outcome.step}; no result written")
        train_s = time.perf_counter() - t0
        T = trainer.model_cfg.block_size
        val = full_split_loss(trainer.backend, trainer.data.val, T)
        train = full_split_loss(trainer.backend, trainer.data.train[: len(trainer.data.val) * 2], T)
        tps = [r["tokens_per_sec"] for r in trainer.run.metrics() if r["type"] == "train" and r.get("tokens_per_sec")]
    result = {
        "preset": "tiny",
        "iters": args.iters,
        "backend": args.backend,
        "device": trainer.backend.device,
        "val_loss_full_split": val,
        "train_loss_sample": train,
        "val_tokens": int(len(trainer.data.val)),
        "best_eval_val_loss": outcome.best_val_loss,
        "train_seconds": train_s,
        "median_tokens_per_sec": sorted(tps)[len(tps) // 2] if tps else None,
        "target": 1.88,
        "pass": val <= 1.88,
    }
    print(f"{'preset':8} {'iters':>6} {'val loss (full split)':>22} {'train loss':>11} {'time':>8} {'target':>7}")
    print(f"{'tiny':8} {args.iters:6d} {val:22.4f} {train:11.4f} {train_s:7.0f}s {'<=1.88':>7} {'PASS' if result['pass'] else 'FAIL'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'quality.json'}")


if __name__ == "__main__":
    main()
