"""Generation speed on CPU: KV cache vs none, against Hugging Face, bandwidth, TTFT.

Everything is measured side by side in one process (the machine may be shared, so ratios
taken minutes apart would mean little), batch 1, float32, torch on CPU, default threads:

* decode tokens/s with and without the KV cache at 64..1024 new tokens, on the `gpt2`
  (124M) shape with random weights and on a `tiny` run trained here (or `--run NAME`);
* `transformers.GPT2LMHeadModel.generate` (greedy, `use_cache=True`) on identical weights
  (built locally from a `GPT2Config`, our Linear weights transposed into its Conv1D
  layout; nothing is downloaded), with a check that the tokens match ours;
* memory-bandwidth utilisation: cached tokens/s x weight bytes / copy bandwidth, the copy
  bandwidth measured here with a large array copy (read + write bytes, STREAM convention);
* time to first token for a 512-token prompt;
* the MLX backend against mlx-lm's decode loop on the same 124M weights (exported in the
  Hugging Face layout and loaded by mlx_lm), and the torch decode layout before/after.

Decode tokens/s counts tokens after the first over the time since the first (prefill
excluded); end-to-end tokens/s is all new tokens over the whole call. Ours and HF alternate
run by run. The cache speedup comes from cached and uncached generation advanced in
lockstep, one token each in turn, so both see the same load token for token. Without a
cache the cost grows with the context, so on the 124M shape that lockstep run has a time
budget (`--budget`): a cut-short run covers the first tokens only, whose contexts are the
shortest, so it *over*states no-cache speed and the reported speedup is a lower bound.

    python benchmarks/generate.py            # full (about an hour on 2 busy cores)
    python benchmarks/generate.py --quick    # a few minutes
    python benchmarks/generate.py --run baby --runs-dir runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gptbench.backends.registry import create_backend
from gptbench.backends.generate import generate_tokens
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.fsutil import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
GPT2_124M = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)
PROMPT_LEN = 8


# ---- measurements ----------------------------------------------------------------------
def copy_bandwidth(mib: int = 256, reps: int = 5) -> dict:
    """Best large-array copy rate (numpy and torch), counting read + write bytes."""
    n = mib * 2**20 // 4
    src, dst = np.ones(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    ts, td = torch.ones(n), torch.empty(n)
    best_np = best_t = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_np = min(best_np, time.perf_counter() - t0)
        t0 = time.perf_counter()
        td.copy_(ts)
        best_t = min(best_t, time.perf_counter() - t0)
    nbytes = 2 * n * 4
    return {"array_mib": mib, "numpy_gbps": nbytes / best_np / 1e9, "torch_gbps": nbytes / best_t / 1e9,
            "gbps": max(nbytes / best_np, nbytes / best_t) / 1e9}


def run_engine(backend, prompt: list[int], n: int, use_cache: bool) -> dict:
    """Greedy generation through the engine; returns tokens and timings."""
    params = SamplingParams(temperature=0.0, max_new_tokens=n)
    tokens: list[int] = []
    t0 = time.perf_counter()
    t_first = t0
    it = generate_tokens(backend, [prompt], params, use_cache=use_cache)
    for arr in it:
        tokens.append(int(arr[0]))
        if len(tokens) == 1:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    k = len(tokens)
    return {
        "tokens": tokens,
        "generated": k,
        "complete": k == n,
        "decode_tps": (k - 1) / (t_end - t_first) if k > 1 else 0.0,
        "e2e_tps": k / (t_end - t0),
        "ttft": t_first - t0,
        "seconds": t_end - t0,
    }


def run_lockstep(backend, prompt: list[int], n: int, budget: float | None = None) -> dict:
    """Cached and uncached greedy generation advanced in lockstep, one token each in turn,
    each step timed on its own: both see the same machine load, token for token."""
    params = SamplingParams(temperature=0.0, max_new_tokens=n)
    its = {True: generate_tokens(backend, [prompt], params, use_cache=True),
           False: generate_tokens(backend, [prompt], params, use_cache=False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[int]] = {True: [], False: []}
    t_start = time.perf_counter()
    for i in range(n):
        for use_cache in ((True, False) if i % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            tokens[use_cache].append(int(next(its[use_cache])[0]))
            times[use_cache].append(time.perf_counter() - t0)
        if budget is not None and time.perf_counter() - t_start > budget and i >= 1:
            break
    for it in its.values():
        it.close()
    k = len(times[True])
    tps = {c: (k - 1) / sum(times[c][1:]) if k > 1 else 0.0 for c in (True, False)}
    return {"generated": k, "complete": k == n, "cache_tps": tps[True], "nocache_tps": tps[False],
            "speedup": tps[True] / tps[False] if tps[False] else 0.0, "tokens_match": tokens[True] == tokens[False]}


def hf_model(config: GPTConfig, weights: dict[str, np.ndarray]):
    """GPT2LMHeadModel with our weights: Conv1D stores [in, out], our Linear [out, in]."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.norm != "layernorm" or config.mlp != "gelu" or not config.tie_embeddings:
        raise ValueError("only the GPT-2 architecture (layernorm, gelu, tied head) maps onto GPT2LMHeadModel")
    hf_cfg = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, activation_function="gelu_new", layer_norm_epsilon=config.norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(hf_cfg).eval()
    sd = {}
    for name, w in weights.items():
        t = torch.from_numpy(w)
        if name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc")):
            t = t.t().contiguous()
        sd[("" if name == "lm_head.weight" else "transformer.") + name] = t
    zero_bias = {k: torch.zeros_like(v) for k, v in model.state_dict().items() if k.endswith(".bias") and k not in sd and "attn.bias" not in k}
    missing, unexpected = model.load_state_dict({**sd, **zero_bias}, strict=False)
    missing = [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias")) and m != "lm_head.weight"]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def run_hf(model, prompt: list[int], n: int) -> dict:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    ids = torch.tensor([prompt])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            use_cache=True, pad_token_id=0, streamer=clock,
        )
    t_end = time.perf_counter()
    tokens = out[0, len(prompt):].tolist()
    t_first = clock.times[1]  # times[0] is the prompt
    return {
        "tokens": tokens,
        "decode_tps": (len(tokens) - 1) / (t_end - t_first),
        "e2e_tps": len(tokens) / (t_end - t0),
        "ttft": t_first - t0,
    }


