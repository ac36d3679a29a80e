"""Pilot tests of the Train form and the live dashboard, including a real training
subprocess started from the form, stopped gracefully (checkpoint + `stopped`) and resumed
to completion from the dashboard."""

from __future__ import annotations

import json

from tui_fixtures import FROZEN_NOW, frozen_clock, make_fixture_runs, notifications, screen_text, settle, squash, wait_for, write_run

from gptbench.runstore import Run
from gptbench.tui.app import create_app
from gptbench.tui.screens.dashboard import DashboardScreen
from gptbench.tui.screens.modals import InputScreen
from gptbench.tui.screens.train import TrainScreen
from gptbench.tui.widgets.charts import MetricChart


def make_app(runs_dir, **kw):
    return create_app(runs_dir, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2, **kw)


async def open_dashboard(pilot, name):
    pilot.app.open_dashboard(name)
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DashboardScreen)
    await wait_for(pilot, lambda: screen.snap is not None, what="first poll")
    await settle(pilot)
    return screen


async def test_dashboard_of_a_finished_run(tmp_path):
    root = make_fixture_runs(tmp_path / "runs")
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_dashboard(pilot, "baby-char")
        text = squash(screen_text(app))
        assert "finished" in text
        assert "100%" in text
        assert "step 2,000/2,000" in text
        assert "best val 1.4749" in text
        assert "finished after 5m12s" in text
        assert "sample at step 2,000" in text
        assert "ROMEO: the king said to the queen," in text
        assert "step 2000: train loss 1.3111" in text  # log tail
        loss = screen.query_one("#chart-loss", MetricChart)
        assert len(loss.series[0].xs) == 200
        assert loss.series[1].xs[-1] == 2000
        assert len(screen.query_one("#chart-lr", MetricChart).series[0].ys) == 200
        assert "loss · smoothing 0.6" in text

        await pilot.press("l")
        await settle(pilot)
        assert loss.log_y
        assert "(log)" in screen_text(app)
        await pilot.press("plus", "plus")
        await settle(pilot)
        assert loss.smoothing == 0.9
        assert "smoothing 0.9" in screen_text(app)
        for _ in range(6):
            await pilot.press("minus")
        await settle(pilot)
        assert loss.smoothing == 0.0
        assert "smoothing" not in screen_text(app)

        await pilot.press("s")  # not running: explained, nothing sent
        await settle(pilot)
        assert any("not running" in n for n in notifications(app))
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, DashboardScreen)


async def test_dashboard_follows_a_growing_run_and_tolerates_torn_lines(tmp_path):
    root = make_fixture_runs(tmp_path / "runs")
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_dashboard(pilot, "live-run")
        loss = screen.query_one("#chart-loss", MetricChart)
        n0 = len(loss.series[0].xs)
        assert "running" in screen_text(app)
        assert "35%" in screen_text(app)
        metrics = root / "live-run" / "metrics.jsonl"
        with open(metrics, "a") as f:
            f.write(json.dumps({"type": "train", "step": 710, "loss": 1.9, "lr": 9e-4, "tokens_per_sec": 6000.0, "time": 1.0}) + "\n")
            f.write('{"type": "train", "step": 720, "lo')  # the trainer is mid-append
        await wait_for(pilot, lambda: len(loss.series[0].xs) == n0 + 1, what="new point plotted")
        with open(metrics, "a") as f:
            f.write('ss": 1.8, "lr": 9e-4, "tokens_per_sec": 6000.0, "time": 2.0}\n')
            f.write(json.dumps({"type": "sample", "step": 720, "text": "a brand new sample"}) + "\n")
        await wait_for(pilot, lambda: len(loss.series[0].xs) == n0 + 2, what="torn line completed")
        assert loss.series[0].ys[-2:].tolist() == [1.9, 1.8]
        with open(root / "live-run" / "log.txt", "a") as f:
            f.write("2024-06-01 09:01:00 a fresh log line\n")
        st = json.loads((root / "live-run" / "status.json").read_text())
        st["step"] = 1000
        (root / "live-run" / "status.json").write_text(json.dumps(st))
        await wait_for(pilot, lambda: "a fresh log line" in screen_text(app) and "50%" in screen_text(app), what="log + progress")
        assert "a brand new sample" in screen_text(app)


