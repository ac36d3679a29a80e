"""Line charts of training metrics, drawn by plotext through textual-plotext.

The chart keeps its data and rebuilds the plotext figure only when the data, its size, the
theme or the log-scale/smoothing settings change: `render()` is called on every repaint of
the widget, and a plotext build costs milliseconds, so an unchanged chart is served from a
cache. Long runs are smoothed first (EMA on the full series) and then bucket-averaged to
the chart's width, so a 100k-step curve costs the same to draw as a 100-step one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from gptbench.tui.runsdata import downsample, ema

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
    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int] | str = PALETTE[0]
    smooth: bool = True  # apply the chart's smoothing (eval points usually are not)
    marker: str = "braille"
    extra: dict = field(default_factory=dict)


def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Round tick positions (1/2/5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo or count < 2:
        return [lo]
    raw = (hi - lo) / (count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def tick_label(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


class MetricChart(PlotextPlot):
    """A titled line chart of one or more series against step."""

    DEFAULT_CSS = """
    MetricChart { height: 1fr; width: 1fr; min-height: 5; }
    """

    def __init__(
        self,
        title: str = "",
        *,
        xlabel: str = "",
        empty: str = "no data yet",
        name: str | None = None,
        id: str | None = None,  # noqa: A002 - Textual's convention
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.chart_title = title
        self.xlabel = xlabel
        self.empty = empty
        self.series: list[Series] = []
        self.log_y = False
        self.smoothing = 0.0
        self._version = 0
        self._cache_key: tuple | None = None
        self._cache: Text | None = None

    def set_series(self, series: list[Series], *, log_y: bool | None = None, smoothing: float | None = None, title: str | None = None) -> None:
        self.series = series
        if log_y is not None:
            self.log_y = log_y
        if smoothing is not None:
            self.smoothing = smoothing
        if title is not None:
            self.chart_title = title
        self._version += 1
        self.refresh()

    def set_options(self, *, log_y: bool | None = None, smoothing: float | None = None, title: str | None = None) -> None:
        self.set_series(self.series, log_y=log_y, smoothing=smoothing, title=title)

    @property
    def has_data(self) -> bool:
        return any(s.xs for s in self.series)

    def render(self) -> RenderResult:
        w, h = self.size.width, self.size.height
        key = (self._version, w, h, self.app.theme)
        if key == self._cache_key and self._cache is not None:
            return self._cache
        self._cache_key, self._cache = key, self._build(w, h)
        return self._cache

    def _build(self, w: int, h: int) -> Text:
        if not self.has_data:
            msg = f"{self.chart_title}: {self.empty}" if self.chart_title else self.empty
            return Text(msg, style="dim", justify="center", overflow="ellipsis")
        if w < 20 or h < 7:  # too small to plot: the latest values instead
            text = Text(f"{self.chart_title}\n" if self.chart_title else "", style="bold", overflow="ellipsis")
            for s in self.series:
                if s.ys:
                    text.append(f"{s.label} {s.ys[-1]:.4g}\n", style="")
            return text
        plt = self.plt
        plt.clear_figure()
        plt.plotsize(w, h)
        plt._set_size(w, h)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        max_points = max(8, 2 * w)
        x_lo, x_hi = math.inf, -math.inf
        for s in self.series:
            xs, ys = s.xs, s.ys
            if s.smooth and self.smoothing > 0:
                ys = ema(ys, self.smoothing)
            pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not self.log_y)]
            if not pts:
                continue
            px, py = downsample([p[0] for p in pts], [p[1] for p in pts], max_points)
            if not px:
                continue
            x_lo, x_hi = min(x_lo, px[0]), max(x_hi, px[-1])
            if len(px) == 1:
                plt.scatter(px, py, label=s.label, color=s.color, marker="•")
            else:
                plt.plot(px, py, label=s.label, color=s.color, marker=s.marker)
        if self.log_y:
            plt.yscale("log")
        if x_hi > x_lo:
            ticks = nice_ticks(x_lo, x_hi, max(2, min(6, w // 12)))
            plt.xticks(ticks, [tick_label(t) for t in ticks])
        if self.chart_title:
            plt.title(self.chart_title + ("  (log)" if self.log_y else ""))
        if self.xlabel and h >= 12:
            plt.xlabel(self.xlabel)
        return Text.from_ansi(plt.build(), no_wrap=True)
