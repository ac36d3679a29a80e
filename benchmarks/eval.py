"""`gptbench eval` against lm-evaluation-harness: the same numbers, and how fast.

A GPT-2-shaped model with random weights (made by transformers, saved with GPT-2's
tokenizer files: the Hugging Face export of a run looks the same) scores one local
multiple-choice task built from tinyshakespeare (each item: a passage, its true next line
and three lines from elsewhere). lm-eval runs it as a custom YAML task over the same JSONL
file through its `hf` model; gptbench runs it through `gptbench.evaluation` on torch (CPU)
and MLX. Reported, side by side in one run:

- agreement: items compared, the largest per-choice log-likelihood difference (target
  <= 1e-4), and whether acc and acc_norm are identical;
- speed: items per second of each, and gptbench torch / lm-eval (target >= 2x).

    python benchmarks/eval.py                # gpt2 (124M) shape, 500 items (quiet machine: minutes)
    python benchmarks/eval.py --smoke        # seconds: a 2-layer model, 16 items; numbers meaningless

Needs `pip install lm-eval` (kept out of gptbench's extras: it is heavy); without it the
lm-eval columns are skipped and said so. Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TINYSHAKESPEARE = REPO / "tests" / "fixtures" / "tinyshakespeare.txt"
GPT2_RANKS = REPO / "tests" / "fixtures" / "gpt2.tiktoken"
TASK_YAML = """task: gptbench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def make_items(n: int, seed: int = 0) -> list[dict]:
    """Passages of tinyshakespeare, each with its true next line and three others."""
    lines = [ln for ln in TINYSHAKESPEARE.read_text().splitlines() if len(ln) > 20]
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        i = rng.randrange(4, len(lines) - 1)
        choices = [" " + lines[i]] + [" " + lines[rng.randrange(len(lines))] for _ in range(3)]
        order = list(range(4))
        rng.shuffle(order)
        items.append({"context": "\n".join(lines[i - 4: i]), "choices": [choices[k] for k in order], "answer": order.index(0)})
    return items


def make_model(folder: Path, smoke: bool) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptbench.tokenizers.hf_files import write_hf_tokenizer
    from gptbench.tokenizers.registry import load_tokenizer_spec

    torch.manual_seed(0)
    dims = dict(n_layer=2, n_head=2, n_embd=64, n_positions=256) if smoke else dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, **dims)).eval().save_pretrained(folder)
    write_hf_tokenizer(load_tokenizer_spec(f"gpt2:{GPT2_RANKS}"), folder, dims["n_positions"])


def run_gptbench(folder: Path, items_file: Path, backend: str, batch: int) -> tuple[list[list[float]], dict, float]:
    from gptbench.evaluation.runner import EvalOptions, evaluate, prepare
    from gptbench.evaluation.tasks import resolve_task
    from gptbench.loading import load_source
    from gptbench.runstore import RunStore

    loaded = load_source(RunStore(folder.parent / "runs"), str(folder), backend=backend, device="cpu")
    options = EvalOptions(max_rows=batch)
    prepared = prepare(loaded.backend, loaded.tokenizer, resolve_task(f"mc:{items_file}"), options)
    t0 = time.perf_counter()
    result = evaluate(loaded.backend, loaded.tokenizer, prepared, options)
    seconds = time.perf_counter() - t0
    return [list(s.logliks) for s in result.items], {"acc": result.acc, "acc_norm": result.acc_norm}, seconds


def run_lm_eval(folder: Path, items_file: Path, batch: int) -> tuple[list[list[float]], dict, float] | None:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        return None
    task_dir = folder.parent / "lm_eval_task"
    task_dir.mkdir(exist_ok=True)
    (task_dir / "gptbench_mc.yaml").write_text(TASK_YAML.format(items=items_file))
    lm = HFLM(pretrained=str(folder), batch_size=batch, device="cpu", dtype="float32")
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=["gptbench_mc"], task_manager=TaskManager(include_path=str(task_dir)),
                                  log_samples=True, num_fewshot=0)
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"]["gptbench_mc"], key=lambda s: s["doc_id"])
    lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    res = out["results"]["gptbench_mc"]
    return lls, {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.items or (16 if args.smoke else 500)
    rows, result = [], {"items": n, "smoke": args.smoke, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        folder, items_file = Path(tmp) / "hf", Path(tmp) / "items.jsonl"
        make_model(folder, args.smoke)
        items_file.write_text("".join(json.dumps(x) + "\n" for x in make_items(n)))
        runs = {b: run_gptbench(folder, items_file, b, args.batch_size) for b in ("torch", "mlx")}
        ref = run_lm_eval(folder, items_file, args.batch_size)
    if ref is not None:
        runs["lm-eval hf"] = ref
        diff = max(abs(a - b) for mine, theirs in zip(runs["torch"][0], ref[0]) for a, b in zip(mine, theirs))
        result["agreement"] = {"items": n, "max_abs_loglik_diff": diff, "acc_identical": runs["torch"][1] == ref[1]}
    for name, (_, scores, seconds) in runs.items():
        rows.append({"engine": name, "items_per_s": n / seconds, "seconds": seconds, **scores})
    base = next((r["items_per_s"] for r in rows if r["engine"] == "lm-eval hf"), None)
    print(f"{'engine':<12} {'items/s':>9} {'vs lm-eval':>10} {'acc':>7} {'acc_norm':>8}")
    for r in rows:
        r["vs_lm_eval"] = r["items_per_s"] / base if base else None
        ratio = f"{r['vs_lm_eval']:.2f}x" if base else "-"
        print(f"{r['engine']:<12} {r['items_per_s']:>9.1f} {ratio:>10} {r['acc']:>7.4f} {r['acc_norm']:>8.4f}")
    if ref is None:
        print("lm-eval is not installed (pip install lm-eval): no agreement check, no lm-eval column")
    else:
        a = result["agreement"]
        print(f"agreement: {a['items']} items, max |loglik diff| {a['max_abs_loglik_diff']:.2e}, acc/acc_norm identical: {a['acc_identical']}")
    result["rows"] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
