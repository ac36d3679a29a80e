"""Pilot tests of the run browser: listing, live updates, filter/sort, details, rename,
delete, compare, help, command palette, resize and themes. Fixture runs are written by hand
(tui_fixtures); assertions are on what the screen shows and on the files."""

from __future__ import annotations

import math

import json
import shutil

import pytest
from tui_fixtures import (
    FROZEN_NOW,
    frozen_clock,
    make_fixture_runs,
    notifications,
    region_text,
    row_text,
    screen_text,
    settle,
    squash,
    table_names,
    wait_for,
    write_run,
)

from gptbench.tui.app import create_app
from gptbench.tui.screens.compare import CompareScreen
from gptbench.tui.screens.help import HelpScreen
from gptbench.tui.screens.modals import ConfirmScreen, InputScreen
from gptbench.tui.screens.runs import RunsScreen
from gptbench.tui.widgets.charts import MetricChart
from gptbench.tui.widgets.runtable import RunTable


@pytest.fixture
def fixture_runs(tmp_path):
    return make_fixture_runs(tmp_path / "runs")


def make_app(runs_dir, clock=frozen_clock, **kw):
    return create_app(runs_dir, "torch", device="cpu", clock=clock, poll_interval=0.2, **kw)


async def select(pilot, name):
    table = pilot.app.screen.query_one(RunTable)
    table.select_name(name)
    await settle(pilot)
    assert table.current_name == name


