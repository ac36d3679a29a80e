"""Serving throughput: aggregate tokens/s and time to first token at 1, 4 and 16 concurrent clients.

Everything runs side by side in one process on the same weights (random, on the `gpt2` 124M
shape by default; `--shape tiny` for a quick look), torch on CPU:

* `gptbench serve` with continuous batching (`--max-batch 16`) at 1, 4 and 16 concurrent
  streaming clients: aggregate completion tokens/s over the wall time, and time to first
  token (p50, p95) per request;
* sequential serving (the same server with `max_batch=1`: requests wait their turn) at the
  same loads, the baseline continuous batching is measured against;
* `mlx_lm.server` (dev extra `mlx-lm`; `--no-mlx-lm` skips it) on the same weights exported
  by `convert --to mlx-lm`, on 127.0.0.1 and a free port, decoding up to 16 requests
  together, at the same loads (both on CPU here);
* a bounded load run (`--load-requests`, default 2000, 32 concurrent, `--load-max-tokens` 4):
  errors (must be 0) and this process's resident memory (server and clients) at the start,
  after the first tenth (warm) and at the end (flat: end ≈ warm).

Target: 16 clients ≥ 4× the aggregate tokens/s of 1 client at the 124M shape.

    python benchmarks/serve.py                     # full: 124M shape, 32 tokens a request (about 8 min on 2 cores)
    python benchmarks/serve.py --quick             # a smoke run: tiny shape, few requests
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURE_RANKS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gpt2.tiktoken"
CLIENTS = (1, 4, 16)
LOAD_CLIENTS = 32
SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768), "tiny": dict(n_layer=2, n_head=2, n_embd=64)}


def build_run(tmp: Path, shape: str) -> Path:
    """A run of random weights with GPT-2's tokenizer (built locally; nothing downloaded)."""
    from gptbench.backends.spec import GPTConfig
    from gptbench.backends.weights import save_weights
    from gptbench.cli import main

    cfg = GPTConfig(vocab_size=50257, block_size=1024, bias=True, tie_embeddings=True, **SHAPES[shape])
    rng = np.random.default_rng(0)
    tensors = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in cfg.canonical_shapes().items()}
    save_weights(tmp / "w.safetensors", cfg, tensors)
    runs = tmp / "runs"
    tok = f"gpt2:{FIXTURE_RANKS}" if FIXTURE_RANKS.exists() else "gpt2"
    assert main(["--runs-dir", str(runs), "convert", str(tmp / "w.safetensors"), "bench", "--to", "torch", "--tokenizer", tok]) == 0
    return runs


def stream_one(http: httpx.Client, url: str, model: str | None, prompt: str, max_tokens: int) -> tuple[float, int, bool]:
    """(time to first token, completion tokens, ok) of one streamed completion. Tokens come
    from the last chunk's usage (`stream_options.include_usage`), or are the chunks that
    carried text where a server sends no usage."""
    t0 = time.perf_counter()
    ttft, n, chunks = None, None, 0
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if model is not None:  # mlx_lm.server reads `model` as a model to load: it gets none (its own)
        body["model"] = model
    try:
        with http.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return 0.0, 0, False
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                msg = json.loads(line[6:])
                if msg.get("choices") and msg["choices"][0].get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if msg.get("usage"):
                    n = msg["usage"]["completion_tokens"]
    except (httpx.HTTPError, ValueError):
        return 0.0, 0, False
    return ttft or 0.0, chunks if n is None else n, True


