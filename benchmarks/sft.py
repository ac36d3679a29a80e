"""Supervised fine-tuning on a synthetic task: held-out exact match before and after SFT, and
the cost of the masked loss.

    python benchmarks/sft.py            # both backends, within about 6 minutes on 2 CPU cores
    python benchmarks/sft.py --quick    # a few steps each, the same code path: checks the script

The task (in the spirit of nanochat's SpellingBee): spell a random lowercase word backwards.
Words are split into train and held-out sets. For each backend:
  (a) base: a char model pretrained on text lines `word -> drow` (train words only), asked
      in completion mode (`word -> ` continued greedily to the newline) for every held-out
      word: what a text-pretrained model does with the task written as text;
  (b) sft: the same model fine-tuned with `--sft` on conversations (user: word, assistant:
      drow; train words only), asked in chat mode through its template (greedy, stops at
      `<|end|>`) for the same held-out words.
Exact match is the share of held-out words answered exactly. Both trainings run on a
time budget (`max_time`: the step count follows the machine, the wall-clock does not; the
table reports the steps reached), so the default run stays within its minutes on a slow
machine and learns more on a fast one.
Throughput: training tokens/s of masked SFT batches (one conversation per row, targets -1
outside the answer) against plain text windows on the same shape (batch, block, model),
alternated step by step in one process per backend; the ratio is masked / plain
(target >= 0.95). Prints a table and writes benchmarks/results/sft.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sft.json"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# steps are caps; the seconds (0 = none) are the training-time budgets that end each run first
PLAN = {"full": dict(words=1200, held_out=100, pretrain=5000, pretrain_s=75.0, sft=2000, sft_s=35.0, timing_steps=20),
        "quick": dict(words=120, held_out=10, pretrain=4, pretrain_s=0.0, sft=2, sft_s=0.0, timing_steps=2)}


def make_words(n: int, seed: int = 0) -> list[str]:
    rng, words = random.Random(seed), set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7))))
    return sorted(words, key=lambda w: rng.random())


def write_data(folder: Path, train: list[str]) -> tuple[Path, Path]:
    text = folder / "reverse.txt"
    text.write_text("".join(f"{w} -> {w[::-1]}\n" for w in train))
    chats = folder / "reverse.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w[::-1]}]}) + "\n"
                             for w in train))
    return text, chats


def train(store, name: str, backend: str, steps: int, seconds: float, **top) -> int:
    """Train run `name` for `steps` steps or `seconds` of training time; returns the steps."""
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings
    from gptbench.training import Trainer

    model = {} if top.get("init_from") else {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
    train_cfg = {"max_iters": steps, "max_time": seconds, "eval_interval": max(1, min(steps, 250)), "eval_iters": 2,
                 "sample_tokens": 0, "log_interval": max(1, min(steps, 250) // 5), "lr_decay_iters": steps}
    if top.pop("sft", False):
        train_cfg.update(sft=True, lr=1e-3, batch_size=16, grad_accum=1)
    spec = resolve_spec(None, None, spec_settings(model=model, train=train_cfg, backend=backend, device="cpu", name=name, **top))
    return Trainer.new_run(store, spec).fit().step


def exact_match(store, name: str, backend: str, words: list[str], chat: bool) -> float:
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.chat.session import ChatHistory
    from gptbench.loading import load_model

    lm = load_model(store, run=name, checkpoint="last", backend=backend, device="cpu")
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop=("\n",))
    hits = 0
    for w in words:
        if chat:
            got = ChatHistory(lm.tokenizer, lm.backend.config.block_size).ask(lm.backend, w, params).text  # type: ignore[arg-type]
        else:
            got = generate(lm.backend, lm.tokenizer, f"{w} -> ", params).text
        hits += got.strip() == w[::-1]
    return hits / len(words)


def throughput(store, name: str, backend: str, chats: Path, steps: int) -> dict[str, float]:
    """tokens/s of masked SFT batches and of plain windows, same shape, alternating."""
    import numpy as np

    from gptbench.backends.registry import create_backend
    from gptbench.chat.sft import prepare_sft_data
    from gptbench.loading import load_model
    from gptbench.spec import TrainConfig

    lm = load_model(store, run=name, checkpoint="last", backend=backend, device="cpu")
    cfg = lm.backend.config
    data = prepare_sft_data(str(chats), block_size=cfg.block_size, tokenizer=lm.tokenizer)
    be = create_backend(cfg, backend, device="cpu", seed=0)
    be.setup_optimizer(TrainConfig().optim_config())
    rng, B, T = np.random.default_rng(0), 16, cfg.block_size
    plain = rng.integers(0, cfg.vocab_size, size=(B, T + 1))
    batches = {"masked": lambda: data.train.sample_rows(B, T, rng), "plain": lambda: (plain[:, :-1], plain[:, 1:])}
    spent = {"masked": 0.0, "plain": 0.0}
    for i in range(2 * steps + 2):
        kind = ("masked", "plain")[i % 2]
        batch = batches[kind]()
        t0 = time.perf_counter()
        float(be.train_step([batch], 1e-4).loss)
        if i >= 2:  # the first of each is warm-up (compile)
            spent[kind] += time.perf_counter() - t0
    return {k: steps * B * T / v for k, v in spent.items()}


def run_backend(backend: str, plan: dict, root: Path) -> dict:
    from gptbench.runstore import RunStore

    t0 = time.perf_counter()
    words = make_words(plan["words"])
    held, train_words = words[: plan["held_out"]], words[plan["held_out"]:]
    text, chats = write_data(root, train_words)
    store = RunStore(root / "runs")
    base, sft = f"base-{backend}", f"sft-{backend}"
    base_steps = train(store, base, backend, plan["pretrain"], plan["pretrain_s"], data=str(text), tokenizer="char")
    sft_steps = train(store, sft, backend, plan["sft"], plan["sft_s"], data=str(chats), init_from=f"{base}:last", sft=True)
    speed = throughput(store, sft, backend, chats, plan["timing_steps"])
    return {"backend": backend, "base_steps": base_steps, "sft_steps": sft_steps,
            "base_exact": exact_match(store, base, backend, held, chat=False),
            "sft_exact": exact_match(store, sft, backend, held, chat=True), "held_out": len(held),
            "masked_tok_s": speed["masked"], "plain_tok_s": speed["plain"], "ratio": speed["masked"] / speed["plain"],
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", "--smoke", dest="quick", action="store_true", help="a few steps each: checks the script runs")
    ap.add_argument("--backends", default="torch,mlx")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = ap.parse_args(argv)
    plan = PLAN["quick" if args.quick else "full"]
    rows = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_backend(backend, plan, Path(tmp)))
    print(f"{'backend':<8} {'base steps':>10} {'base exact':>11} {'sft steps':>10} {'sft exact':>10} {'masked tok/s':>13} "
          f"{'plain tok/s':>12} {'ratio':>6} {'seconds':>8}")
    for r in rows:
        print(f"{r['backend']:<8} {r['base_steps']:>10,} {r['base_exact']:>11.1%} {r['sft_steps']:>10,} {r['sft_exact']:>10.1%} "
              f"{r['masked_tok_s']:>13,.0f} {r['plain_tok_s']:>12,.0f} {r['ratio']:>6.2f} {r['seconds']:>8.0f}")
    print(f"exact match over {rows[0]['held_out']} held-out words; ratio = masked / plain tokens/s (target >= 0.95)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"plan": plan, "quick": args.quick, "rows": rows, "python": sys.version.split()[0]}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