async def test_lists_every_run_with_status_and_columns(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        # newest first
        assert table_names(app) == ["live-run", "lr-too-high", "baby-char", "gpt2-wide", "broken-run"]
        assert row_text(app, "baby-char") == (
            "  baby-char | ✔ finished | 2,000/2,000 | 1.4749 | 28.4K | torch | cpu | char | - | tinyshakespeare.txt | 3h ago | 5m12s"
        )
        assert row_text(app, "gpt2-wide").startswith("  gpt2-wide | ■ stopped | 1,200/5,000 | 2.7075 | 10.61M | torch | cpu | byte | - | wiki.txt | 2d ago")
        assert "failed | 300/2,000" in row_text(app, "lr-too-high")
        assert "running | 700/2,000" in row_text(app, "live-run")
        assert "8m ago" in row_text(app, "live-run")
        assert "! corrupt: bad config.json" in row_text(app, "broken-run")
        text = screen_text(app)
        assert "5 runs" in text
        assert "running" in text


async def test_empty_missing_and_corrupt_directories_do_not_crash(tmp_path):
    app = make_app(tmp_path / "does-not-exist")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "No runs in" in screen_text(app)
        assert table_names(app) == []
        await pilot.press("enter", "d", "e", "r", "s", "space", "m", "o")  # every action on nothing: no crash
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert "No run selected" in notifications(app)  # the actions explain themselves
        await pilot.press("c")
        await settle(pilot)
        assert app.current_mode == "chat"

    root = tmp_path / "junk"
    root.mkdir()
    (root / "stray-file.txt").write_text("not a run")
    (root / "empty-dir").mkdir()
    (root / "bad").mkdir()
    (root / "bad" / "config.json").write_text("[1, 2]")
    app = make_app(root, clock=lambda: FROZEN_NOW + 10**9)  # "empty-dir" is old: corrupt, not starting
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        assert sorted(table_names(app)) == ["bad", "empty-dir"]
        assert "corrupt: no config.json" in row_text(app, "empty-dir")
        assert "corrupt: bad config.json" in row_text(app, "bad")
        await select(pilot, "bad")
        assert "config.json is not a JSON object" in screen_text(app)  # the whole reason, in the details panel


async def test_list_follows_runs_appearing_progressing_and_ending(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        # a run started elsewhere (e.g. headless, another terminal) appears by itself
        write_run(fixture_runs, "from-elsewhere", state="running", step=10, max_iters=400, created=FROZEN_NOW - 5,
                  pid=__import__("os").getpid())
        await wait_for(pilot, lambda: "from-elsewhere" in table_names(app), what="new run listed")
        assert "10/400" in row_text(app, "from-elsewhere")
        status_path = fixture_runs / "from-elsewhere" / "status.json"
        st = json.loads(status_path.read_text())
        st["step"] = 250
        status_path.write_text(json.dumps(st))
        await wait_for(pilot, lambda: "250/400" in row_text(app, "from-elsewhere"), what="progress shown")
        st.update(state="finished", step=400)
        status_path.write_text(json.dumps(st))
        await wait_for(pilot, lambda: "400/400" in row_text(app, "from-elsewhere"), what="run finished")
        assert next(s for s in app.summaries if s.name == "from-elsewhere").state == "finished"
        shutil.rmtree(fixture_runs / "from-elsewhere")
        await wait_for(pilot, lambda: "from-elsewhere" not in table_names(app), what="run removed")


async def test_runs_that_change_behind_another_screen_show_on_return(fixture_runs):
    """The hidden run browser skips redraws while a dashboard is on top (the trainer needs
    the CPU), so coming back must show what changed meanwhile."""
    app = make_app(fixture_runs)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        runs_screen = app.screen
        assert isinstance(runs_screen, RunsScreen)
        await select(pilot, table_names(app)[0])
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Dashboard" in screen_text(app), what="the dashboard")
        write_run(fixture_runs, "while-away", state="finished", step=400, max_iters=400, created=FROZEN_NOW - 5)
        await wait_for(pilot, lambda: any(s.name == "while-away" for s in app.summaries), what="the scan to see it")
        hidden_rows = [str(r.key.value) for r in runs_screen.query_one(RunTable).ordered_rows]
        assert "while-away" not in hidden_rows  # not redrawn while hidden
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is runs_screen and "while-away" in table_names(app), what="the new run listed")
        assert "400/400" in row_text(app, "while-away")


async def test_filter_and_sort(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"wide")
        await settle(pilot)
        assert table_names(app) == ["gpt2-wide"]
        assert "1 of 5 runs" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert len(table_names(app)) == 5
        await pilot.press("slash", *"no such run", "enter")
        await settle(pilot)
        assert table_names(app) == []
        assert "No run matches" in screen_text(app)
        await pilot.press("escape")

        screen = app.screen
        await pilot.press("o")  # created -> name? the cycle goes to the next column
        await settle(pilot)
        assert screen.sort_key == "duration" or screen.sort_key == "name"
        screen.sort_key, screen.sort_reverse = "name", False
        screen.refresh_rows()
        assert table_names(app) == ["baby-char", "broken-run", "gpt2-wide", "live-run", "lr-too-high"]
        await pilot.press("O")  # reverse
        await settle(pilot)
        assert table_names(app) == ["lr-too-high", "live-run", "gpt2-wide", "broken-run", "baby-char"]
        # clicking a header sorts by that column
        table = app.screen.query_one(RunTable)
        table.post_message(RunTable.HeaderSelected(table, table.ordered_columns[3].key, 3, table.ordered_columns[3].label))
        await settle(pilot)
        assert screen.sort_key == "best"
        assert table_names(app)[:4] == ["baby-char", "live-run", "gpt2-wide", "lr-too-high"]  # ascending best val


async def test_details_panel_shows_summary_config_and_chart(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(140, 44)) as pilot:
        await settle(pilot)
        await select(pilot, "baby-char")
        text = squash(screen_text(app))
        assert "best val 1.4749" in text
        assert "2L 2H 32d ctx 32" in text
        assert "checkpoints 1 (best: step-2000)" in text
        chart = app.screen.query_one("#details-chart", MetricChart)
        metrics = [json.loads(line) for line in (fixture_runs / "baby-char" / "metrics.jsonl").read_text().splitlines()]
        assert len(chart.series[0].xs) == sum(r["type"] == "train" for r in metrics)
        assert len(chart.series[1].xs) == sum(r["type"] == "eval" for r in metrics)
        tree = app.screen.query_one("#details-config")
        labels = [str(n.label) for n in tree.root.children]
        assert labels[:4] == ["model", "train", "data", "tokenizer"]
        assert any("n_layer 2" in str(c.label) for c in tree.root.children[0].children)

        await select(pilot, "broken-run")
        assert "config.json is unreadable" in screen_text(app)


async def test_rename_validates_inline_and_renames_on_disk(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "baby-char")
        await pilot.press("e")
        await settle(pilot)
        assert isinstance(app.screen, InputScreen)
        await pilot.press("ctrl+a", "backspace", *"bad name/..", "enter")
        await settle(pilot)
        assert isinstance(app.screen, InputScreen)  # refused
        assert "use 1-64 letters" in screen_text(app)
        app.screen.query_one("#value").value = "gpt2-wide"
        await settle(pilot)
        assert "already exists" in screen_text(app)
        app.screen.query_one("#value").value = "baby-renamed"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "baby-renamed" in table_names(app), what="renamed run listed")
        assert not (fixture_runs / "baby-char").exists()
        assert json.loads((fixture_runs / "baby-renamed" / "config.json").read_text())["name"] == "baby-renamed"
        assert app.screen.query_one(RunTable).current_name == "baby-renamed"


