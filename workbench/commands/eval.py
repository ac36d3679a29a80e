"""`gptbench eval`: score a model on multiple-choice tasks and texts, and record the scores.

    gptbench eval --run baby --task bpb:text.txt
    gptbench eval --run gpt2-ft --task hellaswag --task arc_easy --limit 500
    gptbench eval --model out-hf --task mc:items.jsonl --json
    gptbench eval --run chat-ft --task gen:qa.jsonl             # a chat run's answers, exact match

Tasks are read and checked before the model loads, so a bad task costs nothing. A run's
scores are recorded in it (`runstore.evals`), one record per task and checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptbench.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model on tasks (multiple choice, bits per byte)",
                       description="Score a run or any model source on multiple-choice tasks and texts.")
    g = p.add_argument_group("model")
    g.add_argument("--run", help="run name (its scores are recorded in it)")
    g.add_argument("--checkpoint", default="best", help="with --run: best | last | step-N (default best)")
    g.add_argument("--strict", action="store_true", help="refuse when the run's newest (best) checkpoint is damaged")
    g.add_argument("--model", help="any model source: a Hugging Face folder or hub name, a run folder, a weights file, RUN:CHECKPOINT")
    g.add_argument("--tokenizer", help="for a source without one: gpt2, byte, bpe:PATH, or a run folder")
    g.add_argument("--backend", default="auto", help="auto | torch | mlx")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (torch) | gpu (mlx)")
    t = p.add_argument_group("tasks")
    t.add_argument("--task", action="append", default=[], metavar="TASK",
                   help="mc:FILE.jsonl, bpb:FILE, gen:FILE.jsonl (chat runs), hellaswag, arc_easy, arc_challenge, piqa, "
                        "winogrande, mmlu (repeatable)")
    t.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    t.add_argument("--shots", type=int, default=0, help="solved examples before each item (default 0)")
    t.add_argument("--seed", type=int, default=1234, help="seed of the few-shot draw (default 1234)")
    t.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (an item's choices share a row; default 32)")
    t.add_argument("--max-new-tokens", type=int, default=64, help="gen: tasks: the longest answer, in tokens (default 64)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object: acc, acc_norm, n per task (bpb for texts; for gen: acc is exact match)")
    o.add_argument("--per-item", metavar="FILE", help="write every item's log-likelihoods as JSONL")
    o.add_argument("--no-record", dest="record", action="store_false", help="with --run: do not record the scores in the run")
    p.set_defaults(func=run_eval)


def check_args(args: argparse.Namespace) -> None:
    from gptbench.evaluation.tasks import check_task_name

    if (args.run is None) == (args.model is None):
        raise UserError("give exactly one of --run NAME or --model SOURCE")
    if not args.task:
        raise UserError("name at least one --task (mc:FILE.jsonl, bpb:FILE, gen:FILE.jsonl, hellaswag, ...)")
    for task in args.task:
        check_task_name(task)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.shots < 0:
        raise UserError(f"--shots must be >= 0, got {args.shots}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.per_item and not Path(args.per_item).expanduser().resolve().parent.is_dir():
        raise UserError(f"--per-item {args.per_item}: its folder does not exist; create it or choose another path")


def run_eval(args: argparse.Namespace) -> int:
    from gptbench.evaluation.runner import EvalOptions, evaluate, prepare
    from gptbench.evaluation.tasks import resolve_task
    from gptbench.loading import load_model, load_source
    from gptbench.runstore import RunStore

    check_args(args)
    tasks = [resolve_task(name) for name in args.task]  # every file read and checked first
    store = RunStore(args.runs_dir)
    if args.run is not None:
        loaded = load_model(store, run=args.run, checkpoint=args.checkpoint, tokenizer=args.tokenizer,
                            backend=args.backend, device=args.device, strict=args.strict)
    else:
        loaded = load_source(store, args.model, tokenizer=args.tokenizer, backend=args.backend, device=args.device)
    if loaded.notice:
        print(f"gptbench: warning: {loaded.notice}", file=sys.stderr, flush=True)
    options = EvalOptions(shots=args.shots, seed=args.seed, limit=args.limit, max_rows=args.batch_size,
                          max_new_tokens=args.max_new_tokens)
    prepared = [prepare(loaded.backend, loaded.tokenizer, task, options) for task in tasks]  # every item encodes
    results = []
    for p in prepared:
        if sys.stderr.isatty():
            print(f"scoring {p.task.name} on {loaded.source} ...", file=sys.stderr, flush=True)
        results.append(evaluate(loaded.backend, loaded.tokenizer, p, options))
    if args.per_item:
        write_per_item(Path(args.per_item).expanduser(), results)
    if args.run is not None and args.record:
        from gptbench.runstore.evals import record_scores

        record_scores(store.existing(args.run).path, loaded.source, results, limit=args.limit)
    print(json.dumps(report(loaded.source, results)) if args.json else format_table(results))
    return 0


def report(source: str, results: list) -> dict:
    from gptbench.evaluation.results import core_score, core_tasks

    return {"model": source, "tasks": {r.task: r.to_dict() for r in results},
            "core": core_score(results), "core_tasks": core_tasks(results)}


def format_table(results: list) -> str:
    from gptbench.evaluation.results import core_score, core_tasks

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    width = max(12, *(len(r.task) for r in results))
    lines = [f"{'task':<{width}}  {'n':>7}  {'acc':>7}  {'acc_norm':>8}  {'centred':>8}  {'bpb':>7}  {'cut':>5}"]
    for r in results:
        lines.append(f"{r.task:<{width}}  {r.n:>7}  {num(r.acc):>7}  {num(r.acc_norm):>8}  {num(r.centered):>8}  {num(r.bpb):>7}  {r.truncated:>5}")
    core = core_score(results)
    if core is not None:
        lines.append(f"CORE (centred acc, mean over {', '.join(core_tasks(results))}): {core:.4f}")
    if any(r.kind == "gen" for r in results):
        lines.append("gen: tasks: acc is the exact-match rate of greedy answers")
    return "\n".join(lines)


def write_per_item(path: Path, results: list) -> None:
    from gptbench.fsutil import atomic_write_text

    lines = [json.dumps({"task": r.task, **item.to_dict()}) for r in results for item in r.items]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
