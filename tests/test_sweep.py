"""`gptbench sweep`: the search space, bad input, a 2x2 grid end to end, and a resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import assert_one_line, run_cli_output

# every trial shares these: a tiny char model on the fixture corpus, one CPU thread
TINY = ["--preset", "tiny", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--sample-tokens", "0", "--log-interval", "5", "--warmup-iters", "2",
        "--backend", "torch", "--device", "cpu", "--threads", "1"]


def test_keys_are_any_setting_by_flag_field_or_path():
    from gptbench.errors import UserError
    from gptbench.sweeps.space import find_setting

    assert find_setting("lr").path == "train.lr"
    assert find_setting("n_layer").path == find_setting("n-layer").path == find_setting("model.n_layer").path == "model.n_layer"
    assert find_setting("dropout").path == "model.dropout"  # the flag --dropout; --lora-dropout is lora_dropout
    assert find_setting("lora_dropout").path == "lora.dropout"
    assert find_setting("max_time").path == "train.max_time"
    for bad, message in (("learning_rate", "unknown setting"), ("name", "cannot be swept")):
        with pytest.raises(UserError, match=message):
            find_setting(bad)


def test_grid_values_are_read_as_the_setting_reads_them():
    from gptbench.sweeps.space import parse_grid, parse_random

    assert parse_grid("lr=1e-3,3e-3").values == (1e-3, 3e-3)
    assert parse_grid("n_layer=4,6").values == (4, 6)
    assert parse_grid("qk_norm=true,false").values == (True, False)
    assert parse_grid("max_time=90s,2m").values == (90.0, 120.0)
    assert parse_grid("mlp=gelu,swiglu").values == ("gelu", "swiglu")
    r = parse_random("lr=log:1e-4..1e-2")
    assert (r.kind, r.low, r.high) == ("log", 1e-4, 1e-2)
    assert parse_random("norm=choice:layernorm,rmsnorm").values == ("layernorm", "rmsnorm")


def test_trials_are_the_grid_product_with_seeded_draws():
    from gptbench.spec.settings import BY_PATH
    from gptbench.sweeps.space import parse_grid, parse_random, plan_trials

    grid = [parse_grid("lr=1e-3,3e-3"), parse_grid("n_layer=4,6")]
    assert plan_trials(grid, [], None, 0) == [
        {"train.lr": 1e-3, "model.n_layer": 4}, {"train.lr": 1e-3, "model.n_layer": 6},
        {"train.lr": 3e-3, "model.n_layer": 4}, {"train.lr": 3e-3, "model.n_layer": 6}]
    rand = [parse_random("lr=log:1e-4..1e-2"), parse_random("n_layer=lin:2..8")]
    trials = plan_trials([], rand, 200, 7)
    assert trials == plan_trials([], rand, 200, 7) != plan_trials([], rand, 200, 8)
    lrs = [t["train.lr"] for t in trials]
    assert all(1e-4 <= x <= 1e-2 for x in lrs)
    below = sum(x < 1e-3 for x in lrs)  # log-uniform: half the draws below the geometric middle
    assert 70 < below < 130
    assert {t["model.n_layer"] for t in trials} == set(range(2, 9))
    assert all(isinstance(t["model.n_layer"], BY_PATH["model.n_layer"].kind) for t in trials)
    assert len(plan_trials(grid[:1], rand[1:], 3, 0)) == 6


@pytest.mark.parametrize("argv, needle", [
    (["--grid", "learning_rate=1,2"], "unknown setting 'learning_rate'"),
    (["--grid", "lr="], "empty value"),
    (["--grid", "lr=1e-3,,2e-3"], "empty value"),
    (["--grid", "n_layer=4,four"], "cannot read 'four'"),
    (["--random", "lr=log:0..1"], "range does not parse"),
    (["--random", "lr=log:1e-2..1e-4"], "range does not parse"),
    (["--random", "lr=lin:a..b"], "range does not parse"),
    (["--random", "lr=uniform:1..2"], "log:A..B"),
    (["--random", "lr=log:1e-4..1e-2", "--trials", "0"], "--trials"),
    (["--grid", "lr=1e-3", "--trials", "3"], "--trials counts random draws"),
    ([], "nothing to sweep"),
    (["--grid", "lr=1e-3", "--max-time", "0"], "--max-time"),
    (["--grid", "n_head=3"], "trial 0"),
    (["--grid", "lr=1e-3", "--parallel", "0"], "--parallel"),
    (["--resume", "nosuch"], "no sweep named 'nosuch'"),
])
def test_bad_input_is_one_line_and_creates_nothing(capsys, runs_dir, corpus_file, argv, needle):
    shared = [] if argv[:1] == ["--resume"] else ["--data", corpus_file, *TINY]
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "sweep", *shared, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert list(runs_dir.iterdir()) == []


def _sweep(runs_dir, *argv, **kw):
    return subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs_dir), "sweep", *argv],
                          capture_output=True, text=True, timeout=600, **kw)


def test_a_2x2_grid_makes_four_runs_and_ranks_them(runs_dir, corpus_file, capsys):
    from gptbench.runstore import RunStore, read_summary
    from gptbench.runstore.specfile import read_spec

    out = _sweep(runs_dir, "--data", str(corpus_file), *TINY, "--max-iters", "20", "--eval-interval", "10", "--seed", "5",
                 "--grid", "lr=1e-3,3e-3", "--grid", "n_layer=1,2", "--name", "g")
    assert out.returncode == 0, out.stderr
    store = RunStore(runs_dir)
    assert store.names() == ["g-000", "g-001", "g-002", "g-003"]
    want = [(1e-3, 1), (1e-3, 2), (3e-3, 1), (3e-3, 2)]
    results = {}
    for i, (lr, n_layer) in enumerate(want):
        run = store.run(f"g-{i:03d}")
        spec = read_spec(run)
        assert (spec.train.lr, spec.model.n_layer, spec.train.seed, spec.train.max_iters) == (lr, n_layer, 5 + i, 20)
        assert spec.model.n_embd == 16 and spec.runtime.threads is None  # shared settings; threads are per session
        s = read_summary(run)
        assert s.state == "finished" and s.step == 20
        results[run.name] = s.best_val_bpb
    lines = out.stdout.splitlines()
    assert sum(line.startswith("[") and "finished" in line for line in lines) == 4  # one line per trial as it ends
    best_first = sorted(results, key=results.get)
    table = lines[lines.index(next(line for line in lines if line.startswith("sweep g: 4 trials"))):]
    assert [row.split()[1] for row in table[2:6]] == best_first
    assert table[6].startswith(f"best: {best_first[0]} ")
    record = json.loads((runs_dir / ".sweeps" / "g" / "sweep.json").read_text())
    assert [t["state"] for t in record["trials"]] == ["finished"] * 4
    assert [t["result"]["best_val_bpb"] for t in record["trials"]] == [results[f"g-{i:03d}"] for i in range(4)]

    rc, text, _ = run_cli_output(capsys, "--runs-dir", runs_dir, "runs", "--sweep", "g", "--json")
    listing = json.loads(text)
    assert [t["run"] for t in listing["trials"]] == best_first
    assert listing["swept"] == ["train.lr", "model.n_layer"]
    assert listing["trials"][0]["best_val_bpb"] == results[best_first[0]]
    rc, text, _ = run_cli_output(capsys, "--runs-dir", runs_dir, "runs", "--json")
    runs = json.loads(text)
    assert [r["name"] for r in runs] == [f"g-{i:03d}" for i in range(4)]
    for r, (lr, n_layer) in zip(runs, want):
        assert r["schema"] == 1 and r["sweep"] == "g" and r["state"] == "finished"
        assert r["settings"]["train.lr"] == lr and r["settings"]["model.n_layer"] == n_layer
        assert r["best_val_bpb"] == results[r["name"]]
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "sweep", "--data", corpus_file, *TINY, "--grid", "lr=1e-3", "--name", "g")
    assert rc == 2 and "--resume g" in err


def test_a_sweep_killed_mid_trial_resumes_without_rerunning_finished_trials(runs_dir, corpus_file):
    from gptbench.runstore import RunStore, read_summary

    argv = ["--data", str(corpus_file), *TINY, "--max-iters", "300", "--eval-interval", "100", "--n-layer", "1",
            "--grid", "lr=1e-3,2e-3,3e-3", "--name", "k"]
    proc = subprocess.Popen([sys.executable, "-m", "gptbench", "--runs-dir", str(runs_dir), "sweep", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    record_path = runs_dir / ".sweeps" / "k" / "sweep.json"
    try:
        deadline = time.monotonic() + 300  # only catches a hang
        while True:  # wait until trial 0 is finished and trial 1 has logged a step
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline
            states = [t["state"] for t in json.loads(record_path.read_text())["trials"]] if record_path.exists() else []
            metrics = runs_dir / "k-001" / "metrics.jsonl"
            if states[:1] == ["finished"] and metrics.exists() and '"type": "train"' in metrics.read_text():
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its trial, at once
        proc.wait()
    first = runs_dir / "k-000"
    before = {p.name: p.stat().st_mtime_ns for p in [first / "metrics.jsonl", first / "config.json", first / "status.json"]}
    assert read_summary(RunStore(runs_dir).run("k-001")).state != "finished"

    out = _sweep(runs_dir, "--resume", "k")
    assert out.returncode == 0, out.stderr
    assert "2 of 3 trials to run" in out.stdout
    assert {p.name: p.stat().st_mtime_ns for p in [first / "metrics.jsonl", first / "config.json", first / "status.json"]} == before
    for name in ("k-000", "k-001", "k-002"):
        s = read_summary(RunStore(runs_dir).run(name))
        assert (s.state, s.step) == ("finished", 300)
    assert [t["state"] for t in json.loads(record_path.read_text())["trials"]] == ["finished"] * 3
    log = (runs_dir / "k-001" / "log.txt").read_text()
    assert "resuming k-001" in log or "no complete checkpoint" in log


class _FakeProc:
    """Stands in for a trial's process: alive until signalled."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def poll(self):
        return None

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


