"""The TUI's data layer (no Textual): scanning, tailing, diffs, formatting, launch flags."""

from __future__ import annotations

import json
import os

import pytest
from tui_fixtures import FROZEN_NOW, make_fixture_runs, write_run

from gptbench.runstore import Run
from gptbench.tui.runsdata import (
    MetricSeries,
    RunScanner,
    RunWatcher,
    TextTail,
    config_diff,
    flatten,
    fmt_age,
    fmt_duration,
)
from gptbench.runstore import RunWriter, read_summary


def test_scanner_reports_every_state_and_only_real_changes(tmp_path):
    root = make_fixture_runs(tmp_path / "runs")
    scanner = RunScanner(root)
    rows, changed = scanner.scan()
    assert changed
    states = {s.name: s.state for s in rows}
    assert states == {"baby-char": "finished", "broken-run": "corrupt", "gpt2-wide": "stopped",
                      "live-run": "running", "lr-too-high": "failed"}
    broken = next(s for s in rows if s.name == "broken-run")
    assert broken.error.startswith("config.json is unreadable")
    assert scanner.scan()[1] is False  # nothing changed on disk

    st = json.loads((root / "live-run" / "status.json").read_text())
    st["step"] = 900
    (root / "live-run" / "status.json").write_text(json.dumps(st))
    rows, changed = scanner.scan()
    assert changed
    assert next(s for s in rows if s.name == "live-run").step == 900

    write_run(root, "newcomer", step=10, max_iters=100)
    rows, changed = scanner.scan()
    assert changed
    assert "newcomer" in {s.name for s in rows}


def test_scanner_does_not_reread_unchanged_finished_runs(tmp_path, monkeypatch):
    root = make_fixture_runs(tmp_path / "runs")
    scanner = RunScanner(root)
    scanner.scan()
    reads = []
    import gptbench.tui.runsdata as rd

    real = rd.read_summary
    monkeypatch.setattr(rd, "read_summary", lambda run, now=None: reads.append(run.name) or real(run, now))
    scanner.scan()
    assert reads == ["live-run"]  # only the live run is re-checked (pid / heartbeat)


def test_scanner_on_missing_or_file_root(tmp_path):
    assert RunScanner(tmp_path / "nope").scan() == ([], True)
    f = tmp_path / "file"
    f.write_text("x")
    assert RunScanner(f).scan()[0] == []


def test_read_summary_never_raises_and_explains(tmp_path):
    run = tmp_path / "weird"
    write_run(tmp_path, "weird")
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": "not-a-number"}))
    s = read_summary(Run(run))
    assert s.state == "corrupt"
    assert "'step' must be int, got 'not-a-number'" in s.error

    (run / "status.json").write_text("{torn")
    assert read_summary(Run(run)).state == "corrupt"
    assert "status.json is unreadable" in read_summary(Run(run)).error

    (run / "status.json").unlink()
    assert read_summary(Run(run)).state == "new"  # config written, trainer not started yet

    # a folder being claimed (its lock held) is starting; once the claimer is gone, crashed
    claim = RunWriter.create(tmp_path, "young")
    assert read_summary(Run(tmp_path / "young")).state == "starting"
    claim.lock.release()
    (tmp_path / "young" / "status.json").unlink()
    assert read_summary(Run(tmp_path / "young")).state == "crashed"
    bare = tmp_path / "bare"
    bare.mkdir()
    assert read_summary(Run(bare)).state == "corrupt"  # not a claim: no lock, no config


def test_metric_series_handles_resume_and_bad_records():
    s = MetricSeries()
    recs = [{"type": "train", "step": i, "loss": 3.0 - i / 100, "lr": 1e-3, "tokens_per_sec": 100.0, "time": i} for i in (10, 20, 30)]
    recs += [{"type": "eval", "step": 20, "train_loss": 2.8, "val_loss": 2.9}, {"type": "sample", "step": 20, "text": "hi"}]
    recs += [{"type": "train", "step": "x"}, {"type": "mystery"}, {"type": "eval"}]
    assert s.extend(recs)
    assert s.train_step.tolist() == [10, 20, 30]
    assert s.eval_step.tolist() == [20]
    assert s.sample_text == "hi"
    # a resumed run re-logs from its checkpoint at step 20: the curve is cut, not doubled
    s.extend([{"type": "train", "step": 20, "loss": 9.0, "lr": 1e-3, "tokens_per_sec": 1.0, "time": 100}])
    assert s.train_step.tolist() == [10, 20]
    assert s.train_loss[-1] == 9.0
    assert not s.extend([{"type": "nothing"}])


def test_steps_per_sec_uses_wall_time():
    s = MetricSeries()
    s.extend([{"type": "train", "step": 10 * i, "loss": 1.0, "time": 100.0 + 2 * i} for i in range(1, 6)])
    assert s.steps_per_sec() == pytest.approx(5.0)


def test_text_tail_is_incremental_and_tolerates_partial_lines(tmp_path):
    p = tmp_path / "log.txt"
    tail = TextTail(p, max_lines=3)
    assert tail.poll() == []
    p.write_text("a\nb\npart")
    assert tail.poll() == ["a", "b"]
    with open(p, "a") as f:
        f.write("ial\nc\nd\n")
    assert tail.poll() == ["partial", "c", "d"]
    assert list(tail.lines) == ["partial", "c", "d"]
    assert tail.total == 5
    p.write_text("new\n")  # replaced: start again
    assert tail.poll() == ["new"]


