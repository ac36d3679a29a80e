"""The run browser's details panel: one run's key facts, loss chart and config tree.

It watches the selected run in a thread worker (a few recent watchers are kept, so going
back to a run is instant) and says why a run needs attention: the reason a run failed,
crashed or is corrupt, and any checkpoint file that cannot be read (`last`/`best` skip it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode

from gptbench.backends.spec import format_params
from gptbench.runstore import Run, RunSummary
from gptbench.tui.runsdata import Clock, RunWatcher, WatchSnapshot, fmt_age, fmt_duration, fmt_loss, fmt_rate, state_reason
from gptbench.tui.widgets.charts import PALETTE, MetricChart, Series
from gptbench.tui.widgets.runtable import state_text

MAX_WATCHERS = 16  # details-panel watchers kept for quick re-selection
CONFIG_ORDER = ("model", "train", "data", "tokenizer")


def summary_table(s: RunSummary, snap: WatchSnapshot | None, now: float, frame: int = 0) -> Table:
    """The key facts of a run as a two-column grid; a run that failed, crashed, went
    stale or is corrupt says why right under its status."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("status", state_text(s.state, frame))
    reason = state_reason(s, snap.status if snap else None, now)
    if reason:
        grid.add_row("reason", Text(reason, style="red"))
    if s.state in ("corrupt", "starting") or (s.state == "crashed" and not s.created):
        return grid  # nothing else is known about it
    if s.converted:
        grid.add_row("step", f"converted at step {s.step:,}" if s.step else "converted (no training here)")
    else:
        pct = f" ({100 * s.step / s.max_iters:.0f}%)" if s.max_iters else ""
        grid.add_row("step", f"{s.step:,} / {s.max_iters:,}{pct}")
    grid.add_row("best val", fmt_loss(s.best_val_loss))
    if s.score is not None:  # runstore.evals: gptbench eval / --eval-task
        grid.add_row("score", f"{s.score:.3f} (mean centred accuracy, newest scored checkpoint)")
    cfg = snap.config if snap else None
    shape = ""
    if cfg and isinstance(cfg.get("model"), dict):
        m = cfg["model"]
        shape = f" · {m.get('n_layer')}L {m.get('n_head')}H {m.get('n_embd')}d ctx {m.get('block_size')}"
    grid.add_row("params", (format_params(s.params) if s.params else "-") + shape)
    for label, value in lineage_rows(cfg):
        grid.add_row(label, value)
    grid.add_row("backend", " · ".join(x for x in (s.backend, s.device) if x) or "-")
    if s.world_size > 1:
        grid.add_row("processes", f"{s.world_size} ({s.strategy or 'ddp'})")
    grid.add_row("tokenizer", s.tokenizer or "-")
    grid.add_row("corpus", s.corpus or "-")
    if s.created:
        grid.add_row("created", f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s.created))} ({fmt_age(s.created, now)})")
    grid.add_row("duration", f"{fmt_duration(s.duration)} · {fmt_rate(s.tokens_per_sec)} tok/s")
    for label, value in checkpoint_rows(snap):
        grid.add_row(label, value)
    return grid


def checkpoint_rows(snap: WatchSnapshot | None) -> list[tuple[str, str | Text]]:
    """How many checkpoints and the best one; each damaged checkpoint file and why."""
    rows: list[tuple[str, str | Text]] = []
    if snap and snap.checkpoints:
        with_val = [c for c in snap.checkpoints if c.val_loss is not None]
        best = min(with_val, key=lambda c: c.val_loss).step if with_val else snap.checkpoints[-1].step
        rows.append(("checkpoints", f"{len(snap.checkpoints)} (best: step-{best})"))
    for d in snap.damaged if snap else []:
        why = d.reason.replace(str(d.path), d.path.name)
        rows.append(("damaged", Text(why, style="red")))  # (last and best skip it: sources.choose_checkpoint)
    return rows