def _write_evals(runs_dir, name, values, step_every=100):
    folder = runs_dir / name
    folder.mkdir()
    lines = [json.dumps({"type": "eval", "step": i * step_every, "val_loss": v * 0.7, "val_bpb": v}) for i, v in enumerate(values)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_median_rule_stops_a_trial_worse_than_the_median_of_finished_ones(runs_dir):
    from gptbench.sweeps.record import SweepRecord, Trial
    from gptbench.sweeps.runner import Running, SweepRunner

    curves = {"m-000": [5.0, 3.0, 2.0], "m-001": [5.0, 3.4, 2.2], "m-002": [5.0, 2.6, 1.9]}
    trials = [Trial(i, name, {"train.lr": 0.001}, [], state="finished") for i, name in enumerate(curves)]
    for name, values in curves.items():
        _write_evals(runs_dir, name, values)
    said: list[str] = []
    record = SweepRecord("m", "tiny", [], "val_bpb", trials, early_stop=True)
    runner = SweepRunner(runs_dir, record, say=said.append)

    def running(name, values):
        _write_evals(runs_dir, name, values)
        trial = Trial(len(record.trials), name, {"train.lr": 0.01}, [], state="running")
        record.trials.append(trial)
        return Running(trial, _FakeProc())

    good = running("m-003", [5.0, 2.9])  # best at step 100: 2.9 < median 3.0 of (3.0, 3.4, 2.6)
    runner._median_rule(good)
    assert not good.pruned and good.proc.signals == []
    bad = running("m-004", [5.0, 3.1])  # 3.1 > 3.0
    runner._median_rule(bad)
    assert bad.pruned and bad.proc.signals == [signal.SIGINT]
    assert said == ["pruning m-004 at step 100: 3.1000 is worse than the median 3.0000 of 3 finished trials"]
    early = running("m-005", [9.0])  # only step 0 evaluated: nothing to compare yet
    runner._median_rule(early)
    assert not early.pruned