def match_prefix(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


# ---- the benchmark -----------------------------------------------------------------------
def bench_model(label: str, backend, lengths: list[int], reps: int, budget: float | None, with_hf: bool, ttft_prompt: int) -> dict:
    cfg = backend.config
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, PROMPT_LEN).tolist()
    weight_bytes = sum(w.nbytes for w in backend.get_weights().values())
    hf = None
    if with_hf:
        hf = hf_model(cfg, backend.get_weights())
        ids = rng.integers(0, cfg.vocab_size, (1, 16))
        with torch.inference_mode():
            ref = hf(torch.from_numpy(ids)).logits.numpy()
        logits_diff = float(np.abs(ref - backend.forward_logits(ids)).max())
    run_engine(backend, prompt, 4, True)  # warm up
    if hf is not None:
        run_hf(hf, prompt, 4)
    rows = []
    for n in lengths:
        row: dict = {"new_tokens": n}
        hf_ok = hf is not None and PROMPT_LEN + n <= cfg.block_size  # HF cannot go past n_positions
        cached, hf_runs = [], []
        for _ in range(reps if n <= 256 else 1):  # alternate ours / HF: both see the same load
            cached.append(run_engine(backend, prompt, n, True))
            if hf_ok:
                hf_runs.append(run_hf(hf, prompt, n))
        lockstep = run_lockstep(backend, prompt, n, budget)
        med = lambda runs, key: statistics.median(r[key] for r in runs)
        row.update(
            cache_decode_tps=med(cached, "decode_tps"),
            cache_e2e_tps=med(cached, "e2e_tps"),
            nocache_decode_tps=lockstep["nocache_tps"],
            lockstep_cache_decode_tps=lockstep["cache_tps"],
            speedup=lockstep["speedup"],
            nocache_generated=lockstep["generated"],
            nocache_complete=lockstep["complete"],
            nocache_tokens_match=lockstep["tokens_match"],
        )
        if hf_ok:
            row.update(hf_decode_tps=med(hf_runs, "decode_tps"), hf_e2e_tps=med(hf_runs, "e2e_tps"))
            row["vs_hf_decode"] = statistics.median(c["decode_tps"] / h["decode_tps"] for c, h in zip(cached, hf_runs))
            row["vs_hf_e2e"] = statistics.median(c["e2e_tps"] / h["e2e_tps"] for c, h in zip(cached, hf_runs))
            row["hf_tokens_match_prefix"] = match_prefix(cached[0]["tokens"], hf_runs[0]["tokens"])
        row["bandwidth_gbps"] = row["cache_decode_tps"] * weight_bytes / 1e9
        rows.append(row)
        print_row(label, row)
    out = {"model": label, "config": cfg.to_dict(), "params": cfg.num_params(), "weight_bytes": weight_bytes, "rows": rows}
    if hf is not None:
        out["hf_max_logit_diff"] = logits_diff
    if ttft_prompt and ttft_prompt <= cfg.block_size:
        long_prompt = rng.integers(0, cfg.vocab_size, ttft_prompt).tolist()
        ours = [run_engine(backend, long_prompt, 1, True)["ttft"] for _ in range(max(reps, 1))]
        out["ttft"] = {"prompt_tokens": ttft_prompt, "seconds": statistics.median(ours)}
        if hf is not None:
            out["ttft"]["hf_seconds"] = statistics.median(run_hf(hf, long_prompt, 1)["ttft"] for _ in range(max(reps, 1)))
    return out