def lineage_rows(cfg: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Where a fine-tuned run started (source, kind, sha256 prefix, path) and its LoRA
    settings; nothing for a run trained from scratch."""
    rows: list[tuple[str, str]] = []
    source = cfg.get("init_from") if isinstance(cfg, dict) else None
    if isinstance(source, dict):
        sha = str(source.get("sha256") or "")[:12]
        rows.append(("from", f"{source.get('label') or source.get('spec')} ({source.get('kind')}) · sha256 {sha}… · {source.get('path')}"))
    lora = cfg.get("lora") if isinstance(cfg, dict) else None
    if isinstance(lora, dict):
        trainable = cfg.get("trainable_params")
        counted = f" · {format_params(trainable)} trainable" if isinstance(trainable, int) else ""
        targets = ",".join(lora.get("targets") or [])
        rows.append(("LoRA", f"rank {lora.get('rank')} · alpha {lora.get('alpha'):g} · {targets}{counted}"))
    return rows


def fill_tree(node: TreeNode, obj: Any, expand: tuple[str, ...] = ()) -> None:
    """A config as a tree: the main sections first, then scalars, then bookkeeping."""
    if isinstance(obj, dict):
        def order(item: tuple[str, Any]) -> tuple[int, int, str]:
            key, value = item
            rank = CONFIG_ORDER.index(key) if key in CONFIG_ORDER else len(CONFIG_ORDER)
            return (rank, isinstance(value, dict), key)

        for key, value in sorted(obj.items(), key=order):
            if isinstance(value, dict):
                child = node.add(Text(str(key), style="bold"), expand=key in expand)
                fill_tree(child, value)
            else:
                node.add_leaf(Text.assemble((f"{key} ", "dim"), (repr(value) if isinstance(value, str) else str(value), "")))


class RunDetails(Horizontal):
    """The details of the run named by `show`. The screen owns the run list, so it supplies
    the selected run's summary (`current`), the clock and the spinner frame."""

    def __init__(self, current: Callable[[], RunSummary | None], now: Callable[[], float], frame: Callable[[], int],
                 *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self._current, self._now, self._frame = current, now, frame
        self.name_shown: str | None = None
        self.snap: WatchSnapshot | None = None
        self._watchers: OrderedDict[str, RunWatcher] = OrderedDict()

    def compose(self) -> ComposeResult:
        with Vertical(id="details-left"):
            yield Static("", id="details-title")
            yield Static("", id="details-summary")
        yield MetricChart("loss", id="details-chart", empty="no metrics yet")
        yield Tree("config", id="details-config")

    def on_mount(self) -> None:
        self.query_one("#details-config", Tree).show_root = False

    def show(self, name: str | None) -> bool:
        """Switch to run `name` (None: nothing); False when it is already shown."""
        if name == self.name_shown:
            return False
        self.name_shown, self.snap = name, None
        if name is None:
            self.clear()
        return True

    def clear(self) -> None:
        self.name_shown, self.snap = None, None
        self.query_one("#details-title", Static).update("")
        self.query_one("#details-summary", Static).update("")
        self.query_one("#details-chart", MetricChart).set_series([])
        self.query_one("#details-config", Tree).clear()

    def show_text(self, key: str, title: str, body: Any) -> None:
        """A row that is no run (a sweep's): a title and a renderable in place of a run's details."""
        self.clear()
        self.name_shown = key
        self.query_one("#details-title", Static).update(Text(title, style="bold"))
        self.query_one("#details-summary", Static).update(body)

    def forget(self, name: str) -> None:
        """A run renamed or deleted: drop its watcher (and show it afresh next time)."""
        self._watchers.pop(name, None)
        if name == self.name_shown:
            self.name_shown = None

    @work(thread=True, exclusive=True, group="details", exit_on_error=False)
    def load(self, runs_dir: Path, name: str, clock: Clock) -> None:
        watcher = self._watchers.get(name)
        if watcher is None:
            watcher = RunWatcher(Run(runs_dir / name), clock)
            self._watchers[name] = watcher
            while len(self._watchers) > MAX_WATCHERS:
                self._watchers.popitem(last=False)
        else:
            self._watchers.move_to_end(name)
        snap = watcher.poll(force=True)
        if snap is not None:
            self.app.call_from_thread(self._loaded, snap)

    def _loaded(self, snap: WatchSnapshot) -> None:
        if snap.name != self.name_shown:
            return
        config_changed = self.snap is None or self.snap.config is not snap.config
        self.snap = snap
        self.render_summary()
        s = snap.series
        self.query_one("#details-chart", MetricChart).set_series(
            [Series("train", s.train_step, s.train_loss, PALETTE[0]), Series("val", s.eval_step, s.val_loss, PALETTE[1], smooth=False)]
        )
        if config_changed:
            tree = self.query_one("#details-config", Tree)
            tree.clear()
            if snap.config is not None:
                fill_tree(tree.root, snap.config, expand=("model", "train"))
            elif snap.config_error:
                tree.root.add_leaf(Text(snap.config_error, style="red"))

    def render_summary(self) -> None:
        """The summary grid of the selected run, if it is the one shown."""
        s = self._current()
        if s is None or s.name != self.name_shown:
            return
        self.query_one("#details-title", Static).update(Text(s.name, style="bold"))
        self.query_one("#details-summary", Static).update(Group(summary_table(s, self.snap, self._now(), self._frame())))
