"""llama.cpp runs gptbench's GGUF export: its greedy tokens against gptbench's, f32 and q8_0.

A model (random weights on a GPT-2 shape with GPT-2's tokenizer, scaled up so greedy
continuations are far from ties, or `--run NAME`) is exported with
`gptbench convert --to gguf` in f32 and q8_0, loaded by llama.cpp through
`llama-cpp-python`, and for each prompt:

* llama.cpp's tokenization of the prompt must equal gptbench's;
* f32: llama.cpp's greedy tokens must equal `gptbench sample --temperature 0`'s;
* a chat model (turn tokens): its template text tokenizes to the same ids, `<|end|>` is
  llama.cpp's end-of-turn token, and greedy tokens are equal;
* q8_0: at how many positions llama.cpp's top pick is gptbench's greedy token when it is fed
  gptbench's own continuation (teacher forcing; "most tokens", >= 50%, passes), and beside
  it the free-running agreement (up to the first difference and overall), which one early
  near-tie sends apart for the rest of the text.

Exit code 0 when both hold, 1 otherwise, 2 without llama-cpp-python.

llama.cpp runs on its plain CPU buffers by default: `--extra-bufts` lets it repack weights
into its extra buffer types (AMX/AVX-512 layouts where it was built for them). A wheel built
with `GGML_NATIVE` on an AMX machine dies with SIGILL on q8_0 there when the kernel does not
grant AMX tiles to the process, which is why that is not the default.

    pip install llama-cpp-python      # builds llama.cpp from source where no wheel exists
    python benchmarks/gguf_check.py                  # 124M shape, 48 tokens per prompt
    python benchmarks/gguf_check.py --quick          # tiny shape, 16 tokens (smoke)
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
    # Larger than GPT-2's 0.02 so greedy picks are far from ties; x8 on the 12-layer shape makes
    # a chaotic network whose q8_0 logits drift past the export's bfloat16-level check.
    scale = 8 if cfg.n_layer <= 4 else 3
    tensors = {}
    for k, s in cfg.canonical_shapes().items():
        if len(s) >= 2:
            tensors[k] = (rng.standard_normal(s) * 0.02 * scale).astype(np.float32)
        elif k.endswith("weight"):
            tensors[k] = (1 + 0.1 * rng.standard_normal(s)).astype(np.float32)
        else:
            tensors[k] = (0.1 * rng.standard_normal(s)).astype(np.float32)
    save_weights(tmp / "w.safetensors", cfg, tensors)
    tok = f"gpt2:{FIXTURE_RANKS}" if FIXTURE_RANKS.exists() else "gpt2"
    runs = tmp / "runs"
    assert main(["--runs-dir", str(runs), "convert", str(tmp / "w.safetensors"), "check", "--to", "torch", "--tokenizer", tok]) == 0
    return runs, "check"


def open_llama(path: Path, n_ctx: int, extra_bufts: bool):
    """llama.cpp on `path`; without `extra_bufts`, weights stay in its plain CPU buffers."""
    import llama_cpp.llama as llama_module
    from llama_cpp import Llama

    defaults = llama_module.llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = extra_bufts
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, logits_all=True)
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults


def llama_greedy(llm, prompt_ids: list[int], n: int) -> list[int]:
    out = []
    for tok in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out


def forced_top1(llm, prompt_ids: list[int], want: list[int]) -> float:
    """Share of gptbench's greedy tokens that are also llama.cpp's top pick when llama.cpp is
    fed gptbench's own continuation (teacher forcing): one early disagreement in a free run
    sends the two texts apart for good, so this is the per-token agreement of the weights."""
    llm.reset()
    llm.eval(prompt_ids + want[:-1])
    picks = np.asarray(llm.scores[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(want)]).argmax(axis=-1)
    return float(np.mean(picks == np.asarray(want)))


def agreement(a: list[int], b: list[int]) -> tuple[int, float]:
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return prefix, sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def compare(ours, llm, q: str, tokens: int) -> list[dict]:
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams

    rows = []
    for prompt in PROMPTS:
        ids = ours.tokenizer.encode(prompt)
        theirs_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
        want = generate(ours.backend, ours.tokenizer, ids, SamplingParams(temperature=0, max_new_tokens=tokens)).tokens
        got = llama_greedy(llm, ids, len(want))
        prefix, share = agreement(want, got)
        rows.append({"type": q, "prompt": prompt, "tokenization_equal": list(theirs_ids) == ids, "tokens": len(want),
                     "equal": got == want, "agree_prefix": prefix, "agree_share": round(share, 3),
                     "forced_top1": round(forced_top1(llm, ids, want), 3)})
    return rows


def chat_check(tmp: Path, extra_bufts: bool, tokens: int) -> dict:
    """A chat model (random weights, byte vocabulary plus the four turn tokens): llama.cpp
    reads the turn tokens from the prompt's text as gptbench's template ids, calls `<|end|>`
    its end-of-turn token, and greedy-decodes the answer to a chat prompt as gptbench does."""
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.backends.spec import GPTConfig
    from gptbench.backends.weights import save_weights
    from gptbench.cli import main as cli
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore
    from gptbench.tokenizers.byte import ByteTokenizer
    from gptbench.tokenizers.chat import ChatTokenizer, Message

    tok = ChatTokenizer(ByteTokenizer())
    (tmp / "chat-tok").mkdir()
    tok.save(tmp / "chat-tok")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=256, bias=True, tie_embeddings=True, **SHAPES["tiny"])
    rng = np.random.default_rng(1)
    save_weights(tmp / "chat.safetensors", cfg, {k: (rng.standard_normal(s) * 0.3).astype(np.float32)
                                                 for k, s in cfg.canonical_shapes().items()})
    runs = tmp / "chat-runs"
    assert cli(["--runs-dir", str(runs), "convert", str(tmp / "chat.safetensors"), "chat", "--to", "torch", "--tokenizer",
                str(tmp / "chat-tok")]) == 0
    assert cli(["--runs-dir", str(runs), "convert", "chat", str(tmp / "chat.gguf"), "--to", "gguf"]) == 0
    ours = load_model(RunStore(runs), run="chat", backend="torch", device="cpu")
    conv = [Message("system", "Be brief."), Message("user", "Hello there")]
    ids = ours.tokenizer.prompt_ids(conv)
    text = "".join(f"<|{m.role}|>{m.content}<|end|>" for m in conv) + "<|assistant|>"
    want = generate(ours.backend, ours.tokenizer, ids, SamplingParams(temperature=0, max_new_tokens=tokens)).tokens
    llm = open_llama(tmp / "chat.gguf", 256, extra_bufts)
    try:
        theirs = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        return {"tokenization_equal": theirs == ids, "end_of_turn": int(llm._model.token_eot()) == tok.end_id,
                "equal": llama_greedy(llm, ids, len(want)) == want, "tokens": len(want)}
    finally:
        llm.close()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shape, 16 tokens per prompt")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="random weights on this shape (default gpt2: 124M)")
    ap.add_argument("--run", default=None, help="check this run instead of random weights")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--tokens", type=int, default=None, help="greedy tokens per prompt (default 48; quick 16)")
    ap.add_argument("--extra-bufts", action="store_true", help="let llama.cpp repack weights (AMX/AVX-512 buffers)")
    args = ap.parse_args()
    args.shape = args.shape or ("tiny" if args.quick else "gpt2")
    args.tokens = args.tokens or (16 if args.quick else 48)
    return args


def main() -> int:
    args = parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("gguf_check: llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 2
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
            llm = open_llama(path, ours.backend.config.block_size, args.extra_bufts)
            try:
                rows += compare(ours, llm, q, args.tokens)
            finally:
                llm.close()
        chat = chat_check(tmp, args.extra_bufts, args.tokens)
    print(f"{'type':5} {'tokenize':>8} {'equal':>6} {'prefix':>6} {'share':>6} {'forced':>6}  prompt")
    for r in rows:
        print(f"{r['type']:5} {str(r['tokenization_equal']):>8} {str(r['equal']):>6} {r['agree_prefix']:>6} {r['agree_share']:>6} "
              f"{r['forced_top1']:>6}  {r['prompt']!r}")
    print(f"chat model (turn tokens, f32): tokenization of the template {chat['tokenization_equal']}, <|end|> is llama.cpp's "
          f"end-of-turn {chat['end_of_turn']}, greedy tokens equal {chat['equal']} ({chat['tokens']} tokens)")
    f32_ok = all(r["equal"] and r["tokenization_equal"] for r in rows if r["type"] == "f32") and all(chat.values())
    q8 = float(np.mean([r["forced_top1"] for r in rows if r["type"] == "q8_0"]))
    q8_free = float(np.mean([r["agree_share"] for r in rows if r["type"] == "q8_0"]))
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {args.run or args.shape}, {args.tokens} greedy tokens per prompt: "
          f"f32 {'EQUAL to' if f32_ok else 'DIFFERS FROM'} gptbench's tokens; q8_0's top pick is gptbench's greedy token "
          f"at {q8:.0%} of positions, fed gptbench's text ({'most' if q8 >= 0.5 else 'NOT most'}; "
          f"free-running, {q8_free:.0%} of positions match)")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / ("gguf_check-quick.json" if args.quick else "gguf_check.json"),
                      {"shape": args.run or args.shape, "tokens": args.tokens, "rows": rows, "f32_equal": f32_ok, "q8_0_forced_top1": q8, "q8_0_free_share": q8_free, "chat": chat})
    return 0 if f32_ok and q8 >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