async def test_train_form_validates_inline(tmp_path, corpus_file):
    root = tmp_path / "runs"
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        form = {w.id: w for w in screen.query("Input")}
        form["max_iters"].value = "ten"
        form["lr"].value = "-1"
        form["data"].value = str(tmp_path / "missing.txt")
        form["name"].value = "bad name"
        form["tokenizer"].value = "sentencepiece"
        await settle(pilot)
        text = screen_text(app)
        for msg in ("max iters must be an integer", "learning rate must be a number", "no such file or folder",
                    "letters, digits", "char | byte | gpt2"):
            assert msg in text, msg
        assert screen.query_one("#start").disabled
        for key in ("max_iters", "lr", "name", "tokenizer"):
            form[key].value = ""
        form["data"].value = str(corpus_file)
        form["n_head"].value = "3"
        form["n_embd"].value = "32"
        await settle(pilot)
        assert "divisible" in screen_text(app)  # the trainer's own config check, inline
        assert screen.query_one("#start").disabled
        form["n_head"].value = "4"
        await settle(pilot)
        assert not screen.query_one("#start").disabled
        assert f"--data {corpus_file}" in squash(screen_text(app)).replace("\n", "")  # the command it will run
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert form["n_head"].value == ""
        assert form["data"].value == ""
        assert not list(root.glob("*"))  # nothing launched


def stop_trainers(root) -> None:  # noqa: ANN001
    """Trainers outlive the UI by design; a failed test must not leave one running."""
    from gptbench.runstore import RunStore

    for run in RunStore(root).runs():
        run.request_stop()


async def test_start_stop_and_resume_a_real_run(tmp_path, corpus_file, request):
    """Start from the form -> a real `gptbench train --no-ui` process trains; Stop -> it
    checkpoints and is `stopped`; Resume from the dashboard -> it finishes."""
    root = tmp_path / "runs"
    request.addfinalizer(lambda: stop_trainers(root))
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        screen = app.screen
        form = {w.id: w for w in screen.query("Input")}
        for key, value in {"name": "ui-run", "data": str(corpus_file), "max_iters": "100000", "batch_size": "4",
                           "block_size": "16", "n_layer": "1", "n_head": "2", "n_embd": "16", "eval_interval": "1000"}.items():
            form[key].value = value
        screen.query_one("#backend").value = "torch"
        screen.query_one("#device").value = "cpu"
        await settle(pilot)
        await pilot.click("#start")
        await settle(pilot)
        dash = app.screen
        assert isinstance(dash, DashboardScreen)
        assert dash.run_name == "ui-run"
        run = Run(root / "ui-run")
        launch = app.launcher.get("ui-run")
        cmd = " ".join(launch.command)
        assert "-m gptbench train --no-ui" in cmd
        assert "--name ui-run" in cmd
        assert "--eval-interval 1000 " in cmd + " "
        await wait_for(pilot, lambda: run.status().get("state") == "running" and run.status().get("step", 0) >= 20,
                       timeout=90, what="training to start")
        await wait_for(pilot, lambda: dash.snap is not None and len(dash.snap.series.train_step) >= 2, what="metrics on the dashboard")
        assert "running" in screen_text(app)
        assert "ETA" in screen_text(app)
        assert run.status()["pid"] == launch.proc.pid  # its own process (new session), not the app

        await pilot.press("s")
        await wait_for(pilot, lambda: run.status().get("state") == "stopped", timeout=60, what="graceful stop")
        stopped_at = run.status()["step"]
        assert run.checkpoint("last").step == stopped_at  # it checkpointed before stopping
        await wait_for(pilot, lambda: dash.snap.state == "stopped", what="dashboard shows stopped")
        await wait_for(pilot, lambda: launch.returncode is not None, what="process reaped")

        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, InputScreen)
        app.screen.query_one("#value").value = str(stopped_at + 20)
        await pilot.press("enter")
        await wait_for(pilot, lambda: run.status().get("state") == "finished", timeout=90, what="resumed run to finish")
        assert run.status()["step"] == stopped_at + 20
        assert run.config()["train"]["max_iters"] == stopped_at + 20
        await wait_for(pilot, lambda: dash.snap.state == "finished", what="dashboard shows finished")