def layout_ab(config: GPTConfig, n: int, reps: int) -> dict:
    """Before/after of the CPU decode layout: a generating torch backend prepacks its Linear
    and head weights for oneDNN (column-major where it cannot); `_decode_layout = True` up
    front keeps plain row-major weights (the layout before that change). Interleaved with
    HF, same weights, greedy."""
    new = create_backend(config, "torch", device="cpu", seed=0)
    old = create_backend(config, "torch", device="cpu", seed=0)
    old._decode_layout = True  # skip the conversion: plain row-major, the "before"
    hf = hf_model(config, new.get_weights())
    prompt = list(range(1, PROMPT_LEN + 1))
    for be in (new, old):
        run_engine(be, prompt, 4, True)
    run_hf(hf, prompt, 4)
    runs = []
    for _ in range(reps):
        a, b, c = run_engine(new, prompt, n, True), run_engine(old, prompt, n, True), run_hf(hf, prompt, n)
        runs.append((a["decode_tps"], b["decode_tps"], c["decode_tps"]))
        print(f"  layout A/B {n} tok: prepacked {a['decode_tps']:.1f}, row-major {b['decode_tps']:.1f}, HF {c['decode_tps']:.1f} tok/s", flush=True)
    med = lambda i: statistics.median(r[i] for r in runs)
    return {"new_tokens": n, "runs": runs, "prepacked_tps": med(0), "row_major_tps": med(1), "hf_tps": med(2),
            "after_vs_before": statistics.median(r[0] / r[1] for r in runs),
            "before_vs_hf": statistics.median(r[1] / r[2] for r in runs), "after_vs_hf": statistics.median(r[0] / r[2] for r in runs)}


