"""llama.cpp runs gptbench's GGUF export: its greedy tokens against gptbench's, f32 and q8_0.

A model (random weights on a GPT-2 shape with GPT-2's tokenizer, scaled up so greedy
continuations are far from ties, or `--run NAME`) is exported with
`gptbench convert --to gguf` in f32 and q8_0, loaded by llama.cpp through
`llama-cpp-python`, and for each prompt:

* llama.cpp's tokenization of the prompt must equal gptbench's;
* f32: llama.cpp's greedy tokens must equal `gptbench sample --temperature 0`'s;
* q8_0: the share of greedy tokens that agree (up to the first difference and overall).

    pip install llama-cpp-python      # builds llama.cpp from source where no wheel exists
    python benchmarks/gguf_check.py                  # tiny shape (quick)
    python benchmarks/gguf_check.py --shape gpt2     # 124M shape
    python benchmarks/gguf_check.py --run baby --runs-dir runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURE_RANKS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gpt2.tiktoken"
SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768), "tiny": dict(n_layer=2, n_head=4, n_embd=64)}
PROMPTS = ["ROMEO: But soft, what light", "The quick brown fox", "It's 2024; naïve café", "\n\nOnce upon a time"]


def random_run(tmp: Path, shape: str) -> tuple[Path, str]:
    from gptbench.backends.spec import GPTConfig
    from gptbench.backends.weights import save_weights
    from gptbench.cli import main

    cfg = GPTConfig(vocab_size=50257, block_size=256, bias=True, tie_embeddings=True, **SHAPES[shape])
    rng = np.random.default_rng(0)
    tensors = {}
    for k, s in cfg.canonical_shapes().items():
        if len(s) >= 2:
            tensors[k] = (rng.standard_normal(s) * 0.02 * 8).astype(np.float32)  # x8: far from ties
        elif k.endswith("weight"):
            tensors[k] = (1 + 0.1 * rng.standard_normal(s)).astype(np.float32)
        else:
            tensors[k] = (0.1 * rng.standard_normal(s)).astype(np.float32)
    save_weights(tmp / "w.safetensors", cfg, tensors)
    tok = f"gpt2:{FIXTURE_RANKS}" if FIXTURE_RANKS.exists() else "gpt2"
    runs = tmp / "runs"
    assert main(["--runs-dir", str(runs), "convert", str(tmp / "w.safetensors"), "check", "--to", "torch", "--tokenizer", tok]) == 0
    return runs, "check"


def llama_greedy(llm, prompt_ids: list[int], n: int) -> list[int]:
    out = []
    for tok in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out


def agreement(a: list[int], b: list[int]) -> tuple[int, float]:
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return prefix, sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--run", default=None, help="check this run instead of random weights")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        print("gguf_check: llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 2
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.cli import main as cli
    from gptbench.fsutil import atomic_write_json
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs, run = (Path(args.runs_dir), args.run) if args.run else random_run(tmp, args.shape)
        ours = load_model(RunStore(runs), run=run, backend="torch", device="cpu")
        rows = []
        for q in ("f32", "q8_0"):
            path = tmp / f"{q}.gguf"
            assert cli(["--runs-dir", str(runs), "convert", run, str(path), "--to", "gguf", "--dtype", q]) == 0
            llm = Llama(model_path=str(path), n_ctx=ours.backend.config.block_size, verbose=False)
            for prompt in PROMPTS:
                ids = ours.tokenizer.encode(prompt)
                theirs_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
                want = generate(ours.backend, ours.tokenizer, ids, SamplingParams(temperature=0, max_new_tokens=args.tokens)).tokens
                got = llama_greedy(llm, ids, len(want))
                prefix, share = agreement(want, got)
                rows.append({"type": q, "prompt": prompt, "tokenization_equal": list(theirs_ids) == ids, "tokens": len(want),
                             "equal": got == want, "agree_prefix": prefix, "agree_share": round(share, 3)})
            del llm
    print(f"{'type':5} {'tokenize':>8} {'equal':>6} {'prefix':>6} {'share':>6}  prompt")
    for r in rows:
        print(f"{r['type']:5} {str(r['tokenization_equal']):>8} {str(r['equal']):>6} {r['agree_prefix']:>6} {r['agree_share']:>6}  {r['prompt']!r}")
    f32_ok = all(r["equal"] and r["tokenization_equal"] for r in rows if r["type"] == "f32")
    q8 = [r["agree_share"] for r in rows if r["type"] == "q8_0"]
    print(f"f32: llama.cpp's greedy tokens {'equal' if f32_ok else 'DIFFER FROM'} gptbench's; q8_0 agrees on {np.mean(q8):.0%} of tokens")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "gguf_check.json", {"shape": args.run or args.shape, "rows": rows, "f32_equal": f32_ok})
    return 0 if f32_ok else 1


if __name__ == "__main__":
    sys.exit(main())
