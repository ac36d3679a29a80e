"""The chart and log widgets on their own, in a minimal app: axes and value labels
(one point, large values), view options owned by the chart, and a log pane that wraps
instead of clipping and re-wraps when its width changes."""

from __future__ import annotations

from tui_fixtures import screen_text, settle

from textual.app import App, ComposeResult

from gptbench.tui.widgets.charts import MetricChart, Series, nice_ticks, tick_label
from gptbench.tui.widgets.logpane import LogPane


class OneWidget(App[None]):
    def __init__(self, widget) -> None:  # noqa: ANN001
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


async def test_a_chart_with_one_point_has_an_axis_around_it_not_minus_one_to_one():
    chart = MetricChart("val loss", xlabel="step")
    async with OneWidget(chart).run_test(size=(60, 20)) as pilot:
        chart.set_series([Series("val", [250], [2.4036])])
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "-1" not in text
        assert "250" in text  # the point's own step on the x axis
        assert "2.404" in text  # and its value on the y axis


async def test_large_values_are_labelled_in_thousands_not_exponents():
    chart = MetricChart("tokens/s")
    async with OneWidget(chart).run_test(size=(60, 20)) as pilot:
        chart.set_series([Series("tok/s", [10, 20, 30], [15460.0, 15890.0, 14900.0])])
        await settle(pilot)
        big = screen_text(pilot.app)
        assert "e+" not in big
        assert "15k" in big or "15.5k" in big  # round ticks in thousands
        await pilot.resize_terminal(16, 6)  # too small to plot: the latest value as text
        await settle(pilot)
        small = screen_text(pilot.app)
        assert "tok/s 14.9k" in small
        assert "e+" not in small


def test_tick_labels_and_round_ticks():
    assert [tick_label(v) for v in (15460.0, 2_000_000.0, 0.00035, 1.5, 0.0, 6123.0)] == ["15.5k", "2M", "0.00035", "1.5", "0", "6123"]
    assert nice_ticks(1.33, 4.42, 6) == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert nice_ticks(0, 2000, 6) == [0, 500, 1000, 1500, 2000]
    assert len(nice_ticks(5715, 6484, 6)) <= 6


async def test_the_chart_owns_its_log_scale_and_smoothing():
    loss = MetricChart("loss", log_scalable=True, smoothable=True, smoothing_index=1)
    lr = MetricChart("lr")
    async with OneWidget(loss).run_test(size=(60, 20)) as pilot:
        loss.set_series([Series("train", [1, 2, 3], [3.0, 2.0, 1.5])])
        assert loss.smoothing == 0.6
        assert loss.title_text == "loss · smoothing 0.6"
        loss.toggle_log_scale()
        loss.change_smoothing(2)
        await settle(pilot)
        assert loss.log_y
        assert loss.smoothing == 0.9
        assert "loss · smoothing 0.9  (log)" in screen_text(pilot.app)
        loss.change_smoothing(-10)
        assert loss.smoothing == 0.0
        assert loss.title_text == "loss  (log)"
    lr.toggle_log_scale()
    lr.change_smoothing(1)
    assert not lr.log_y  # a chart without those options ignores them
    assert lr.smoothing == 0.0


async def test_log_pane_wraps_long_lines_and_rewraps_on_resize():
    pane = LogPane(id="log")
    line = "2024-06-01 09:00:02 step 250: train loss 3.0699, val loss 3.2396, val ppl 25.52"
    async with OneWidget(pane).run_test(size=(40, 10)) as pilot:
        pane.append([line])
        await settle(pilot)
        widths = [strip.cell_length for strip in pane.lines]
        assert len(widths) >= 2  # wrapped, not clipped
        assert max(widths) <= pane.scrollable_content_region.width
        shown = " ".join(" ".join(strip.text.split()) for strip in pane.lines)
        assert shown == "09:00:02 step 250: train loss 3.0699, val loss 3.2396, val ppl 25.52"  # the date is dropped
        await pilot.resize_terminal(100, 10)
        await settle(pilot)
        assert len(pane.lines) == 1  # re-wrapped to the new width

        pane.set_reason("loss became nan at step 10")
        await settle(pilot)
        assert "✖ loss became nan at step 10" in screen_text(pilot.app)
        pane.append(["2024-06-01 09:00:03 loss became nan at step 10 (no checkpoint was saved)"])
        pane.set_reason("loss became nan at step 10 (no checkpoint was saved)")
        await settle(pilot)
        assert screen_text(pilot.app).count("loss became nan") == 1  # the log has it: not repeated


async def test_a_log_toggle_reuses_the_envelope_and_drops_non_positive_points(monkeypatch):
    """A long series is downsampled once per data and width: toggling the log scale on an
    all-positive series draws the same points with no new pass; with values <= 0 the log
    scale draws the envelope of the positive points alone."""
    import numpy as np

    import gptbench.tui.widgets.charts as charts

    calls = []
    real = charts.minmax_downsample
    monkeypatch.setattr(charts, "minmax_downsample", lambda *a: calls.append(len(a[0])) or real(*a))
    xs = np.arange(1, 20_001)
    positive, mixed = 1.0 + np.sin(xs / 500.0) ** 2, np.sin(xs / 500.0)
    chart = MetricChart("loss", log_scalable=True)
    async with OneWidget(chart).run_test(size=(60, 20)) as pilot:
        chart.set_series([Series("train", xs, positive, smooth=False)])
        await settle(pilot)
        linear = chart._points(chart.series[0], 60)
        chart.toggle_log_scale()
        await settle(pilot)
        logged = chart._points(chart.series[0], 60)
        assert len(calls) == 1  # one downsampling for both scales
        np.testing.assert_array_equal(linear[0], logged[0])
        chart.set_series([Series("train", xs, mixed, smooth=False)])
        await settle(pilot)
        px, py = chart._points(chart.series[0], 60)
        assert py.min() > 0
        np.testing.assert_array_equal((px, py), real(xs[mixed > 0], mixed[mixed > 0], 60))