def mlx_vs_mlx_lm(config: GPTConfig, lengths: list[int], reps: int) -> dict:
    """Our MLX backend against mlx-lm's own decode loop (`generate_step`, the engine under
    `mlx_lm.generate`, greedy) on identical weights: ours exported in the Hugging Face
    layout (what `gptbench convert --to mlx-lm` writes) and loaded by `mlx_lm`'s loader.
    Alternating run by run; tokens compared."""
    import mlx.core as mx
    from gptbench.backends.hf import config_to_hf, to_hf
    from gptbench.backends.weights import save_tensors
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    ours = create_backend(config, "mlx", device="cpu", seed=0)
    with tempfile.TemporaryDirectory(prefix="gptbench-mlxlm-") as tmp:
        folder = Path(tmp)
        save_tensors(folder / "model.safetensors", to_hf(config, ours.get_weights()), {"format": "pt"}, dtype="float32")
        atomic_write_json(folder / "config.json", config_to_hf(config, "float32", None))
        theirs, _ = load_model(folder)
        mx.eval(theirs.parameters())  # loaded lazily: read the file before it goes
    prompt = list(range(1, PROMPT_LEN + 1))

    def run_mlx_lm(n: int) -> dict:
        tokens: list[int] = []
        t0 = time.perf_counter()
        t_first = t0
        for tok, _ in generate_step(mx.array(prompt), theirs, max_tokens=n):
            tokens.append(int(tok))
            if len(tokens) == 1:
                t_first = time.perf_counter()
        t_end = time.perf_counter()
        k = len(tokens)
        return {"tokens": tokens, "decode_tps": (k - 1) / (t_end - t_first) if k > 1 else 0.0, "e2e_tps": k / (t_end - t0)}

    run_engine(ours, prompt, 4, True)
    run_mlx_lm(4)
    rows = []
    for n in lengths:
        pairs = [(run_engine(ours, prompt, n, True), run_mlx_lm(n)) for _ in range(reps)]
        row = {"new_tokens": n, "decode_tps": statistics.median(a["decode_tps"] for a, _ in pairs),
               "mlx_lm_decode_tps": statistics.median(b["decode_tps"] for _, b in pairs),
               "vs_mlx_lm_decode": statistics.median(a["decode_tps"] / b["decode_tps"] for a, b in pairs),
               "vs_mlx_lm_e2e": statistics.median(a["e2e_tps"] / b["e2e_tps"] for a, b in pairs),
               "tokens_match_prefix": match_prefix(pairs[0][0]["tokens"], pairs[0][1]["tokens"])}
        print(f"  mlx {n:5d} new: ours {row['decode_tps']:.1f} tok/s, mlx_lm {row['mlx_lm_decode_tps']:.1f} tok/s "
              f"= x{row['vs_mlx_lm_decode']:.2f} (e2e x{row['vs_mlx_lm_e2e']:.2f}), tokens match {row['tokens_match_prefix']}/{n}", flush=True)
        rows.append(row)
    return {"config": config.to_dict(), "rows": rows}


def print_row(label: str, r: dict) -> None:
    cut = "" if r["nocache_complete"] else f" (first {r['nocache_generated']} tok)"
    nc = f"{r['lockstep_cache_decode_tps']:.1f} vs {r['nocache_decode_tps']:.1f}{cut}"
    hf = ""
    if "hf_decode_tps" in r:
        hf = f" | HF {r['hf_decode_tps']:7.1f} tok/s  x{r['vs_hf_decode']:.2f} (e2e x{r['vs_hf_e2e']:.2f}) match {r['hf_tokens_match_prefix']}/{r['new_tokens']}"
    print(f"{label:>12} {r['new_tokens']:5d} | cache {r['cache_decode_tps']:8.1f} tok/s | lockstep cache vs none {nc:<26} x{r['speedup']:6.1f}{hf}", flush=True)


