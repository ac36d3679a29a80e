"""The tail of a run's log.txt, wrapped to the pane's width (never clipped), with an
optional closing line that says why the run ended."""

from __future__ import annotations

import re
from collections import deque
from typing import Iterable

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

_DATE = re.compile(r"^\d{4}-\d\d-\d\d (?=\d\d:\d\d:\d\d )")  # log.txt stamps: the time is enough here


class LogPane(RichLog):
    """Keeps the raw lines it shows, so a change of width re-wraps them (RichLog wraps at
    write time only) and the closing reason can be replaced without losing the tail."""

    def __init__(self, max_lines: int = 500, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(max_lines=max_lines, wrap=True, min_width=1, markup=False, highlight=False, auto_scroll=True, id=id)
        self.can_focus = False
        self.raw_lines: deque[str] = deque(maxlen=max_lines)
        self.reason = ""
        self._width = 0

    def append(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        if not lines:
            return
        self.raw_lines.extend(lines)
        if self.reason:
            self._redraw()  # the reason stays the last line
            return
        for line in lines:
            self.write(self._line(line))

    def replace(self, lines: Iterable[str]) -> None:
        self.raw_lines.clear()
        self.raw_lines.extend(lines)
        self._redraw()

    def set_reason(self, reason: str) -> None:
        """A closing red line, e.g. why a run failed, unless the log itself ends with it."""
        if reason and any(reason in line for line in list(self.raw_lines)[-5:]):
            reason = ""  # the trainer wrote it to log.txt (gptbench >= 0.2)
        if reason != self.reason:
            self.reason = reason
            self._redraw()

    def on_resize(self, event: Resize) -> None:
        super().on_resize(event)
        width = self.scrollable_content_region.width
        if width != self._width:
            self._width = width
            if self.raw_lines or self.reason:
                self._redraw()

    def _redraw(self) -> None:
        self.clear()
        for line in self.raw_lines:
            self.write(self._line(line))
        if self.reason:
            self.write(Text(f"✖ {self.reason}", style="bold red"))

    @staticmethod
    def _line(line: str) -> Text:
        date = _DATE.match(line)
        if date is None:
            return Text(line)
        text = Text(line[date.end():])
        text.stylize("dim", 0, 8)  # the HH:MM:SS stamp
        return text
