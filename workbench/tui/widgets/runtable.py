"""The run browser's table: one row per run, updated in place as runs progress."""

from __future__ import annotations

from typing import Any, Callable

from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from gptbench.backends.spec import format_params
from gptbench.runstore import RunSummary
from gptbench.tui.runsdata import fmt_age, fmt_duration, fmt_loss

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
STATE_ICONS = {
    "finished": "✔",
    "stopped": "■",
    "failed": "✖",
    "crashed": "✖",
    "stale": "?",
    "corrupt": "!",
    "starting": "…",
    "new": "○",
    "missing": "∅",
}
STATE_STYLES = {
    "running": "bold green",
    "finished": "cyan",
    "stopped": "yellow",
    "failed": "bold red",
    "crashed": "bold red",
    "stale": "dark_orange",
    "corrupt": "red",
    "starting": "green",
    "new": "green",
}


def state_text(state: str, frame: int = 0) -> Text:
    """Status with an icon; a running run gets a spinner frame (its live indicator)."""
    icon = SPINNER[frame % len(SPINNER)] if state == "running" else STATE_ICONS.get(state, "·")
    return Text(f"{icon} {state}", style=STATE_STYLES.get(state, "dim"))


# (key, header, sort key)
COLUMNS: list[tuple[str, str, Callable[[RunSummary], Any]]] = [
    ("name", "Name", lambda s: s.name.lower()),
    ("status", "Status", lambda s: s.state),
    ("step", "Step", lambda s: (s.step, s.max_iters)),
    ("best", "Best val", lambda s: (s.best_val_loss is None, s.best_val_loss or 0.0)),
    ("params", "Params", lambda s: s.params),
    ("backend", "Backend", lambda s: s.backend),
    ("device", "Device", lambda s: s.device),
    ("tokenizer", "Tokenizer", lambda s: s.tokenizer),
    ("corpus", "Corpus", lambda s: s.corpus),
    ("created", "Created", lambda s: s.created),
    ("duration", "Duration", lambda s: s.duration),
]
SORT_KEYS = {key: fn for key, _, fn in COLUMNS}
SEARCHED = ("name", "state", "backend", "device", "tokenizer", "corpus", "error")


def matches(s: RunSummary, query: str) -> bool:
    """Every whitespace-separated word of the filter occurs in one of the run's fields."""
    hay = " ".join(str(getattr(s, f, "")) for f in SEARCHED).lower()
    return all(word in hay for word in query.lower().split())


def short_reason(error: str) -> str:
    """Why a run is corrupt, in a few words for the table (the details panel has it all)."""
    if error.startswith("config.json is missing"):
        return "no config.json"
    if error.startswith("config.json"):
        return "bad config.json"
    if error.startswith("status.json"):
        return "bad status.json"
    return "unreadable files"


def short_corpus(corpus: str, width: int = 24) -> str:
    tail = corpus.rstrip("/").rsplit("/", 1)[-1] or corpus
    return tail if len(tail) <= width else "…" + tail[-(width - 1) :]


def row_cells(s: RunSummary, *, marked: bool, now: float, frame: int) -> tuple:
    name = Text(("◆ " if marked else "  ") + s.name, style="bold" if marked else "")
    if s.state == "corrupt":
        status = state_text("corrupt")
        status.append(f": {short_reason(s.error)}", style="red")
    else:
        status = state_text(s.state, frame)
    step = f"{s.step:,}/{s.max_iters:,}" if s.max_iters else "-"
    return (
        name,
        status,
        Text(step, justify="right"),
        Text(fmt_loss(s.best_val_loss), justify="right"),
        Text(format_params(s.params) if s.params else "-", justify="right"),
        s.backend or "-",
        s.device or "-",
        s.tokenizer or "-",
        short_corpus(s.corpus) if s.corpus else "-",
        fmt_age(s.created, now),
        Text(fmt_duration(s.duration) if s.duration else "-", justify="right"),
    )


class RunTable(DataTable):
    """A DataTable keyed by run name that updates changed cells in place and keeps the
    cursor on the same run when rows are added, removed or re-ordered."""

    BINDINGS = [Binding("enter", "select_cursor", "Dashboard")]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(cursor_type="row", zebra_stripes=True, id=id, classes=classes)
        self._order: list[str] = []
        self._cells: dict[str, tuple] = {}

    def on_mount(self) -> None:
        for key, header, _ in COLUMNS:
            self.add_column(header, key=key)

    @property
    def current_name(self) -> str | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
        return str(row_key.value)

    def select_name(self, name: str) -> None:
        if name in self._order:
            self.move_cursor(row=self._order.index(name), animate=False)

    def show(self, rows: list[tuple[str, tuple]]) -> None:
        names = [n for n, _ in rows]
        if names != self._order:
            current = self.current_name
            self.clear()
            for name, cells in rows:
                self.add_row(*cells, key=name)
            self._order = names
            if current in names:
                self.move_cursor(row=names.index(current), animate=False)
        else:
            keys = [k for k, _, _ in COLUMNS]
            for name, cells in rows:
                old = self._cells.get(name, ())
                for key, new_cell, old_cell in zip(keys, cells, old):
                    if new_cell != old_cell:
                        self.update_cell(name, key, new_cell, update_width=True)
        self._cells = dict(rows)

