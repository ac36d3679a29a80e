"""Data pipeline throughput: tokenize-and-shard vs tiktoken's ceiling, BPE training, batch sampling.

    python benchmarks/data.py                      # 100 MB corpus, 1 and 2 threads
    python benchmarks/data.py --mb 20 --threads 1  # quicker

1. Tokenize-and-shard: `prepare_data` on a ~100 MB file (tinyshakespeare repeated) with the
   gpt2 tokenizer, end to end (read, hash, tokenize, write uint16 memmap, index), against
   plain `Encoding.encode_ordinary_batch` over the same text in the same process (the
   ceiling). Target: >= 0.8x the ceiling.
2. BPE training: byte-level BPE with 4,096 ids on tinyshakespeare; time and bytes/token.
3. Batch sampling: `get_batch` from the memmap at the `small` preset shape (64 x 256).

Prints a table and writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gptbench.data import get_batch, prepare_data
from gptbench.fsutil import atomic_write_json
from gptbench.tokenizers.bpe import train_bpe
from gptbench.tokenizers.pieces import split_text
from gptbench.tokenizers.registry import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shakespeare", type=Path, default=SHARED / "tinyshakespeare.txt")
    ap.add_argument("--gpt2-ranks", type=Path, default=Path(os.environ.get("GPTBENCH_GPT2_RANKS", SHARED / "gpt2.tiktoken")))
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size for the tokenize benchmark (MB)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="best of N (interleaved) for each timing")
    ap.add_argument("--out", type=Path, default=RESULTS / "data.json")
    args = ap.parse_args(argv)

    base = args.shakespeare.read_text(encoding="utf-8")
    copies = max(1, round(args.mb * 1e6 / len(base.encode())))
    text = base * copies
    n_bytes = len(text.encode())
    tok = build_tokenizer(f"gpt2:{args.gpt2_ranks}")
    enc = tok.encoding
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "corpus_bytes": n_bytes,
        "tokenize": [],
    }
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory(prefix="gptbench-bench-") as tmp:
        tmp_path = Path(tmp)
        corpus = tmp_path / "shakespeare_x.txt"
        corpus.write_text(text, encoding="utf-8")
        pieces = list(split_text(text, 1 << 20))
        del text

        # -- 1. tokenize and shard --------------------------------------------------
        prepared = None
        for threads in args.threads:
            n_tokens = 0

            def ceiling():
                nonlocal n_tokens
                n_tokens = sum(map(len, enc.encode_ordinary_batch(pieces, num_threads=threads)))

            runs = iter(range(10**6))

            def ours():
                nonlocal prepared
                prepared = prepare_data(str(corpus), f"gpt2:{args.gpt2_ranks}", block_size=256,
                                        cache_dir=tmp_path / f"cache-{threads}-{next(runs)}", num_proc=threads)

            # Interleaved, best of N: a busy machine slows both sides alike.
            t_ceiling, t_ours = float("inf"), float("inf")
            for _ in range(args.repeats):
                t_ceiling = min(t_ceiling, best_of(ceiling, 1))
                t_ours = min(t_ours, best_of(ours, 1))
            assert prepared is not None and prepared.info["tokens"] == n_tokens and not prepared.info["cached"]
            row = {
                "threads": threads,
                "tokens": n_tokens,
                "ceiling_mb_s": n_bytes / 1e6 / t_ceiling,
                "prepare_data_mb_s": n_bytes / 1e6 / t_ours,
                "ratio": t_ceiling / t_ours,
            }
            results["tokenize"].append(row)
            rows.append((f"tokenize+shard gpt2, {threads} thread{'s' if threads > 1 else ''}",
                         f"{row['prepare_data_mb_s']:.1f} MB/s vs ceiling {row['ceiling_mb_s']:.1f} MB/s = {row['ratio']:.2f}x"))
        rows.append(("  corpus", f"{n_bytes / 1e6:.1f} MB -> {prepared.info['tokens']:,} tokens ({prepared.train.dtype})"))

        # -- 3. batch sampling from the memmap (small preset: 64 x 256) ------------------
        rng = np.random.default_rng(0)
        train = prepared.train
        get_batch(train, 64, 256, rng)  # warm up
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            get_batch(train, 64, 256, rng)
            count += 1
        batches_s = count / (time.perf_counter() - t0)
        results["sampling"] = {"batch_size": 64, "block_size": 256, "batches_per_s": batches_s,
                               "tokens_in_memmap": len(train)}
        del prepared, train

    # -- 2. BPE training -----------------------------------------------------------------
    t0 = time.perf_counter()
    bpe = train_bpe(split_text(base, 1 << 16), 4096)
    t_train = time.perf_counter() - t0
    bpt_bpe = len(base.encode()) / len(bpe.encode(base))
    bpt_gpt2 = len(base.encode()) / len(tok.encode(base))
    results["bpe"] = {"vocab_size": bpe.vocab_size, "train_s": t_train, "bytes_per_token": bpt_bpe,
                      "gpt2_bytes_per_token": bpt_gpt2, "corpus_bytes": len(base.encode())}
    rows.append(("BPE train 4096 on tinyshakespeare", f"{t_train:.2f} s, {bpt_bpe:.2f} bytes/token (gpt2: {bpt_gpt2:.2f})"))
    rows.append(("get_batch 64x256 from memmap", f"{batches_s:,.0f} batches/s ({batches_s / 5:,.0f}x a 5 steps/s trainer)"))

    width = max(len(a) for a, _ in rows)
    print(f"gptbench data benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