async def test_delete_asks_and_deletes_only_that_run(fixture_runs, tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "gpt2-wide")
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "gpt2-wide" in screen_text(app)
        await pilot.press("n")  # cancel
        await settle(pilot)
        assert (fixture_runs / "gpt2-wide").is_dir()
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await wait_for(pilot, lambda: "gpt2-wide" not in table_names(app), what="deleted run gone")
        assert not (fixture_runs / "gpt2-wide").exists()
        assert sorted(p.name for p in fixture_runs.iterdir()) == ["baby-char", "broken-run", "live-run", "lr-too-high"]
        assert outside.read_text() == "keep me"

        await select(pilot, "live-run")  # a training run cannot be deleted
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert (fixture_runs / "live-run").is_dir()

        await select(pilot, "broken-run")  # a corrupt run can
        await pilot.press("delete")
        await settle(pilot)
        await pilot.press("y")
        await wait_for(pilot, lambda: "broken-run" not in table_names(app), what="corrupt run deleted")


async def test_compare_overlays_curves_and_diffs_config(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(140, 44)) as pilot:
        await settle(pilot)
        await pilot.press("m")  # nothing marked yet: a hint, no screen
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        await select(pilot, "baby-char")
        await pilot.press("space")  # marks and moves down to gpt2-wide
        await pilot.press("space")
        await settle(pilot)
        assert app.screen.marked == {"baby-char", "gpt2-wide"}
        assert "2 marked" in screen_text(app)
        await pilot.press("m")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        train = screen.query_one("#compare-train", MetricChart)
        val = screen.query_one("#compare-val", MetricChart)
        assert [s.label for s in train.series] == ["baby-char", "gpt2-wide"] == [s.label for s in val.series]
        assert len(train.series[0].xs) == 200
        assert len(train.series[1].xs) == 120
        diff = screen.query_one("#compare-diff")
        keys = [str(r.key.value) for r in diff.ordered_rows]
        assert {"model.n_layer", "model.n_embd", "train.max_iters", "train.lr", "tokenizer.spec", "params"} <= set(keys)
        assert "train.batch_size" not in keys
        assert "backend" not in keys
        assert "name" not in keys
        text = screen_text(app)
        assert "keys differ" in text
        assert "model.n_layer" in text
        # char and byte tokenizers: losses are not comparable, bits per byte are
        assert val.chart_title == "val bits/byte"
        assert val.series[0].ys[0] == pytest.approx(4.42 / math.log(2), abs=1e-4)
        assert keys[:2] == ["best val loss", "best val bits/byte"]
        best = {r: diff.get_row(r) for r in ("best val loss", "best val bits/byte")}
        assert str(best["best val loss"][1]) == "1.4749"
        assert float(str(best["best val bits/byte"][1])) == pytest.approx(1.4749 / math.log(2), abs=2e-4)
        await pilot.press("b")
        await settle(pilot)
        assert val.chart_title == "val loss"
        assert val.series[0].ys[0] == pytest.approx(4.42)
        await pilot.press("l")
        await settle(pilot)
        assert train.log_y
        assert "(log)" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)


async def test_help_and_command_palette_list_every_action(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        described = {b.description for b in RunsScreen.BINDINGS if b.description}
        titles = {c.title for c in app.get_system_commands(screen)}
        assert described <= titles, described - titles
        assert {"Go to Runs", "Go to Train", "Go to Chat", "Help", "Theme", "Quit", "Dashboard"} <= titles

        await pilot.press("f1")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for d in ("Compare", "Delete", "Rename", "Resume", "Stop", "Mark", "Filter", "Dashboard"):
            assert d in text, d
        await pilot.press("escape")
        await settle(pilot)

        # run an action from the palette: "New run" switches to the Train screen
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"New run")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "train", what="palette action ran")


