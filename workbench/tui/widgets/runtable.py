"""The run browser's table: one row per run, updated in place as runs progress, with
columns fitted to what they show now (not the widest value ever shown)."""

from __future__ import annotations

from typing import Any, Callable

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.events import Resize
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
    ("device", "Device", lambda s: (s.device, s.world_size)),
    ("tokenizer", "Tokenizer", lambda s: s.tokenizer),
    ("from", "From", lambda s: s.init_from),  # lineage: what a fine-tuned run started from
    ("corpus", "Corpus", lambda s: s.corpus),
    ("created", "Created", lambda s: s.created),
    ("duration", "Duration", lambda s: s.duration),
]
SORT_KEYS = {key: fn for key, _, fn in COLUMNS}
SEARCHED = ("name", "state", "backend", "device", "tokenizer", "init_from", "corpus", "error")
NAME_MIN, NAME_SHARE = 12, 0.3  # the Name column gets at most 30% of the table (12 cells at least)


def matches(s: RunSummary, query: str) -> bool:
    """Every whitespace-separated word of the filter occurs in one of the run's fields."""
    hay = " ".join(str(getattr(s, f, "")) for f in SEARCHED).lower()
    return all(word in hay for word in query.lower().split())


def short_reason(s: RunSummary) -> str:
    """Why a run is corrupt or crashed, in a few words for the table (the details panel
    has it all); '' for other states."""
    error = s.error
    if s.state == "corrupt":
        if error.startswith("config.json is missing"):
            return "no config.json"
        if error.startswith("config.json"):
            return "bad config.json"
        if error.startswith("status.json"):
            return "bad status.json"
        return "unreadable files"
    if s.state == "crashed":
        return "killed while starting" if error.startswith("killed while starting") else "process gone"
    return ""


def short_corpus(corpus: str, width: int = 24) -> str:
    tail = corpus.rstrip("/").rsplit("/", 1)[-1] or corpus
    return tail if len(tail) <= width else "…" + tail[-(width - 1) :]


def device_text(s: RunSummary) -> str:
    """The device, and how many processes train on it: `cpu ×2`, `cuda ×8`."""
    if not s.device:
        return "-"
    return f"{s.device.split(':')[0]} ×{s.world_size}" if s.world_size > 1 else s.device


def step_text(s: RunSummary) -> str:
    if s.converted:
        return "converted"
    return f"{s.step:,}/{s.max_iters:,}" if s.max_iters else "-"


def row_cells(s: RunSummary, *, marked: bool, now: float, frame: int) -> tuple:
    name = Text(("◆ " if marked else "  ") + s.name, style="bold" if marked else "")
    status = state_text(s.state, frame)
    reason = short_reason(s)
    if reason:
        status.append(f": {reason}", style="red")
    return (
        name,
        status,
        Text(step_text(s), justify="right"),
        Text(fmt_loss(s.best_val_loss), justify="right"),
        Text(format_params(s.params) if s.params else "-", justify="right"),
        s.backend or "-",
        device_text(s),
        s.tokenizer or "-",
        s.init_from or "-",
        short_corpus(s.corpus) if s.corpus else "-",
        fmt_age(s.created, now),
        Text(fmt_duration(s.duration) if s.duration else "-", justify="right"),
    )


def _width(cell: Any) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


class RunTable(DataTable):
    """A DataTable keyed by run name that updates changed cells in place and keeps the
    cursor on the same run when rows are added, removed or re-ordered.

    Column widths follow the rows shown now and the table's width: a long name is cut
    with an ellipsis instead of pushing every other column out of view, and the Name
    column stays put when the table scrolls sideways. Home/End go to the first/last run."""

    BINDINGS = [
        Binding("enter", "select_cursor", "Dashboard"),
        Binding("home", "first_row", "First run", show=False),
        Binding("end", "last_row", "Last run", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(cursor_type="row", zebra_stripes=True, fixed_columns=1, id=id, classes=classes)
        self._order: list[str] = []
        self._cells: dict[str, tuple] = {}
        self._widths: list[int] = []

    def on_mount(self) -> None:
        for key, header, _ in COLUMNS:
            self.add_column(header, key=key, width=len(header))
        self._widths = [len(h) for _, h, _ in COLUMNS]

    @property
    def current_name(self) -> str | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
        return str(row_key.value)

    def select_name(self, name: str) -> None:
        if name in self._order:
            self.move_cursor(row=self._order.index(name), animate=False)

    def action_first_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=0, column=0)

    def action_last_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, column=0)

    # ---- contents ------------------------------------------------------------------------------
    def fitted_widths(self, rows: list[tuple[str, tuple]]) -> list[int]:
        """Each column as wide as its widest current cell (or header); Name capped to a
        share of the table so the other columns stay visible."""
        widths = [len(header) for _, header, _ in COLUMNS]
        for _, cells in rows:
            for i, cell in enumerate(cells):
                widths[i] = max(widths[i], _width(cell))
        room = self.scrollable_content_region.width or self.size.width
        if room:
            widths[0] = min(widths[0], max(NAME_MIN, int(room * NAME_SHARE)))
        return widths

    def show(self, rows: list[tuple[str, tuple]]) -> None:
        names = [n for n, _ in rows]
        widths = self.fitted_widths(rows)
        if names != self._order or widths != self._widths:
            self._rebuild(rows, widths)
        else:
            keys = [k for k, _, _ in COLUMNS]
            for name, cells in rows:
                old = self._cells.get(name, ())
                for key, new_cell, old_cell in zip(keys, cells, old):
                    if new_cell != old_cell:
                        self.update_cell(name, key, self._fit(new_cell, widths[keys.index(key)]))
        self._cells = dict(rows)

    def _rebuild(self, rows: list[tuple[str, tuple]], widths: list[int]) -> None:
        current, scroll_x = self.current_name, self.scroll_x  # clear() scrolls home
        if widths != self._widths:
            # a DataTable column only ever grows: re-create the columns at their new widths
            self.clear(columns=True)
            for (key, header, _), width in zip(COLUMNS, widths):
                self.add_column(header, key=key, width=width)
            self._widths = widths
        else:
            self.clear()
        for name, cells in rows:
            self.add_row(*(self._fit(c, w) for c, w in zip(cells, widths)), key=name)
        self._order = [n for n, _ in rows]
        if current in self._order:
            self.move_cursor(row=self._order.index(current), animate=False)
        if scroll_x:
            self.call_after_refresh(setattr, self, "scroll_x", scroll_x)

    @staticmethod
    def _fit(cell: Any, width: int) -> Any:
        if _width(cell) <= width:
            return cell
        text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
        text.truncate(width, overflow="ellipsis")
        return text

    def on_resize(self, event: Resize) -> None:
        if self._cells:
            rows = [(n, self._cells[n]) for n in self._order if n in self._cells]
            widths = self.fitted_widths(rows)
            if widths != self._widths:
                self._rebuild(rows, widths)
