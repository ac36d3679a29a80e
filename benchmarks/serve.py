"""Serving throughput: aggregate tokens/s and time to first token at 1, 4 and 16 concurrent clients.

Everything runs side by side in one process on the same weights (random, on the `gpt2` 124M
shape by default; `--shape tiny` for a quick look), torch on CPU:

* `gptbench serve` with continuous batching (`--max-batch 16`) at 1, 4 and 16 concurrent
  streaming clients: aggregate completion tokens/s over the wall time, and time to first
  token (p50, p95) per request;
* sequential serving (the same server with `max_batch=1`: requests wait their turn) at 16
  clients, the baseline continuous batching is measured against;
* with `--mlx-lm`: `mlx_lm.server` on the same weights exported by `convert --to mlx-lm`,
  at the same loads (both on CPU here);
* a bounded load run (`--load-requests`, default 2000, 32 concurrent, short completions):
  errors (must be 0) and this process's resident memory before and after (must stay flat).

    python benchmarks/serve.py                     # full (long on 2 busy cores)
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
    """(time to first token, completion tokens, ok) of one streamed completion."""
    t0 = time.perf_counter()
    ttft, n = None, 0
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if model is not None:  # mlx_lm.server reads `model` as a model to load: it gets none (its own)
        body["model"] = model
    with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return 0.0, 0, False
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if msg.get("choices") and ttft is None:
                ttft = time.perf_counter() - t0
            if msg.get("usage"):  # the last chunk (stream_options.include_usage)
                n = msg["usage"]["completion_tokens"]
    return ttft or 0.0, n, True


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


def mlx_lm_server(runs: Path, tmp: Path):
    """`mlx_lm.server` on the run exported with `convert --to mlx-lm` (a subprocess)."""
    import socket

    from gptbench.cli import main

    folder = tmp / "mlx-lm"
    assert main(["--runs-dir", str(runs), "convert", "bench", str(folder), "--to", "mlx-lm"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mlx_lm.server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shape, few requests")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--per-client", type=int, default=None, help="requests per client at each concurrency")
    ap.add_argument("--load-requests", type=int, default=None)
    ap.add_argument("--mlx-lm", action="store_true", help="also measure mlx_lm.server on the same weights")
    args = ap.parse_args()
    shape = args.shape or ("tiny" if args.quick else "gpt2")
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    per_client = args.per_client or (1 if args.quick else 2)
    load_requests = args.load_requests if args.load_requests is not None else (64 if args.quick else 2000)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = build_run(tmp, shape)
        batched = gptbench_server(runs, 16)
        try:
            for c in (1, 4, 16):
                rows.append({"server": "gptbench (continuous batching)", **load(batched.url, "bench", c, per_client, max_tokens)})
            sequential = gptbench_server(runs, 1)
            try:
                rows.append({"server": "gptbench (sequential)", **load(sequential.url, "bench", 16, per_client, max_tokens)})
            finally:
                sequential.stop()
            if args.mlx_lm:
                proc, url = mlx_lm_server(runs, tmp)
                try:
                    for c in (1, 4, 16):
                        rows.append({"server": "mlx_lm.server", **load(url, None, c, per_client, max_tokens)})
                finally:
                    proc.terminate()
                    proc.wait()
            before = rss_mib()
            per = max(1, load_requests // 32)
            load_run = {"server": "gptbench load run", **load(batched.url, "bench", 32, per, 8)}
            load_run.update(rss_before_mib=round(before, 1), rss_after_mib=round(rss_mib(), 1))
        finally:
            batched.stop()
    one = rows[0]["tokens_per_sec"]
    print(f"{'server':34} {'clients':>7} {'tok/s':>8} {'x 1 client':>10} {'TTFT p50':>9} {'TTFT p95':>9} {'errors':>6}")
    for r in rows:
        print(f"{r['server']:34} {r['clients']:>7} {r['tokens_per_sec']:>8} {r['tokens_per_sec'] / one:>10.2f} "
              f"{r['ttft_p50']:>9} {r['ttft_p95']:>9} {r['errors']:>6}")
    lr = load_run
    print(f"load run: {lr['requests']} requests, 32 concurrent, {lr['errors']} errors, {lr['tokens_per_sec']} tok/s, "
          f"RSS {lr['rss_before_mib']} -> {lr['rss_after_mib']} MiB")
    RESULTS.mkdir(exist_ok=True)
    out = {"shape": shape, "max_tokens": max_tokens, "per_client": per_client, "rows": rows, "load_run": load_run,
           "cpu_count": os.cpu_count()}
    from gptbench.fsutil import atomic_write_json

    atomic_write_json(RESULTS / "serve.json", out)
    print(f"wrote {RESULTS / 'serve.json'}")


if __name__ == "__main__":
    main()
