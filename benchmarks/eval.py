"""`gptbench eval` against lm-evaluation-harness: the same numbers, and how fast.

A GPT-2-shaped model with random weights (GPT2LMHeadModel(GPT2Config()) made by
transformers, saved with save_pretrained beside GPT-2's tokenizer files: what the Hugging
Face export of a run looks like) scores one local multiple-choice task built from
tinyshakespeare (each item: four lines of a passage, then its true next line and three lines
from elsewhere as the choices). lm-eval 0.4.x runs it as a custom YAML task over the same
JSONL file through its `hf` model (`--tasks` with `include_path`); gptbench runs it through
`gptbench.evaluation` on torch (CPU) and MLX. Reported, side by side in one run:

- agreement, per gptbench backend: items compared, the largest per-choice log-likelihood
  difference from lm-eval (target <= 1e-4), and whether acc and acc_norm are identical;
- speed: items per second of each, end to end from the items file to the scores (reading,
  tokenizing and scoring; the model loaded and lm-eval's task manager built before the
  clock starts), and each / lm-eval (target >= 2x for
  torch, from batching and the context shared by an item's choices). `--unshared` adds a
  torch row with the sharing off, to show what the shared context brings.

    python benchmarks/eval.py               # gpt2 (124M) shape, 500 items (MLX: the first 100); ~6 min quiet
    python benchmarks/eval.py --quick       # seconds: a 2-layer model, 16 items; numbers meaningless

Needs `pip install lm-eval==0.4.13` (kept out of gptbench's extras: it is heavy); without it
the lm-eval columns are skipped and said so. Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

# Everything is local: without these, lm-eval and datasets wait on network timeouts, which
# would be timed as lm-eval's work.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TINYSHAKESPEARE = REPO / "tests" / "fixtures" / "tinyshakespeare.txt"
GPT2_RANKS = REPO / "tests" / "fixtures" / "gpt2.tiktoken"
# Field names, not templates: lm-eval then reads the fields as they are. The choices carry
# their leading space, so the target delimiter is empty (gptbench's mc: format, as given).
TASK_YAML = """task: gptbench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
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


def make_model(folder: Path, quick: bool) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptbench.tokenizers.hf_files import write_hf_tokenizer
    from gptbench.tokenizers.registry import load_tokenizer_spec

    torch.manual_seed(0)
    dims = dict(n_layer=2, n_head=2, n_embd=64, n_positions=256) if quick else {}  # {}: GPT2Config's defaults, 124M
    config = GPT2Config(**dims)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    write_hf_tokenizer(load_tokenizer_spec(f"gpt2:{GPT2_RANKS}"), folder, config.n_positions)


def run_gptbench(folder: Path, items_file: Path, backend: str, batch: int, share: bool,
                 limit: int | None = None) -> tuple[list[list[float]], dict, float]:
    from gptbench.evaluation.runner import EvalOptions, evaluate, prepare
    from gptbench.evaluation.tasks import resolve_task
    from gptbench.loading import load_source
    from gptbench.runstore import RunStore

    loaded = load_source(RunStore(folder.parent / "runs"), str(folder), backend=backend, device="cpu")
    options = EvalOptions(max_rows=batch, share_context=share, limit=limit)
    t0 = time.perf_counter()
    prepared = prepare(loaded.backend, loaded.tokenizer, resolve_task(f"mc:{items_file}"), options)
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
    tasks = TaskManager(include_path=str(task_dir), include_defaults=False)  # only our task: no index of lm-eval's own
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=["gptbench_mc"], task_manager=tasks, log_samples=True, num_fewshot=0)
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"]["gptbench_mc"], key=lambda s: s["doc_id"])
    lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    res = out["results"]["gptbench_mc"]
    return lls, {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}, seconds


