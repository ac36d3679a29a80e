"""Pilot tests of runs trained on several processes: the run browser and the dashboard show
the world size, and a 2-process run started from the Train form stops from the dashboard
(every rank, one checkpoint) and resumes on 2 processes again."""

from __future__ import annotations

from tui_fixtures import frozen_clock, row_text, screen_text, settle, squash, wait_for, write_run

from gptbench.runstore import Run, RunState, RunStore, RunWriter
from gptbench.tui.app import create_app
from gptbench.tui.screens.dashboard import DashboardScreen
from gptbench.tui.screens.modals import InputScreen
from gptbench.tui.widgets.runtable import RunTable


def make_app(runs_dir, **kw):
    return create_app(runs_dir, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2, **kw)


def write_two_process_run(root, name: str, strategy: str = "fsdp") -> None:
    """A finished run as rank 0 of a 2-process run leaves it (through RunWriter)."""
    write_run(root, name)
    writer = RunWriter.open(root, name)
    with writer:
        cfg = writer.run.config()
        cfg["parallel"] = {"world_size": 2, "strategy": strategy, "comm": "gloo", "grad_accum_per_process": 1,
                           "activation_checkpointing": False}
        writer.write_config(cfg)
        st = writer.run.status()
        fields = {k: v for k, v in st.items() if k not in ("state", "pid", "host", "heartbeat")}
        writer.set_status(RunState.FINISHED, **{**fields, "world_size": 2, "strategy": strategy, "comm": "gloo"},
                          pid=st["pid"], host=st["host"], heartbeat=st["heartbeat"])


async def test_the_browser_and_dashboard_show_a_runs_world_size(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "one-process")
    write_two_process_run(root, "two-process")
    app = make_app(root)
    async with app.run_test(size=(160, 44)) as pilot:
        await settle(pilot)
        assert "| torch | cpu ×2 |" in row_text(app, "two-process")
        assert "| torch | cpu |" in row_text(app, "one-process")
        app.screen.query_one(RunTable).select_name("two-process")
        await settle(pilot)
        assert "processes 2 (fsdp)" in squash(screen_text(app))
        app.screen.query_one(RunTable).select_name("one-process")
        await settle(pilot)
        assert "processes" not in squash(screen_text(app))
        app.open_dashboard("two-process")
        await settle(pilot)
        dash = app.screen
        assert isinstance(dash, DashboardScreen)
        await wait_for(pilot, lambda: dash.snap is not None, what="first poll")
        await settle(pilot)
        assert "2 processes (fsdp) · step 2,000/2,000" in squash(screen_text(app))


async def test_a_two_process_run_starts_stops_and_resumes_from_the_app(tmp_path, corpus_file, request):
    root = tmp_path / "runs"
    request.addfinalizer(lambda: [run.request_stop() for run in RunStore(root).runs()])  # trainers outlive the app
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        screen = app.screen
        form = {w.id: w for w in screen.query("Input")}
        for key, value in {"name": "ui-ddp", "data": str(corpus_file), "max_iters": "100000", "batch_size": "4",
                           "block_size": "16", "n_layer": "1", "n_head": "2", "n_embd": "16", "eval_interval": "1000",
                           "nproc": "2"}.items():
            form[key].value = value
        screen.query_one("#backend").value = "torch"
        screen.query_one("#device").value = "cpu"
        await settle(pilot)
        await pilot.click("#start")
        await settle(pilot)
        dash = app.screen
        assert isinstance(dash, DashboardScreen)
        assert dash.run_name == "ui-ddp"
        launch = app.launcher.get("ui-ddp")
        assert "--nproc 2" in " ".join(launch.command)
        run = Run(root / "ui-ddp")
        await wait_for(pilot, lambda: run.status().get("state") == "running" and run.status().get("step", 0) >= 10,
                       timeout=120, what="both ranks training")
        assert run.status()["world_size"] == 2
        await wait_for(pilot, lambda: "2 processes (ddp)" in squash(screen_text(app)), what="world size on the dashboard")

        await pilot.press("s")  # the app's Stop: SIGINT to rank 0, agreed by every rank
        await wait_for(pilot, lambda: run.status().get("state") == "stopped", timeout=90, what="graceful stop")
        stopped_at = run.status()["step"]
        assert [c.step for c in run.checkpoints()] == [stopped_at]  # one checkpoint, where both stopped
        await wait_for(pilot, lambda: launch.returncode is not None, timeout=60, what="launcher reaped")
        assert launch.returncode == 130

        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, InputScreen)
        app.screen.query_one("#value").value = str(stopped_at + 10)
        await pilot.press("enter")
        await settle(pilot)
        resumed = app.launcher.get("ui-ddp")
        assert "--resume ui-ddp --nproc 2" in " ".join(resumed.command)  # on as many processes as before
        await wait_for(pilot, lambda: run.status().get("state") == "finished", timeout=120, what="resumed run to finish")
        assert run.status()["step"] == stopped_at + 10
        assert run.status()["world_size"] == 2
