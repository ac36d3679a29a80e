"""SVG snapshots of every screen at 120x40 and 80x24 on hand-written, deterministic runs
(fixed metrics and timestamps, frozen clock, UTC). Regenerate after an intended change
with `pytest tests/tui/test_snapshots.py --snapshot-update` and review the SVGs."""

from __future__ import annotations

import time

import pytest
from tui_fixtures import FROZEN_NOW, frozen_clock, make_fixture_runs, settle, wait_for, write_run

from textual.widgets import Input

from gptbench.tui.app import create_app
from gptbench.tui.widgets.runtable import RunTable

SIZES = [(120, 40), (80, 24)]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)  # the runs directory shows as "runs"
    yield make_fixture_runs(tmp_path / "runs")
    monkeypatch.undo()
    time.tzset()


def make_app(root):
    return create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.5)


async def steady(pilot):
    """Settle, and stop text cursors blinking (a blink phase is not deterministic)."""
    await settle(pilot)
    for screen in pilot.app.screen_stack:
        for widget in screen.query(Input):
            widget.cursor_blink = False
    await settle(pilot)


async def select(pilot, name):
    pilot.app.screen.query_one(RunTable).select_name(name)
    await settle(pilot)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_screen(snap_compare, runs, size):
    async def before(pilot):
        await settle(pilot)
        await select(pilot, "baby-char")
        await steady(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare, runs, size):
    async def before(pilot):
        await settle(pilot)
        pilot.app.open_dashboard("baby-char")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "snap", None) is not None, what="dashboard data")
        await settle(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_train_form(snap_compare, runs, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        pilot.app.screen.query_one("#max_iters").value = "-5"  # shows an inline validation message
        await steady(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat(snap_compare, runs, size):
    async def before(pilot):
        await settle(pilot)
        pilot.app.open_chat("baby-char")
        await settle(pilot)
        await wait_for(pilot, lambda: pilot.app.screen.picker.model is not None, timeout=60, what="model loaded")
        pilot.app.screen.query_one("#prompt").value = "héllo"  # not in the char vocabulary: inline error
        await steady(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compare(snap_compare, runs, size):
    async def before(pilot):
        await settle(pilot)
        pilot.app.open_compare(["baby-char", "gpt2-wide", "lr-too-high"])
        await wait_for(pilot, lambda: len(getattr(pilot.app.screen, "snaps", {})) == 3, what="compare data")
        await settle(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_failed_run_dashboard(snap_compare, runs, size):
    """The reason a run failed in the header (wrapped) and as the log's last line."""
    write_run(runs, "diverged", state="failed", step=10, max_iters=100, created=FROZEN_NOW - 600, elapsed=0.0,
              heartbeat=FROZEN_NOW - 600 + 8.0, log_error=True,
              error="loss became nan at step 10; lower --lr or raise --warmup-iters, and resume from the last "
                    "checkpoint (no checkpoint was saved)")

    async def before(pilot):
        await settle(pilot)
        pilot.app.open_dashboard("diverged")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "snap", None) is not None, what="dashboard data")
        await settle(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_run_states(snap_compare, runs, size):
    """Crashed, stale and converted runs in the table; the crashed run's reason in the details."""
    write_run(runs, "vanished", state="running", step=300, created=FROZEN_NOW - 100, pid=999_999)
    write_run(runs, "hung", state="running", step=200, created=FROZEN_NOW - 200, heartbeat=FROZEN_NOW - 600,
              pid=__import__("os").getpid())
    write_run(runs, "gpt2-from-hf", step=0, max_iters=1, created=FROZEN_NOW - 300, converted_from="hf:gpt2")

    async def before(pilot):
        await settle(pilot)
        await select(pilot, "vanished")
        await steady(pilot)

    assert snap_compare(make_app(runs), terminal_size=size, run_before=before)


def test_help(snap_compare, runs):
    assert snap_compare(make_app(runs), terminal_size=(120, 40), press=["f1"], run_before=steady)


def test_delete_confirmation(snap_compare, runs):
    async def before(pilot):
        await settle(pilot)
        await select(pilot, "gpt2-wide")
        await steady(pilot)

    assert snap_compare(make_app(runs), terminal_size=(80, 24), run_before=before, press=["d"])


def test_empty_runs_directory(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert snap_compare(make_app(tmp_path / "runs"), terminal_size=(80, 24), run_before=steady)