async def test_a_launch_that_fails_shows_the_trainers_error(tmp_path):
    root = tmp_path / "runs"
    app = make_app(root)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        from helpers import resolve_config

        app.start_training(resolve_config(run_flags={"name": "doomed", "data": str(tmp_path / "nope.txt"), "tokenizer": "char"}))
        await settle(pilot)
        launch = app.launcher.get("doomed")
        await wait_for(pilot, lambda: launch.returncode is not None, timeout=60, what="trainer to exit")
        await wait_for(pilot, lambda: "failed to start" in screen_text(app), what="error on the dashboard")
        assert "nope.txt" in squash(screen_text(app)).replace("\n", "")
        assert any("nope.txt" in n for n in notifications(app))


NAN_ERROR = "loss became nan at step 10; lower --lr or raise --warmup-iters, and resume from the last checkpoint (no checkpoint was saved)"


async def test_a_failed_run_says_why_in_the_header_and_the_log(tmp_path):
    """As the trainer leaves a run that diverged at its first log step: status `failed`
    with `error` and `step`, elapsed 0 (no timing window ended), the reason last in log.txt."""
    root = tmp_path / "runs"
    t0 = FROZEN_NOW - 600
    write_run(root, "diverged", state="failed", step=10, max_iters=100, created=t0, elapsed=0.0, heartbeat=t0 + 5 + 3.0,
              error=NAN_ERROR, log_error=True)
    write_run(root, "old-failed", state="failed", step=300, max_iters=2000, created=t0, elapsed=41.0,
              error="loss became nan at step 300; lower --lr")  # an older trainer: the reason in status.json only
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_dashboard(pilot, "diverged")
        text = squash(screen_text(app))
        header = text.split("╭", 1)[0]  # everything above the charts
        assert "✖ failed" in header
        assert "10%" in header
        assert "step 10/100" in header
        assert "failed after 3s" in header
        assert "loss became nan at step 10; lower --lr or raise --warmup-iters" in header.replace("\n", " ")
        log = screen.query_one("#dash-log")
        shown = " ".join(" ".join(s.text.split()) for s in log.lines)
        assert shown.count("loss became nan at step 10") == 1  # from log.txt, not repeated
        assert shown.endswith("(no checkpoint was saved)")

        await pilot.press("escape")
        screen = await open_dashboard(pilot, "old-failed")
        log = screen.query_one("#dash-log")
        shown = " ".join(" ".join(s.text.split()) for s in log.lines)
        assert shown.endswith("✖ loss became nan at step 300; lower --lr")  # the pane adds it
        assert "failed after 41s" in squash(screen_text(app))


async def test_a_converted_run_says_converted_not_a_step_count(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "from-hf", step=0, max_iters=1, converted_from="hf:gpt2")
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await open_dashboard(pilot, "from-hf")
        text = squash(screen_text(app))
        assert "converted from hf:gpt2 · no training metrics" in text
        assert "0/1" not in text
        assert "0%" not in text  # no progress bar


async def test_function_keys_leave_a_dashboard_and_hidden_dashboards_stop_polling(tmp_path):
    root = make_fixture_runs(tmp_path / "runs")
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        app.open_dashboard("live-run")  # as Start on the train form does
        await settle(pilot)
        dash = app.screen
        assert isinstance(dash, DashboardScreen)
        polls = []
        real_poll = dash.watcher.poll
        dash.watcher.poll = lambda *a, **k: polls.append(1) or real_poll(*a, **k)
        await wait_for(pilot, lambda: len(polls) >= 1, what="the dashboard polling")

        await pilot.press("f2")  # to the runs screen: the dashboard stays in the train mode, hidden
        await settle(pilot)
        seen = len(polls)
        await pilot.pause(1.0)  # the poll interval is 1 s: a visible dashboard would have polled again
        await settle(pilot)
        assert len(polls) == seen

        await pilot.press("f3")  # F3 means the train form, even from a dashboard opened by it
        await settle(pilot)
        assert isinstance(app.screen, TrainScreen)
        assert app.screen_stack == [app.screen]
