"""SVG snapshots of every screen at 120x40 and 80x24 on hand-written, deterministic runs
(fixed metrics and timestamps, frozen clock, UTC). Regenerate after an intended change
with `pytest tests/tui/test_snapshots.py --snapshot-update` and review the SVGs."""

from __future__ import annotations

import time

import pytest
from tui_fixtures import frozen_clock, make_fixture_runs, settle, wait_for

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