async def test_resize_to_80x24_and_themes(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.screen.has_class("-wide")
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert app.screen.has_class("-narrow")
        text = screen_text(app)
        assert "live-run" in text
        assert "step" in text  # table and details both visible
        for theme in ("textual-light", "nord", "gruvbox", "textual-dark"):
            app.theme = theme
            await settle(pilot)
            assert "live-run" in screen_text(app)
        await pilot.resize_terminal(60, 16)  # smaller than designed for: still no crash
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert "Dashboard" in app.screen.sub_title


FAKE_TRAINER = r"""
import json, os, signal, sys, time
status = sys.argv[1]
def write(state):
    json.dump({"state": state, "pid": os.getpid(), "heartbeat": time.time(), "step": 40, "max_iters": 100}, open(status + ".tmp", "w"))
    os.replace(status + ".tmp", status)
def on_int(signum, frame):
    write("stopped")
    sys.exit(0)
signal.signal(signal.SIGINT, on_int)
write("running")
time.sleep(60)
"""


async def test_stop_signals_the_trainer_of_the_selected_run(tmp_path):
    """`s` sends the trainer (the pid in status.json) SIGINT, its graceful-stop signal."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    write_run(root, "victim", state="running", step=40, max_iters=100, pid=1)
    status = root / "victim" / "status.json"
    proc = subprocess.Popen([sys.executable, "-c", FAKE_TRAINER, str(status)])
    try:
        app = make_app(root)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: "running" in row_text(app, "victim") if table_names(app) else False,
                           timeout=30, what="fake trainer running")
            await select(pilot, "victim")
            await pilot.press("s")
            assert proc.wait(timeout=30) == 0  # it got SIGINT and exited cleanly
            await wait_for(pilot, lambda: "stopped" in row_text(app, "victim"), what="stopped shown")
            await pilot.press("s")  # no longer running: nothing is sent
            await settle(pilot)
            assert any("not running" in n for n in notifications(app))
    finally:
        proc.kill()


async def test_resume_asks_for_the_step_budget(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "baby-char")  # finished at 2000/2000: must train further
        await pilot.press("r")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, InputScreen)
        assert dialog.query_one("#value").value == "4000"
        dialog.query_one("#value").value = "1500"
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, InputScreen)
        assert "give more than 2000" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert app.launcher.launches == {}  # cancelled: nothing started
        await select(pilot, "live-run")
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert any("already running" in n for n in notifications(app))


async def test_symlinked_directories_are_not_runs(fixture_runs, tmp_path):
    outside = tmp_path / "outside"
    write_run(outside, "elsewhere")
    (fixture_runs / "sneaky").symlink_to(outside / "elsewhere", target_is_directory=True)
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "sneaky" not in table_names(app)
    assert (outside / "elsewhere" / "config.json").is_file()


async def test_gptbench_train_with_the_ui_launches_headless_training_and_opens_its_dashboard(tmp_path):
    """`gptbench train ...` (no --no-ui) starts the same command with --no-ui in its own
    process and shows its dashboard; here the corpus is missing, so the dashboard shows the
    trainer's own error."""
    from gptbench.cli import build_parser
    from gptbench.commands.ui import training_startup
    from gptbench.spec.cli import request_from_args
    from gptbench.tui.screens.dashboard import DashboardScreen

    root = tmp_path / "runs"
    args = build_parser().parse_args(["train", "--runs-dir", str(root), "--name", "cli-run", "--data", str(tmp_path / "gone.txt"),
                                      "--max-iters", "7"])
    app = create_app(args.runs_dir, "torch", clock=frozen_clock, poll_interval=0.2, startup=training_startup(request_from_args(args)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
        launch = app.launcher.get("cli-run")
        assert launch.command[3:5] == ["train", "--no-ui"]
        assert "--max-iters" in launch.command
        assert launch.proc.wait(timeout=60) == 2
        await wait_for(pilot, lambda: "failed to start" in screen_text(app), what="the trainer's error")
        assert "gone.txt" in squash(screen_text(app)).replace("\n", "")


async def test_columns_fit_what_is_shown_now_and_the_name_column_stays(fixture_runs):
    long_name = "a-very-long-run-name-that-goes-on-and-on-about-its-hyperparameters-lr3e-4"[:64]
    write_run(fixture_runs, long_name, created=FROZEN_NOW - 60)
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        width = table.scrollable_content_region.width
        name_col = table.columns["name"]
        assert name_col.width <= 0.3 * width  # capped: the long name does not push the rest away
        header = screen_text(app).splitlines()[5]
        for col in ("Name", "Status", "Step", "Best val", "Params", "Backend", "Device"):
            assert col in header, (col, header)
        assert long_name[:20] in screen_text(app)
        assert "…" in screen_text(app)  # cut with an ellipsis

        await select(pilot, long_name)
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await wait_for(pilot, lambda: long_name not in table_names(app), what="long run deleted")
        await settle(pilot)
        # fitted to what is left: "  lr-too-high" is the longest name now
        assert table.columns["name"].width == len("  lr-too-high")

        # scrolled sideways, the names stay in view
        table.scroll_x = table.max_scroll_x
        await settle(pilot)
        assert table.scroll_x > 0
        assert "baby-char" in screen_text(app)


async def test_home_and_end_go_to_the_first_and_last_run(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        await select(pilot, "baby-char")
        await pilot.press("end")
        await settle(pilot)
        assert table.current_name == table_names(app)[-1]
        assert table.scroll_x == 0
        assert "broken-run" in screen_text(app)
        await pilot.press("home")
        await settle(pilot)
        assert table.current_name == table_names(app)[0]


async def test_marking_is_documented_in_help(fixture_runs):
    app = make_app(fixture_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        await settle(pilot)
        text = squash(screen_text(app))
        assert "Space marks the selected run" in text
        assert "moves to the next row" in text


async def _open_each_screen(pilot, app):  # noqa: ANN001, ANN202
    """Yield after showing runs, dashboard, compare, train and chat in turn."""
    yield "runs"
    app.open_dashboard("baby-char")
    await wait_for(pilot, lambda: getattr(app.screen, "snap", None) is not None, what="dashboard")
    await settle(pilot)
    yield "dashboard"
    await pilot.press("escape")
    app.open_compare(["baby-char", "gpt2-wide"])
    await wait_for(pilot, lambda: len(getattr(app.screen, "snaps", {})) == 2, what="compare")
    await settle(pilot)
    yield "compare"
    await pilot.press("escape")
    await pilot.press("f3")
    await settle(pilot)
    yield "train"
    await pilot.press("f4")
    await settle(pilot)
    yield "chat"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_footer_fits_every_screen(fixture_runs, size):
    """Every key the footer shows is shown whole (the rest are in F1 help and Ctrl+P)."""
    app = make_app(fixture_runs)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        seen = []
        async for name in _open_each_screen(pilot, app):
            footer = screen_text(app).rstrip("\n").splitlines()[-1]
            shown: dict[str, list[str]] = {}  # description -> its keys (one binding may have several)
            for b in app.screen.active_bindings.values():
                if b.binding.show and b.binding.description:
                    shown.setdefault(b.binding.description, []).append(b.binding.key_display or app.get_key_display(b.binding))
            assert shown, name
            for description, keys in shown.items():
                assert any(f"{key} {description}" in footer for key in keys), (name, keys, description, footer)
            assert "^p palette" in footer
            seen.append(name)
        assert seen == ["runs", "dashboard", "compare", "train", "chat"]


async def test_every_run_state_is_shown_with_its_reason(tmp_path):
    """The states of the run directory (gptbench.runstore.format.RunState) in the table, and
    why a failed, crashed, stale or corrupt run is so in the details panel."""
    import os

    from gptbench.runstore import RunWriter
    from gptbench.runstore.format import LOCK

    root = tmp_path / "runs"
    write_run(root, "done", created=FROZEN_NOW - 900)
    write_run(root, "halted", state="stopped", step=500, created=FROZEN_NOW - 800)
    write_run(root, "diverged", state="failed", step=10, max_iters=100, created=FROZEN_NOW - 700,
              error="loss became nan at step 10; lower --lr (no checkpoint was saved)", log_error=True)
    write_run(root, "training", state="running", step=700, created=FROZEN_NOW - 600, pid=os.getpid())
    write_run(root, "vanished", state="running", step=300, created=FROZEN_NOW - 500, pid=999_999)  # no such process
    write_run(root, "hung", state="running", step=200, created=FROZEN_NOW - 400, pid=os.getpid(), heartbeat=FROZEN_NOW - 600)
    fresh = RunWriter.create(root, "fresh")  # a config and no status yet (a gptbench 0.1 trainer between the two)
    fresh.write_config(json.loads((root / "done" / "config.json").read_text()) | {"name": "fresh", "created": FROZEN_NOW - 300})
    fresh.close()
    (root / "fresh" / "status.json").unlink()
    claiming = RunWriter.create(root, "claiming")  # still loading data: the folder and its lock only
    (root / "killed-early").mkdir()
    (root / "killed-early" / LOCK).touch()  # a lock nobody holds: killed while starting
    (root / "garbled").mkdir()
    (root / "garbled" / "config.json").write_text("{ nope")
    try:
        app = make_app(root)
        async with app.run_test(size=(160, 44)) as pilot:
            await settle(pilot)
            expected = {
                "done": "✔ finished", "halted": "■ stopped", "diverged": "✖ failed", "training": "running",
                "vanished": "✖ crashed: process gone", "hung": "? stale", "fresh": "○ new", "claiming": "… starting",
                "killed-early": "✖ crashed: killed while starting", "garbled": "! corrupt: bad config.json",
            }
            assert sorted(table_names(app)) == sorted(expected)
            for name, status in expected.items():
                assert status in row_text(app, name), (name, row_text(app, name))
            reasons = {
                "diverged": "loss became nan at step 10; lower --lr (no checkpoint was saved)",
                "vanished": "its trainer process is gone",
                "hung": "no heartbeat for 10m00s",
                "killed-early": "killed while starting, before its config was written",
                "garbled": "config.json is unreadable",
            }
            for name, reason in reasons.items():
                await select(pilot, name)
                details = region_text(app, "#details-summary")
                assert f"reason {reason}" in details, (name, details)
            await select(pilot, "done")
            assert "reason" not in region_text(app, "#details-summary")
    finally:
        claiming.close()


async def test_details_name_a_damaged_checkpoint(fixture_runs):
    (fixture_runs / "baby-char" / "checkpoints" / "step-3000.safetensors").write_bytes(b"\x10\x00\x00")  # cut short
    app = make_app(fixture_runs)
    async with app.run_test(size=(140, 44)) as pilot:
        await settle(pilot)
        await select(pilot, "baby-char")
        details = squash(region_text(app, "#details-summary"))
        assert "damaged step-3000.safetensors is not a safetensors file (only 3 bytes)" in details, details
        assert "checkpoints 1 (best: step-2000)" in details
        await select(pilot, "gpt2-wide")
        assert "damaged" not in region_text(app, "#details-summary")


async def test_a_converted_run_shows_converted_instead_of_a_step_count(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "from-hf", step=0, max_iters=1, converted_from="hf:gpt2")
    app = make_app(root)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        row = row_text(app, "from-hf")
        assert "✔ finished | converted |" in row
        assert "0/1" not in row
        await select(pilot, "from-hf")
        assert "converted (no training here)" in squash(screen_text(app))


async def test_compare_shows_every_run_when_a_value_is_very_wide(tmp_path):
    root = tmp_path / "runs"
    names = [f"run-{i}" for i in range(5)]
    for i, name in enumerate(names):
        write_run(root, name, step=100, max_iters=100, lr=1e-3 * (i + 1), corpus=f"corpus-{i}.txt")
    cfg_path = root / "run-2" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["data"]["spec"] = "/home/someone/.cache/gptbench/tokens/" + "0123456789abcdef" * 6 + "/corpus-2.txt"
    cfg_path.write_text(json.dumps(cfg))
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.open_compare(names)
        await wait_for(pilot, lambda: len(getattr(app.screen, "snaps", {})) == 5, what="compare data")
        await settle(pilot)
        diff_box = screen_text(app).split("config diff")[1]
        for name in names:
            assert name in diff_box, name
        assert "…" in diff_box
        assert "corpus-2.txt" in diff_box  # a long value keeps its end
        table = app.screen.query_one("#compare-diff")
        assert table.max_scroll_x == 0


async def test_v_serves_the_selected_run_and_shows_address_and_requests(trained_run):
    """`v` starts `gptbench serve` for the selected run (its own process); the toolbar shows
    its address and request count; `v` again stops it (SIGTERM, graceful exit 0)."""
    import httpx

    runs = trained_run.path.parent
    app = create_app(runs, "torch", device="cpu", poll_interval=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await select(pilot, trained_run.name)
        await pilot.press("v")
        screen = app.screen
        status = screen.query_one("#serve-status")
        await wait_for(pilot, lambda: " at http://127.0.0.1:" in str(status.render()), timeout=120)
        server = screen.server
        r = httpx.post(server.address + "/completions", json={"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        await wait_for(pilot, lambda: "· 1 request ·" in str(status.render()), timeout=60)
        await pilot.press("v")
        await wait_for(pilot, lambda: any("stopped (exit 0)" in n for n in notifications(app)), timeout=60)
        assert server.proc.returncode == 0 and not status.display and screen.server is None


async def test_a_sweep_is_one_row_that_opens_onto_its_trials_and_compares_them_best_first(fixture_runs):
    """A sweep's trials are one collapsed row (best val among them, trials done); Enter
    expands it, x collapses it; m on the sweep or a trial opens compare on all its trials,
    best first, the swept settings as columns; Space on the sweep marks all its trials."""
    from gptbench.sweeps.record import SweepRecord, Trial, save

    trials = [Trial(0, "baby-char", {"train.lr": 1e-3}, [], "finished", {"best_val_bpb": 2.1, "step": 200}),
              Trial(1, "gpt2-wide", {"train.lr": 3e-3}, [], "finished", {"best_val_bpb": 1.9, "step": 120}),
              Trial(2, "lr-too-high", {"train.lr": 1e-1}, [], "failed", {})]
    save(fixture_runs, SweepRecord("sw", "tiny", [{"path": "train.lr", "kind": "grid", "values": [1e-3, 3e-3, 1e-1]}], "val_bpb", trials))
    app = make_app(fixture_runs)
    async with app.run_test(size=(160, 44)) as pilot:
        await wait_for(pilot, lambda: "sweep/sw" in table_names(app), what="the sweep's row")
        assert table_names(app) == ["live-run", "sweep/sw", "broken-run"]  # collapsed: no trial rows
        row = row_text(app, "sweep/sw")
        assert "▸ sw · 3 trials" in row and "3/3 done" in row
        best = min(s.best_val_loss for s in app.summaries if s.name in ("baby-char", "gpt2-wide", "lr-too-high") and s.best_val_loss)
        assert f"{best:.4f}" in row
        await select(pilot, "live-run")
        await pilot.press("m")  # not a sweep and nothing marked: a hint, no screen
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert any("Mark two or more runs" in n for n in notifications(app))
        await select(pilot, "sweep/sw")
        assert "sweep sw" in region_text(app, "#details")  # its summary table in the details panel
        await pilot.press("enter")  # expands, no dashboard
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        names = table_names(app)
        assert set(names) == {"live-run", "sweep/sw", "broken-run", "baby-char", "gpt2-wide", "lr-too-high"}
        assert names.index("sweep/sw") < min(names.index(n) for n in ("baby-char", "gpt2-wide", "lr-too-high")) < names.index("broken-run")
        assert "▾ sw" in row_text(app, "sweep/sw") and "└ baby-char" in row_text(app, "baby-char")
        await select(pilot, "baby-char")
        await pilot.press("m")  # a trial, nothing marked: the whole sweep
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert [s.label for s in screen.query_one("#compare-train", MetricChart).series] == ["gpt2-wide", "baby-char", "lr-too-high"]
        table = screen.query_one("#compare-diff")
        await wait_for(pilot, lambda: table.row_count == 3, what="the trials table")
        assert [str(c.label) for c in table.ordered_columns] == ["#", "run", "lr", "best val bpb", "state", "step"]
        assert [str(r.key.value) for r in table.ordered_rows] == ["gpt2-wide", "baby-char", "lr-too-high"]
        assert [str(c) for c in table.get_row("gpt2-wide")] == ["1", "gpt2-wide", "0.003", "1.9000", "finished", "120"]
        assert "best first by best val bpb" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("x")  # on a trial: collapses its sweep, the cursor on the sweep's row
        await settle(pilot)
        assert table_names(app) == ["live-run", "sweep/sw", "broken-run"]
        assert app.screen.query_one(RunTable).current_name == "sweep/sw"
        await pilot.press("m")  # on the sweep's row: the same
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen) and app.screen.sweep == "sw"
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        assert app.screen.marked == {"baby-char", "gpt2-wide", "lr-too-high"}
        assert "◆ ▸ sw" in row_text(app, "sweep/sw")
