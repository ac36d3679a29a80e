"""A sweep's results: each trial's value of the chosen metric, the trials best-first, and the summary table."""

from __future__ import annotations

from typing import Any

from gptbench.sweeps.record import SweepRecord, Trial
from gptbench.sweeps.space import short_key

RESULT_KEY = {"val_bpb": "best_val_bpb", "val_loss": "best_val_loss"}
METRIC_LABEL = {"val_bpb": "best val bpb", "val_loss": "best val loss"}


def metric_value(trial: Trial, metric: str) -> float | None:
    value = trial.result.get(RESULT_KEY[metric])
    return float(value) if isinstance(value, (int, float)) else None


def ranked(record: SweepRecord) -> list[Trial]:
    """Trials best-first by the sweep's metric (lower is better); those without a value last, in order."""
    def key(t: Trial) -> tuple[int, float, int]:
        v = metric_value(t, record.metric)
        return (0, v, t.index) if v is not None else (1, 0.0, t.index)
    return sorted(record.trials, key=key)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def settings_text(trial: Trial) -> str:
    return " ".join(f"{short_key(p)}={format_value(v)}" for p, v in trial.settings.items())


def table_rows(record: SweepRecord) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary: rank, run, the swept settings, metric, state, step."""
    header = ["#", "run", *(short_key(p) for p in record.swept), METRIC_LABEL[record.metric], "state", "step"]
    rows = []
    for i, t in enumerate(ranked(record), 1):
        v = metric_value(t, record.metric)
        rows.append([str(i), t.run, *(format_value(t.settings.get(p, "-")) for p in record.swept),
                     f"{v:.4f}" if v is not None else "-", t.state, str(t.result.get("step", "-"))])
    return header, rows


def summary_table(record: SweepRecord) -> str:
    """Plain text, columns padded; the best trial first (and named below the table)."""
    header, rows = table_rows(record)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"sweep {record.name}: {len(record.trials)} trials, best first by {METRIC_LABEL[record.metric]}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    best = ranked(record)[0] if record.trials else None
    if best is not None and metric_value(best, record.metric) is not None:
        lines.append(f"best: {best.run} ({settings_text(best)}) {METRIC_LABEL[record.metric]} {metric_value(best, record.metric):.4f}")
    return "\n".join(lines)
