"""`gptbench runs`: list runs as a table or JSON."""

from __future__ import annotations

import argparse
import json
import time

from gptbench.backends.spec import format_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list runs", description="List every run in the runs directory.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run_runs)


def run_runs(args: argparse.Namespace) -> int:
    from gptbench.runstore import RunStore

    store = RunStore(args.runs_dir)
    summaries = store.summaries()
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {store.root}", title_justify="left")
    for col in ("name", "status", "step", "best val", "params", "backend", "device", "tokenizer", "created"):
        table.add_column(col, justify="right" if col in ("step", "best val", "params") else "left")
    for s in summaries:
        table.add_row(
            s.name,
            s.state + (f" ({s.error})" if s.state == "corrupt" else ""),
            f"{s.step}/{s.max_iters}" if s.max_iters else "-",
            f"{s.best_val_loss:.4f}" if s.best_val_loss is not None else "-",
            format_params(s.params) if s.params else "-",
            s.backend or "-",
            s.device or "-",
            s.tokenizer or "-",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(s.created)) if s.created else "-",
        )
    if not summaries:
        print(f"no runs in {store.root}; start one with: gptbench train --no-ui")
        return 0
    Console().print(table)
    return 0
