"""Tokenizers and data at corpus scale (issue 25 part 2): BPE training, the token cache, the loader.

    python benchmarks/tokenizer_scale.py            # a 120 MB corpus, vocab 8k and 32k, 124M loader shape
    python benchmarks/tokenizer_scale.py --quick    # the same code paths: 5 MB, vocab 2k, < 1 minute

The corpus: tinyshakespeare (../shared/data) and this Python's stdlib sources, cut into
paragraphs, shuffled and repeated (seeded) into 4 MB text files in a temp folder.

1. BPE training: `gptbench tokenizer train --corpus FOLDER` (a subprocess: the real command,
   reading, training, the bytes/token pass, saving) against Hugging Face `tokenizers`' own
   BpeTrainer (ByteLevel, GPT-2 regex, the same vocabulary) reading the same files in a
   subprocess. Wall time ratio (target <= 1.0x) and each process's peak RSS.
2. The token cache: `prepare_data` with the trained tokenizer (`bpe:PATH`, all cores) in a
   subprocess, MB/s against tiktoken's `encode_ordinary_batch(num_threads=all cores)` on the
   same documents with the same Encoding (target >= 0.8x), and the peak RSS of each.
3. The data loader at the 124M shape: `get_batch` from a memmap over a sparse token file twice
   the size of RAM, ms per 1 x 1024 batch, against one forward+backward of the gptbench torch
   model at 124M on that batch (`--quick`: 1 layer). Target < 1%. Its ms per 12 x 1024 batch
   is printed too, to set against a GPU's step time.

Prints a table and writes benchmarks/results/tokenizer_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
FILE_BYTES = 4 << 20

HF_TRAIN = """
import sys, time
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
files, vocab = sys.argv[1:-1], int(sys.argv[-1])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train(files, trainer)
print(tok.get_vocab_size())
"""

CACHE_BUILD = """
import os, sys, time, json
from pathlib import Path
from gptbench.data import prepare_data
corpus, tok, cache = sys.argv[1:4]
t0 = time.perf_counter()
data = prepare_data(corpus, tok, block_size=1024, cache_dir=Path(cache), num_proc=os.cpu_count() or 1)
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": data.info["bytes"], "tokens": data.info["tokens"]}))
"""

TIKTOKEN_BATCH = """
import os, sys, time, json
from pathlib import Path
from gptbench.tokenizers.registry import build_tokenizer
enc = build_tokenizer(sys.argv[2]).encoding
files = sorted(Path(sys.argv[1]).iterdir())
t0 = time.perf_counter()
docs = [f.read_text(encoding="utf-8") for f in files]
ids = enc.encode_ordinary_batch(docs, num_threads=os.cpu_count() or 1)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "bytes": sum(len(d.encode()) for d in docs), "tokens": sum(map(len, ids))}))
"""


def paragraphs() -> list[str]:
    """Paragraphs of local text: tinyshakespeare (if present) and the stdlib's .py files."""
    out: list[str] = []
    if SHAKESPEARE.is_file():
        out += [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:400]:
        try:
            out += [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        except (UnicodeDecodeError, OSError):
            continue
    return out


def make_corpus(folder: Path, total_bytes: int, seed: int = 0) -> list[Path]:
    """Shuffled repeats of the paragraphs, in files of FILE_BYTES, `total_bytes` in all."""
    paras = paragraphs()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, written = [], 0
    while written < total_bytes:
        rng.shuffle(paras)
        chunk, size = [], 0
        for p in paras:
            chunk.append(p)
            size += len(p.encode("utf-8")) + 2
            if size >= min(FILE_BYTES, total_bytes - written):
                break
        path = folder / f"part-{len(files):04d}.txt"
        path.write_text("\n\n".join(chunk) + "\n", encoding="utf-8")
        files.append(path)
        written += path.stat().st_size
    return files


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of a subprocess; the RSS is that process's own."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv[:6])} failed:\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read()


def bench_bpe(corpus: Path, files: list[Path], vocab: int, work: Path) -> dict[str, Any]:
    out_dir = work / f"bpe-{vocab}"
    ours = [sys.executable, "-m", "gptbench", "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", str(vocab),
            "--out", str(out_dir), "--force"]
    hf = [sys.executable, "-c", HF_TRAIN, *map(str, files), str(vocab)]
    hf_s, hf_rss, _ = timed(hf)
    ours_s, ours_rss, printed = timed(ours)
    return {"vocab": vocab, "gptbench_s": ours_s, "hf_s": hf_s, "ratio": ours_s / hf_s, "gptbench_peak_rss_mb": ours_rss,
            "hf_peak_rss_mb": hf_rss, "gptbench_printed": printed.strip().splitlines()[0], "target_ratio": 1.0,
            "tokenizer": str(out_dir)}


def bench_cache(corpus: Path, tokenizer_dir: str, work: Path) -> dict[str, Any]:
    spec = f"bpe:{tokenizer_dir}"
    ref_s, ref_rss, ref_out = timed([sys.executable, "-c", TIKTOKEN_BATCH, str(corpus), spec])
    ours_s, ours_rss, ours_out = timed([sys.executable, "-c", CACHE_BUILD, str(corpus), spec, str(work / "cache")])
    ref, ours = json.loads(ref_out), json.loads(ours_out)
    if ref["tokens"] > ours["tokens"] or ours["tokens"] > ref["tokens"] + len(list(corpus.iterdir())):
        raise RuntimeError(f"token counts differ: cache {ours['tokens']}, tiktoken {ref['tokens']} (+1 separator a file)")
    ours_mbs, ref_mbs = ours["bytes"] / 1e6 / ours_s, ref["bytes"] / 1e6 / ref["seconds"]
    return {"mb": ours["bytes"] / 1e6, "gptbench_mb_s": ours_mbs, "gptbench_s_incl_startup": ours_s,
            "gptbench_s_in_process": ours["seconds"], "tiktoken_mb_s": ref_mbs, "ratio": ours_mbs / ref_mbs,
            "ratio_in_process": (ours["bytes"] / ours["seconds"]) / (ref["bytes"] / ref["seconds"]),
            "gptbench_peak_rss_mb": ours_rss, "tiktoken_peak_rss_mb": ref_rss, "threads": os.cpu_count(), "target_ratio": 0.8}


def bench_loader(work: Path, quick: bool) -> dict[str, Any]:
    """get_batch from a sparse memmap larger than RAM vs one forward+backward at that shape."""
    import numpy as np
    import torch

    from gptbench.data import get_batch
    from gptbench.data.batches import open_tokens

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    path = work / "tokens.bin"
    with open(path, "wb") as f:
        f.truncate(2 * ram)  # a sparse file: no disk used, but reads go through the page cache like a real shard
    data = open_tokens(path, np.dtype(np.uint16), (2 * ram) // 2)  # as the token cache opens its files
    rng = np.random.default_rng(0)

    def loader_ms(batch: int, block: int, reps: int = 50) -> float:
        get_batch(data, batch, block, rng)
        t0 = time.perf_counter()
        for _ in range(reps):
            x, y = get_batch(data, batch, block, rng)
            torch.from_numpy(x), torch.from_numpy(y)
        return 1000 * (time.perf_counter() - t0) / reps

    # the step is timed at batch 1 (a 124M step at 12 x 1024 takes minutes on a small CPU); the
    # loader too, so the share is like for like; the 12 x 1024 loader time is printed for GPUs
    step_ms, layers = model_step_ms(1, 1024, 1 if quick else 12)
    one = loader_ms(1, 1024)
    return {"file_gb": 2 * ram / 1e9, "ram_gb": ram / 1e9, "batch": 1, "block": 1024, "loader_ms": one,
            "loader_ms_12x1024": loader_ms(12, 1024), "step_ms": step_ms, "n_layer": layers, "fraction": one / step_ms,
            "target_fraction": 0.01}


def model_step_ms(batch: int, block: int, n_layer: int) -> tuple[float, int]:
    """One forward+backward of the gptbench torch GPT at the 124M width (`n_layer` layers)."""
    import torch
    import torch.nn.functional as F

    from gptbench.backends.spec import GPTConfig
    from gptbench.backends.torch.model import GPT

    cfg = GPTConfig(vocab_size=50304, block_size=block, n_layer=n_layer, n_head=12, n_embd=768, dropout=0.0, bias=False)
    model = GPT(cfg)
    x = torch.randint(0, 50304, (batch, block))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times), n_layer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 MB, vocab 2,048, a 1-layer step: the same paths in < 1 minute")
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB (default 120; --quick 5)")
    ap.add_argument("--vocab", type=int, nargs="+", default=None, help="BPE vocabulary sizes (default 8192 32768; --quick 2048)")
    ap.add_argument("--out", type=Path, default=RESULTS / "tokenizer_scale.json")
    args = ap.parse_args(argv)
    mb = args.mb or (5.0 if args.quick else 120.0)
    vocabs = args.vocab or ([2048] if args.quick else [8192, 32768])
    out: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="gptbench-tok-scale-") as tmp:
        work = Path(tmp)
        os.environ["GPTBENCH_CACHE_DIR"] = str(work / "cache")
        corpus = work / "corpus"
        files = make_corpus(corpus, int(mb * 1e6))
        out["corpus_mb"] = sum(f.stat().st_size for f in files) / 1e6
        print(f"corpus: {out['corpus_mb']:.1f} MB in {len(files)} files", flush=True)
        out["bpe"] = []
        for vocab in vocabs:
            print(f"BPE training, vocab {vocab} ...", flush=True)
            out["bpe"].append(bench_bpe(corpus, files, vocab, work))
        print("token cache ...", flush=True)
        out["cache"] = bench_cache(corpus, out["bpe"][-1]["tokenizer"], work)
        print("data loader ...", flush=True)
        out["loader"] = bench_loader(work, args.quick)
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    print_table(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def print_table(out: dict[str, Any]) -> None:
    print(f"\n{'benchmark':<52} {'result':>14} {'target':>10}")
    for b in out["bpe"]:
        label = f"BPE train {b['vocab']:,}: gptbench / HF time"
        print(f"{label:<52} {b['ratio']:>13.2f}x {'<= 1.0x':>10}")
        print(f"{'  seconds (gptbench, HF)':<52} {b['gptbench_s']:>7.1f} / {b['hf_s']:.1f} {'':>10}")
        print(f"{'  peak RSS MB (gptbench, HF)':<52} {b['gptbench_peak_rss_mb']:>7.0f} / {b['hf_peak_rss_mb']:.0f} {'':>10}")
    c = out["cache"]
    print(f"{'token cache: gptbench / tiktoken batch MB/s':<52} {c['ratio']:>13.2f}x {'>= 0.8x':>10}")
    print(f"{'  MB/s (gptbench, tiktoken), all cores':<52} {c['gptbench_mb_s']:>7.1f} / {c['tiktoken_mb_s']:.1f} {'':>10}")
    print(f"{'  in-process ratio (no interpreter start-up)':<52} {c['ratio_in_process']:>13.2f}x {'':>10}")
    print(f"{'  peak RSS MB (cache build, tiktoken; corpus MB)':<52} {c['gptbench_peak_rss_mb']:>7.0f} / {c['tiktoken_peak_rss_mb']:.0f}; {c['mb']:.0f}")
    d = out["loader"]
    label = f"loader / step time ({d['batch']}x{d['block']}, {d['n_layer']} layers)"
    print(f"{label:<52} {100 * d['fraction']:>12.3f}% {'< 1%':>10}")
    print(f"{'  ms (get_batch from a sparse memmap 2x RAM; step)':<52} {d['loader_ms']:>7.2f} / {d['step_ms']:.0f} {'':>10}")
    print(f"{'  get_batch ms at 12 x 1024 (for a GPU step)':<52} {d['loader_ms_12x1024']:>13.2f} {'':>10}")


if __name__ == "__main__":
    raise SystemExit(main())