def agreement(mine: list[list[float]], scores: dict, ref: tuple[list[list[float]], dict, float], lengths: list[list[int]]) -> dict:
    """Per-choice log-likelihoods against lm-eval's over the items both scored; acc and
    acc_norm compared when both scored every item, else each item's two predictions."""
    theirs = ref[0][: len(mine)]
    diff = max(abs(a - b) for m, t in zip(mine, theirs) for a, b in zip(m, t))
    if len(mine) == len(ref[0]):
        same = scores == ref[1]
    else:
        def preds(ll: list[float], ln: list[int]) -> tuple[int, int]:
            return int(np.argmax(ll)), int(np.argmax(np.asarray(ll) / np.asarray(ln)))

        same = all(preds(m, ln) == preds(t, ln) for m, t, ln in zip(mine, theirs, lengths))
    return {"items": len(mine), "max_abs_loglik_diff": diff, "acc_identical": same}


def report(n: int, runs: dict, ref, result: dict) -> None:
    rows = []
    for name, (lls, scores, seconds) in runs.items():
        rows.append({"engine": name, "items": len(lls), "items_per_s": len(lls) / seconds, "seconds": seconds, **scores})
    base = next((r["items_per_s"] for r in rows if r["engine"] == "lm-eval hf"), None)
    print(f"{'engine':<16} {'items':>6} {'items/s':>9} {'seconds':>8} {'vs lm-eval':>10} {'acc':>7} {'acc_norm':>8}")
    for r in rows:
        r["vs_lm_eval"] = r["items_per_s"] / base if base else None
        ratio = f"{r['vs_lm_eval']:.2f}x" if base else "-"
        print(f"{r['engine']:<16} {r['items']:>6} {r['items_per_s']:>9.2f} {r['seconds']:>8.1f} {ratio:>10} {r['acc']:>7.4f} {r['acc_norm']:>8.4f}")
    if ref is None:
        print("lm-eval is not installed (pip install lm-eval==0.4.13): no agreement check, no lm-eval column")
    for engine, a in result.get("agreement", {}).items():
        what = "acc/acc_norm identical" if a["items"] == n else "acc/acc_norm predictions identical"
        print(f"agreement {engine} vs lm-eval hf: {a['items']} items ({4 * a['items']} log-likelihoods), "
              f"max |loglik diff| {a['max_abs_loglik_diff']:.2e}, {what}: {a['acc_identical']}")
    result["rows"] = rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", "--smoke", dest="quick", action="store_true", help="a 2-layer model and 16 items: checks the script")
    p.add_argument("--items", type=int, default=None, help="items (default 500; 16 with --quick)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward pass, for both (default 32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    p.add_argument("--unshared", action="store_true", help="also time torch with the shared context off")
    p.add_argument("--mlx-items", type=int, default=100, help="items the MLX row scores (its CPU build is slower; default 100)")
    p.add_argument("--no-mlx", dest="mlx", action="store_false", help="skip the MLX row")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.items or (16 if args.quick else 500)
    result: dict = {"items": n, "quick": args.quick, "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size}
    engines = [("torch", "torch", True, n)] + ([("torch unshared", "torch", False, n)] if args.unshared else [])
    engines += [("mlx", "mlx", True, min(n, args.mlx_items))] if args.mlx else []
    with tempfile.TemporaryDirectory() as tmp:
        folder, items_file = Path(tmp) / "hf", Path(tmp) / "items.jsonl"
        make_model(folder, args.quick)
        items = make_items(n)
        items_file.write_text("".join(json.dumps(x) + "\n" for x in items))
        runs = {name: run_gptbench(folder, items_file, backend, args.batch_size, share, m) for name, backend, share, m in engines}
        ref = run_lm_eval(folder, items_file, args.batch_size)
    if ref is not None:
        lengths = [[len(c) for c in x["choices"]] for x in items]
        result["agreement"] = {name: agreement(lls, scores, ref, lengths) for name, (lls, scores, _) in runs.items()}
        runs["lm-eval hf"] = ref
    report(n, runs, ref, result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