def load(url: str, model: str | None, clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `per_client` streamed completions back to back."""
    ttfts, tokens, errors = [], [0], [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as http:
            for j in range(per_client):
                ttft, n, ok = stream_one(http, url, model, f"Request {i}.{j}: once upon a time", max_tokens)
                with lock:
                    ttfts.append(ttft)
                    tokens[0] += n
                    errors[0] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = sorted(ttfts)
    return {"clients": clients, "requests": len(q), "tokens": tokens[0], "errors": errors[0], "seconds": round(wall, 3),
            "tokens_per_sec": round(tokens[0] / wall, 1), "ttft_p50": round(statistics.median(q), 4),
            "ttft_p95": round(q[min(len(q) - 1, int(0.95 * len(q)))], 4)}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def gptbench_server(runs: Path, max_batch: int):
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore
    from gptbench.serving.app import ServeState, create_app
    from gptbench.serving.scheduler import Scheduler
    from gptbench.serving.server import BackgroundServer

    m = load_model(RunStore(runs), run="bench", backend="torch", device="cpu", batch_size=max_batch)
    cfg = m.backend.config
    state = ServeState(Scheduler(m.backend, m.tokenizer, max_batch=max_batch, max_queue=4096), m.tokenizer, "bench",
                       cfg.block_size, cfg.vocab_size)
    return BackgroundServer(create_app(state)).start()


def warm_up(url: str, model: str | None) -> None:
    """A few untimed requests first (lazy allocations, first-call compilation), one and batched."""
    load(url, model, 1, 1, 4)
    load(url, model, 4, 1, 4)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlx_lm_server(runs: Path, tmp: Path, max_batch: int):
    """`mlx_lm.server` on the run exported with `convert --to mlx-lm` (a subprocess on
    127.0.0.1, a free port, decoding up to `max_batch` requests together as ours does)."""
    from gptbench.cli import main

    folder = tmp / "mlx-lm"
    if not folder.exists():
        assert main(["--runs-dir", str(runs), "convert", "bench", str(folder), "--to", "mlx-lm"]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--decode-concurrency", str(max_batch), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError("mlx_lm.server did not start")


def serving_rows(runs: Path, tmp: Path, args: argparse.Namespace, batched) -> list[dict]:
    """Continuous batching, sequential serving and (unless --no-mlx-lm) mlx_lm.server, each at 1, 4, 16 clients."""
    rows = []
    warm_up(batched.url, "bench")
    for c in CLIENTS:
        rows.append({"server": "gptbench (continuous batching)", **load(batched.url, "bench", c, args.per_client, args.max_tokens)})
    sequential = gptbench_server(runs, 1)
    try:
        warm_up(sequential.url, "bench")
        for c in CLIENTS:
            rows.append({"server": "gptbench (sequential)", **load(sequential.url, "bench", c, args.per_client, args.max_tokens)})
    finally:
        sequential.stop()
    if args.mlx_lm:
        proc, url = mlx_lm_server(runs, tmp, 16)
        try:
            warm_up(url, None)
            for c in CLIENTS:
                rows.append({"server": "mlx_lm.server", **load(url, None, c, args.per_client, args.max_tokens)})
        finally:
            proc.terminate()
            proc.wait(60)
    return rows


def load_run(url: str, requests: int, max_tokens: int) -> dict:
    """`requests` completions (rounded up to a multiple of the 32 concurrent clients): the first
    tenth warms up (allocator, caches), RSS is read before, after the warm-up and at the end
    (flat: end ≈ warm)."""
    start = rss_mib()
    warm_per = max(1, requests // 10 // LOAD_CLIENTS)
    warm = load(url, "bench", LOAD_CLIENTS, warm_per, max_tokens)
    after_warm = rss_mib()
    rest = load(url, "bench", LOAD_CLIENTS, max(1, -(-requests // LOAD_CLIENTS) - warm_per), max_tokens)
    end = rss_mib()
    return {"requests": warm["requests"] + rest["requests"], "errors": warm["errors"] + rest["errors"],
            "tokens": warm["tokens"] + rest["tokens"], "seconds": round(warm["seconds"] + rest["seconds"], 1),
            "tokens_per_sec": rest["tokens_per_sec"], "ttft_p50": rest["ttft_p50"], "ttft_p95": rest["ttft_p95"],
            "rss_start_mib": round(start, 1), "rss_after_warmup_mib": round(after_warm, 1), "rss_end_mib": round(end, 1)}


def report(rows: list[dict], lr: dict) -> None:
    one = rows[0]["tokens_per_sec"]
    print(f"{'server':32} {'clients':>7} {'tok/s':>8} {'x gptbench 1':>12} {'TTFT p50':>9} {'TTFT p95':>9} {'errors':>6}")
    for r in rows:
        print(f"{r['server']:32} {r['clients']:>7} {r['tokens_per_sec']:>8} {r['tokens_per_sec'] / one:>12.2f} "
              f"{r['ttft_p50']:>9} {r['ttft_p95']:>9} {r['errors']:>6}")
    sixteen = next(r for r in rows if r["server"].startswith("gptbench (continuous") and r["clients"] == 16)
    ratio = sixteen["tokens_per_sec"] / one
    print(f"target: 16 clients = {ratio:.2f}x the tokens/s of 1 client ({'met' if ratio >= 4 else 'NOT met'}: >= 4x)")
    print(f"load run: {lr['requests']} requests, {LOAD_CLIENTS} concurrent, {lr['errors']} errors, {lr['seconds']} s, "
          f"{lr['tokens_per_sec']} tok/s; RSS {lr['rss_start_mib']} MiB at start, {lr['rss_after_warmup_mib']} after "
          f"the first tenth, {lr['rss_end_mib']} at the end")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shape, few requests (same code path)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="completion tokens per request (default 32; quick 16)")
    ap.add_argument("--per-client", type=int, default=None, help="requests per client at each concurrency (default 1)")
    ap.add_argument("--load-requests", type=int, default=None, help="requests in the load run (default 2000; quick 64)")
    ap.add_argument("--load-max-tokens", type=int, default=4, help="completion tokens per load-run request (default 4)")
    ap.add_argument("--no-mlx-lm", dest="mlx_lm", action="store_false", help="skip mlx_lm.server")
    args = ap.parse_args()
    args.shape = args.shape or ("tiny" if args.quick else "gpt2")
    args.max_tokens = args.max_tokens or (16 if args.quick else 32)
    args.per_client = args.per_client or 1
    args.load_requests = args.load_requests if args.load_requests is not None else (64 if args.quick else 2000)
    if args.mlx_lm:
        try:
            import mlx_lm  # noqa: F401
        except ImportError:
            print("serve bench: mlx-lm is not installed (pip install -e '.[dev]'); skipping mlx_lm.server", file=sys.stderr)
            args.mlx_lm = False
    return args


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = build_run(tmp, args.shape)
        batched = gptbench_server(runs, 16)
        try:
            rows = serving_rows(runs, tmp, args, batched)
            lr = load_run(batched.url, args.load_requests, args.load_max_tokens)
        finally:
            batched.stop()
    report(rows, lr)
    print(f"({args.shape} shape, torch on CPU, {args.max_tokens} tokens per request, {time.perf_counter() - t0:.0f} s in all)")
    RESULTS.mkdir(exist_ok=True)
    out = {"shape": args.shape, "max_tokens": args.max_tokens, "per_client": args.per_client, "rows": rows, "load_run": lr,
           "cpu_count": os.cpu_count()}
    from gptbench.fsutil import atomic_write_json

    name = "serve-quick.json" if args.quick else "serve.json"
    atomic_write_json(RESULTS / name, out)
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
