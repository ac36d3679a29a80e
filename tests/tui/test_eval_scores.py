"""Evaluation scores in the TUI: the compare screen's results rows show each run's score
(mean centred accuracy, `runstore.evals`) beside its best losses, and the dashboard charts
each task's accuracy with the losses, following new records."""

from __future__ import annotations

from tui_fixtures import frozen_clock, make_fixture_runs, settle, wait_for

from gptbench.evaluation.results import TaskResult
from gptbench.runstore.evals import record_scores
from gptbench.tui.app import create_app
from gptbench.tui.screens.compare import CompareScreen
from gptbench.tui.screens.dashboard import DashboardScreen
from gptbench.tui.widgets.charts import MetricChart
from gptbench.tui.widgets.runtable import RunTable


async def test_compare_shows_the_eval_score_beside_the_losses(tmp_path):
    runs = make_fixture_runs(tmp_path / "runs")
    scored = [TaskResult("mc:a", "mc", 8, acc=0.5, acc_norm=0.5, chance=0.25), TaskResult("mc:b", "mc", 8, acc=1.0, acc_norm=1.0, chance=0.5)]
    record_scores(runs / "baby-char", "baby-char@step-100", scored, step=100)
    app = create_app(runs, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(140, 44)) as pilot:
        await settle(pilot)
        app.screen.query_one(RunTable).select_name("baby-char")
        await settle(pilot)
        await pilot.press("space")  # marks baby-char and moves down to gpt2-wide
        await pilot.press("space")
        await pilot.press("m")
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen)
        diff = app.screen.query_one("#compare-diff")
        keys = [str(r.key.value) for r in diff.ordered_rows]
        assert keys[:3] == ["best val loss", "best val bits/byte", "score (centred acc)"]
        row = diff.get_row("score (centred acc)")
        assert str(row[1]) == f"{((0.5 - 0.25) / 0.75 + 1.0) / 2:.3f}"
        assert str(row[2]) == "—"  # gpt2-wide has no score


async def test_dashboard_charts_task_scores_with_the_losses(tmp_path):
    runs = make_fixture_runs(tmp_path / "runs")
    record_scores(runs / "baby-char", "baby-char@step-1000", [TaskResult("mc:a", "mc", 8, acc=0.25, acc_norm=0.5, chance=0.25)], step=1000)
    app = create_app(runs, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.open_dashboard("baby-char")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        loss = screen.query_one("#chart-loss", MetricChart)
        await wait_for(pilot, lambda: len(loss.series) == 3, what="the score series")
        assert (loss.series[2].label, list(loss.series[2].xs), list(loss.series[2].ys)) == ("acc mc:a", [1000], [0.25])
        record_scores(runs / "baby-char", "baby-char@step-2000", [TaskResult("mc:a", "mc", 8, acc=0.75, acc_norm=0.5, chance=0.25)], step=2000)
        await wait_for(pilot, lambda: list(loss.series[2].xs) == [1000, 2000], what="a new score charted")
        assert list(loss.series[2].ys) == [0.25, 0.75]