def test_watcher_snapshots_only_on_change(tmp_path):
    run = write_run(tmp_path, "r", step=100, max_iters=200)
    w = RunWatcher(Run(run))
    snap = w.poll()
    assert snap is not None
    assert snap.state == "finished"
    assert snap.series.train_step[-1] == 100
    assert snap.config["name"] == "r"
    assert snap.log_total == len(snap.log_lines) > 0
    assert w.poll() is None
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": 110, "loss": 1.0}) + "\n" + '{"type": "tr')
    snap2 = w.poll()
    assert snap2.series.train_step[-1] == 110
    assert snap.series.train_step[-1] == 100  # earlier snapshots are independent copies


def test_config_diff_lists_only_differing_keys():
    a = {"name": "a", "created": 1, "model": {"n_layer": 4, "n_head": 4}, "train": {"lr": 1e-3}, "backend": "torch"}
    b = {"name": "b", "created": 2, "model": {"n_layer": 6, "n_head": 4}, "train": {"lr": 1e-3}, "backend": "mlx", "extra": 1}
    rows = dict(config_diff({"a": a, "b": b}))
    assert rows == {"model.n_layer": [4, 6], "backend": ["torch", "mlx"], "extra": [None, 1]}
    assert config_diff({"a": a, "b": dict(a)}) == []
    assert flatten({"x": {"y": {"z": 1}}, "e": {}}) == {"x.y.z": 1, "e": {}}


def test_formatting():
    assert fmt_duration(59) == "59s"
    assert fmt_duration(61) == "1m01s"
    assert fmt_duration(3 * 3600 + 120) == "3h02m"
    assert fmt_duration(None) == "-"
    assert fmt_age(FROZEN_NOW - 10, FROZEN_NOW) == "just now"
    assert fmt_age(FROZEN_NOW - 300, FROZEN_NOW) == "5m ago"
    assert fmt_age(FROZEN_NOW - 2 * 86400, FROZEN_NOW) == "2d ago"


def test_train_flags_round_trip_through_the_cli_parser(tmp_path):
    """`gptbench train ...` (with the UI) launches `gptbench train --no-ui` with the same spec, whole."""
    from gptbench.cli import build_parser
    from gptbench.spec.cli import request_argv, request_from_args

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello")
    argv = ["train", "--name", "x1", "--data", str(corpus), "--tokenizer", "char", "--n-layer", "2", "--lr", "0.002",
            "--max-iters", "50", "--no-bias", "--untied", "--backend", "torch"]
    spec = request_from_args(build_parser().parse_args(argv))
    assert spec.name == "x1"
    again = request_from_args(build_parser().parse_args(["train", "--no-ui", *request_argv(spec)]))
    assert again == spec
    assert (again.data, again.tokenizer, again.model.n_layer, again.train.lr, again.train.max_iters) == (str(corpus), "char", 2, 0.002, 50)
    assert (again.model.bias, again.model.tie_embeddings, again.runtime.backend) == (False, False, "torch")

    resume = request_from_args(build_parser().parse_args(["train", "--resume", "x1", "--max-iters", "80"]))
    assert resume.name == "x1"
    flags = request_argv(resume)
    assert flags[:2] == ["--resume", "x1"]
    assert "--name" not in flags


def test_launcher_reports_the_trainers_error_line(tmp_path):
    from gptbench.tui.launcher import Launcher

    launcher = Launcher(tmp_path / "runs")
    from helpers import resolve_config

    launch = launcher.start(resolve_config(run_flags={"name": "bad", "data": str(tmp_path / "no-such-corpus.txt")}))
    launch.proc.wait(timeout=60)
    ended = launcher.reap()
    assert ended == [launch]
    assert launch.returncode == 2
    assert "no-such-corpus.txt" in launch.error_line()
    assert launch.out_path.parent.name == ".launch"
    assert not (tmp_path / "runs" / "bad").exists()
    assert launcher.reap() == []
    assert os.path.isdir(tmp_path / "runs")


def test_browser_rows_group_a_sweeps_trials_under_one_row():
    """A sweep is one row among the runs (sorted by its summary), its trials after it only
    when expanded; a filter keeps the sweep when its name or a trial matches."""
    from gptbench.runstore import RunSummary
    from gptbench.tui.sweeprows import SweepInfo, browser_rows

    runs = [RunSummary("solo", "finished", best_val_loss=2.0, created=5.0),
            RunSummary("sw-000", "finished", best_val_loss=1.5, created=1.0, backend="torch"),
            RunSummary("sw-001", "running", best_val_loss=1.2, created=2.0, backend="torch")]
    sweeps = {"sw": SweepInfo("sw", ("sw-000", "sw-001", "sw-002"), ("finished", "running", "pending"))}
    by_created = (lambda s: s.created)

    def keys(expanded=(), query=""):
        keep = (lambda s: query in s.name) if query else (lambda s: True)
        return [r.key for r in browser_rows(runs, sweeps, set(expanded), keep, by_created, True)]

    assert keys() == ["solo", "sweep/sw"]
    assert keys(["sw"]) == ["solo", "sweep/sw", "sw-001", "sw-000"]
    assert keys(["sw"], "001") == ["sweep/sw", "sw-001"]
    assert keys(["sw"], "sw") == ["sweep/sw", "sw-001", "sw-000"]
    assert keys(["sw"], "solo") == ["solo"]
    [row] = [r for r in browser_rows(runs, sweeps, set(), lambda s: True, by_created, True) if r.kind == "sweep"]
    s = row.summary
    assert (s.state, s.step, s.max_iters, s.best_val_loss, s.backend, s.created, row.trials) == ("running", 1, 3, 1.2, "torch", 1.0, 2)
