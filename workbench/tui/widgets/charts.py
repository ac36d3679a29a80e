"""Line charts of training metrics, drawn by plotext through textual-plotext.

A chart owns its data and its view options (log scale, smoothing): screens forward the
`l` and `+`/`-` keys to `toggle_log_scale()` / `change_smoothing()` and never keep a
copy of that state. The plotext figure is rebuilt only when the data, the size, the
theme or an option changes: `render()` runs on every repaint, and a plotext build costs
milliseconds, so an unchanged chart is served from a cache. Long runs are smoothed first
(EMA on the full series, in numpy) and then cut to the lowest and highest point of each
character column (`chartdata`), so a 1M-step curve draws like a 100-step one and keeps its spikes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

import numpy as np

from gptbench.tui.chartdata import ema_from, minmax_downsample

# The smoothing steps the +/- keys walk through on every chart screen (EMA factor).
SMOOTHING_LEVELS: list[float] = [0.0, 0.6, 0.8, 0.9, 0.95, 0.99]

# Distinct line colours (plotext accepts RGB tuples); readable on dark and light themes.
PALETTE: list[tuple[int, int, int]] = [
    (0, 175, 255),
    (255, 140, 0),
    (80, 200, 120),
    (220, 80, 200),
    (240, 200, 60),
    (120, 140, 255),
    (255, 90, 90),
    (0, 200, 200),
]


@dataclass
class Series:
    label: str
    xs: Sequence[float]  # lists or numpy arrays
    ys: Sequence[float]
    color: tuple[int, int, int] | str = PALETTE[0]
    smooth: bool = True  # apply the chart's smoothing (eval points usually are not)
    marker: str = "braille"


@dataclass
class _Smoothed:
    """A series' EMA, kept for the next redraw: reused whole while the series is the same
    object, continued from `state` when it is a longer view of the same growing buffer
    (`MetricSeries` columns never rewrite values they have handed out)."""

    ys: Sequence[float]
    smoothing: float
    out: np.ndarray
    state: tuple[float, float]

    def fits(self, ys: Sequence[float], smoothing: float) -> bool:
        if smoothing != self.smoothing:
            return False
        if ys is self.ys:
            return True
        old, new = getattr(self.ys, "base", None), getattr(ys, "base", None)
        return old is not None and old is new and len(ys) >= len(self.ys) and self._starts_alike(ys)

    def _starts_alike(self, ys: Sequence[float]) -> bool:
        old, new = np.asarray(self.ys), np.asarray(ys)
        return old.size == 0 or (new.ctypes.data == old.ctypes.data and new.strides == old.strides)


def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Round tick positions (1/2/2.5/5 x 10^k) inside [lo, hi]: the step whose number of
    ticks comes closest to `count` without exceeding it."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo or count < 2:
        return [lo]
    mag = 10 ** math.floor(math.log10((hi - lo) / count))
    best: list[float] = []
    for step in (m * mag for m in (1, 2, 2.5, 5, 10, 20, 25, 50)):
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        ticks = [round(k * step, 10) for k in range(first, last + 1)]
        if len(ticks) <= count:
            return ticks if len(ticks) >= 2 or not best else best
        best = ticks
    return best


def tick_label(v: float) -> str:
    """A short axis or value label: 15460 -> 15.5k, 2e6 -> 2M, 0.00035 -> 0.00035."""
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    if v == 0 or abs(v) >= 1e-4:
        return f"{v:.4g}"
    return f"{v:.1e}"


def _span(lo: float, hi: float) -> tuple[float, float]:
    """An axis range around a single value (plotext would draw -1..1 around it)."""
    if hi > lo:
        return lo, hi
    pad = max(abs(lo) * 0.05, 1.0 if abs(lo) >= 1 else max(abs(lo) * 0.5, 1e-6))
    return lo - pad, hi + pad


class MetricChart(PlotextPlot):
    """A titled line chart of one or more series against step.

    `log_scalable` / `smoothable` say which view options the chart offers; it keeps their
    state and shows it in its title ("loss · smoothing 0.6  (log)")."""

    DEFAULT_CSS = """
    MetricChart { height: 1fr; width: 1fr; min-height: 5; }
    """

    def __init__(
        self,
        title: str = "",
        *,
        xlabel: str = "",
        empty: str = "no data yet",
        log_scalable: bool = False,
        smoothable: bool = False,
        smoothing_index: int = 0,
        name: str | None = None,
        id: str | None = None,  # noqa: A002 - Textual's convention
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.chart_title = title
        self.xlabel = xlabel
        self.empty = empty
        self.log_scalable = log_scalable
        self.smoothable = smoothable
        self.series: list[Series] = []
        self.log_y = False
        self.smoothing_index = smoothing_index if smoothable else 0
        self._version = 0
        self._cache_key: tuple | None = None
        self._cache: Text | None = None
        self._smoothed: dict[str, _Smoothed] = {}  # by series label
        # by series label: (xs, ys, columns, the min/max envelope), kept with the arrays it was
        # made from so that an unchanged series is never downsampled twice
        self._envelopes: dict[str, tuple[Sequence[float], Sequence[float], int, tuple[np.ndarray, np.ndarray]]] = {}

    # ---- state -------------------------------------------------------------------------------
    @property
    def smoothing(self) -> float:
        return SMOOTHING_LEVELS[self.smoothing_index]

    @property
    def title_text(self) -> str:
        title = self.chart_title
        if self.smoothable and self.smoothing:
            title += f" · smoothing {self.smoothing:g}"
        if self.log_y:
            title += "  (log)"
        return title

    def set_series(self, series: list[Series]) -> None:
        self.series = series
        self._changed()

    def set_title(self, title: str) -> None:
        if title != self.chart_title:
            self.chart_title = title
            self._changed()

    def toggle_log_scale(self) -> None:
        if self.log_scalable:
            self.log_y = not self.log_y
            self._changed()

    def change_smoothing(self, delta: int) -> None:
        if self.smoothable:
            index = max(0, min(len(SMOOTHING_LEVELS) - 1, self.smoothing_index + delta))
            if index != self.smoothing_index:
                self.smoothing_index = index
                self._changed()

    def _changed(self) -> None:
        self._version += 1
        self.refresh()

    @property
    def has_data(self) -> bool:
        return any(len(s.xs) for s in self.series)

    # ---- drawing -----------------------------------------------------------------------------
    def render(self) -> RenderResult:
        w, h = self.size.width, self.size.height
        key = (self._version, w, h, self.app.theme)
        if key == self._cache_key and self._cache is not None:
            return self._cache
        self._cache_key, self._cache = key, self._build(w, h)
        return self._cache

    def _points(self, s: Series, columns: int) -> tuple[np.ndarray, np.ndarray]:
        """The points to draw: smoothed (kept while the data and the smoothing are the same,
        so a log-scale toggle costs no EMA), only positive ones on a log scale, min/max per column."""
        ys = s.ys
        if s.smooth and self.smoothing > 0:
            hit = self._smoothed.get(s.label)
            if hit is None or not hit.fits(s.ys, self.smoothing):
                hit = self._smoothed[s.label] = _Smoothed(s.ys, self.smoothing, *ema_from(s.ys, self.smoothing))
            elif hit.ys is not s.ys:  # the same series, grown: smooth only the new values
                tail, state = ema_from(s.ys[len(hit.ys):], self.smoothing, hit.state)
                hit = self._smoothed[s.label] = _Smoothed(s.ys, self.smoothing, np.concatenate([hit.out, tail]), state)
            ys = hit.out
        columns = max(4, columns)
        hit = self._envelopes.get(s.label)
        if hit is None or hit[0] is not s.xs or hit[1] is not ys or hit[2] != columns:
            hit = self._envelopes[s.label] = (s.xs, ys, columns, minmax_downsample(s.xs, ys, columns))
        px, py = hit[3]
        if not self.log_y or not py.size or py.min() > 0:
            # every column's lowest point is in the envelope: all positive there, all positive
            # everywhere, and the log scale draws the same points (a toggle costs no pass)
            return px, py
        x, y = np.asarray(s.xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        return minmax_downsample(x[y > 0], y[y > 0], columns)

    def _build(self, w: int, h: int) -> Text:
        title = self.title_text
        if not self.has_data:
            msg = f"{title}: {self.empty}" if title else self.empty
            return Text(msg, style="dim", justify="center", overflow="ellipsis")
        if w < 20 or h < 7:  # too small to plot: the latest values instead
            text = Text(f"{title}\n" if title else "", style="bold", overflow="ellipsis")
            for s in self.series:
                if len(s.ys):
                    text.append(f"{s.label} {tick_label(float(s.ys[-1]))}\n", style="")
            return text
        plt = self.plt
        plt.clear_figure()
        plt.plotsize(w, h)
        plt._set_size(w, h)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        x_lo, x_hi, y_lo, y_hi = math.inf, -math.inf, math.inf, -math.inf
        for s in self.series:
            # min/max per character column: the line between a column's two points fills its
            # braille dots, and plotext's cost grows with the points (4w points took 2.2x 2w)
            px, py = self._points(s, w)
            if not px.size:
                continue
            x_lo, x_hi = min(x_lo, float(px.min())), max(x_hi, float(px.max()))
            y_lo, y_hi = min(y_lo, float(py.min())), max(y_hi, float(py.max()))
            if px.size == 1:
                plt.scatter(px.tolist(), py.tolist(), label=s.label, color=s.color, marker="•")
            else:
                plt.plot(px.tolist(), py.tolist(), label=s.label, color=s.color, marker=s.marker)
        if x_lo <= x_hi:
            # round ticks in the metric's own units; one point gets an axis around it, not -1..1
            lo, hi = _span(x_lo, x_hi)
            plt.xlim(lo, hi)
            ticks = nice_ticks(x_lo, x_hi, max(2, min(6, w // 12))) if x_hi > x_lo else [x_lo]
            plt.xticks(ticks, [tick_label(t) for t in ticks])
            if self.log_y:
                plt.yscale("log")
                if y_hi <= y_lo:
                    plt.ylim(y_lo / 1.1, y_hi * 1.1)
            else:
                lo, hi = _span(y_lo, y_hi)
                plt.ylim(lo, hi)
                ticks = nice_ticks(lo, hi, max(3, min(6, (h - 4) // 2))) if y_hi > y_lo else [y_lo]
                plt.yticks(ticks, [tick_label(t) for t in ticks])
        if title:
            plt.title(title)
        if self.xlabel and h >= 12:
            plt.xlabel(self.xlabel)
        return Text.from_ansi(plt.build(), no_wrap=True)