def tiny_backend(args) -> tuple[str, object]:
    """A trained `tiny` run: `--run NAME`, or trained here on a small corpus."""
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    if args.run:
        lm = load_model(RunStore(args.runs_dir), run=args.run, backend="torch", device="cpu")
        return f"run {lm.source}", lm.backend
    from gptbench.spec import resolve_spec
    from gptbench.spec.resolve import spec_settings
    from gptbench.training import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="gptbench-bench-"))
    corpus = SHARED_CORPUS if SHARED_CORPUS.is_file() else None
    if corpus is None:
        corpus = tmp / "corpus.txt"
        corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(3000)))
    iters = 50 if args.quick else 200
    cfg = resolve_spec("tiny", None, spec_settings(
        train={"max_iters": iters, "eval_interval": iters, "eval_iters": 5, "sample_tokens": 0},
        data=str(corpus), tokenizer="char", backend="torch", device="cpu", name="bench-tiny",
    ))
    t0 = time.perf_counter()
    trainer = Trainer.new_run(RunStore(tmp / "runs"), cfg)
    trainer.fit()
    print(f"trained tiny ({iters} iters on {corpus.name}) in {time.perf_counter() - t0:.0f}s", flush=True)
    lm = load_model(RunStore(tmp / "runs"), run="bench-tiny", backend="torch", device="cpu")
    return f"tiny ({iters} it)", lm.backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter lengths, one repetition, 50-iter tiny run")
    ap.add_argument("--lengths", default=None, help="comma-separated new-token counts (default 64,128,256,512,1024)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of the cached / HF runs up to 256 tokens (median; default 3, quick 1)")
    ap.add_argument("--budget", type=float, default=None, help="seconds per no-cache run on the 124M shape (default 600, quick 30)")
    ap.add_argument("--run", default=None, help="use this trained run instead of training a tiny one")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--no-mlx", action="store_true", help="skip the MLX vs mlx_lm comparison")
    ap.add_argument("--skip-124m", action="store_true", help="skip the gpt2 (124M) shape")
    ap.add_argument("--skip-tiny", action="store_true", help="skip the trained tiny run")
    ap.add_argument("--output", default=str(RESULTS / "generate.json"), help="JSON results file")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else ([64, 256] if args.quick else [64, 128, 256, 512, 1024])
    reps = args.reps or (1 if args.quick else 3)
    budget = args.budget if args.budget is not None else (30.0 if args.quick else 600.0)

    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; copy bandwidth {bw['gbps']:.1f} GB/s "
          f"(numpy {bw['numpy_gbps']:.1f}, torch {bw['torch_gbps']:.1f}; read+write bytes)", flush=True)
    results: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
                     "copy_bandwidth": bw, "lengths": lengths, "reps": reps, "models": []}
    if not args.skip_124m:
        be = create_backend(GPT2_124M, "torch", device="cpu", seed=0)
        m = bench_model("gpt2-124M", be, lengths, reps, budget, not args.no_hf, 512)
        results["models"].append(m)
        del be
        if not args.no_hf and not args.quick:
            results["layout_ab"] = layout_ab(GPT2_124M, 256, reps)
        if not args.no_mlx:
            results["mlx_vs_mlx_lm"] = mlx_vs_mlx_lm(GPT2_124M, [n for n in lengths if n <= 256], reps)
    if not args.skip_tiny:
        label, be = tiny_backend(args)
        results["models"].append(bench_model(label, be, lengths, reps, None, False, 0))
    bw_now = copy_bandwidth()  # again at the end: the machine's load may have changed
    results["copy_bandwidth_end"] = bw_now

    print("\nsummary")
    for m in results["models"]:
        print(f"  {m['model']}: {m['params'] / 1e6:.1f}M params, {m['weight_bytes'] / 2**20:.0f} MiB of weights")
        for r in m["rows"]:
            util = r["bandwidth_gbps"] / bw["gbps"]
            r["bandwidth_utilisation"] = util
            extra = f", vs HF x{r['vs_hf_decode']:.2f} decode / x{r['vs_hf_e2e']:.2f} e2e" if "vs_hf_decode" in r else ""
            print(f"    {r['new_tokens']:5d} new: cache {r['cache_decode_tps']:.1f} tok/s, x{r['speedup']:.1f} vs no cache"
                  f"{'' if r['nocache_complete'] else ' (no-cache cut short: lower bound)'}{extra}, "
                  f"weights streamed at {r['bandwidth_gbps']:.1f} GB/s = {100 * util:.0f}% of copy bandwidth")
        if "ttft" in m:
            t = m["ttft"]
            hf = f" (HF {t['hf_seconds'] * 1000:.0f} ms)" if "hf_seconds" in t else ""
            print(f"    time to first token, {t['prompt_tokens']}-token prompt: {t['seconds'] * 1000:.0f} ms{hf}")
        if "hf_max_logit_diff" in m:
            print(f"    max |logit(ours) - logit(HF)| = {m['hf_max_logit_diff']:.2e}")
    path = Path(args.output)
    atomic_write_json(path, results)
    if "layout_ab" in results:
        ab = results["layout_ab"]
        print(f"  decode layout (256 tokens, median of {len(ab['runs'])}): prepacked {ab['prepacked_tps']:.1f} vs row-major "
              f"{ab['row_major_tps']:.1f} tok/s = x{ab['after_vs_before']:.2f}; vs HF before x{ab['before_vs_hf']:.2f}, after x{ab['after_vs_hf']:.2f}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
