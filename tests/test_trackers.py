"""`--log-to` and `gptbench export-logs`: the metrics mirrored to TensorBoard, W&B and trackio,
read back with TensorBoard's own reader, wandb's own reader of its offline run files (`wandb
leet inspect --json`) and trackio's own storage API, equal to metrics.jsonl. W&B never goes
online here: WANDB_MODE=offline, and its settings, cache and data folders in the test's tmp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import assert_one_line, run_cli_output

TRAIN = ["--preset", "tiny", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
         "--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2", "--log-interval", "5", "--sample-tokens", "8",
         "--backend", "torch", "--device", "cpu", "--threads", "1"]
READ_TRACKIO = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("gptbench", sys.argv[1])
config = SQLiteStorage.get_run_config("gptbench", sys.argv[1])
print(json.dumps({"logs": logs, "config": config}))
"""


ITEMS = [{"context": "ROMEO: the", "choices": [" cat.", " king."], "answer": 1},  # fits the 16-token context
         {"context": "JULIET: so", "choices": [" king.", " sun."], "answer": 0}]


def _expected(run_dir):
    """metrics.jsonl and evals.jsonl as the trackers must show them: {metric: [(step, value), ...]}."""
    from gptbench.runstore import iter_jsonl
    from gptbench.trackers import run_metrics

    out: dict[str, list] = {}
    for step, values in run_metrics(run_dir, iter_jsonl(run_dir / "metrics.jsonl")):
        for name, value in values.items():
            out.setdefault(name, []).append((step, value))
    scores = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert out["score/items/acc"] == [(r["step"], r["acc"]) for r in scores] and len(scores) == 3  # the --eval-task scores
    return out


def _wandb_env(root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root / "wandb-dir"),
            "WANDB_CONFIG_DIR": str(root / "wandb-config"), "WANDB_CACHE_DIR": str(root / "wandb-cache"),
            "WANDB_DATA_DIR": str(root / "wandb-data")}


def _wandb(run_dir, env):
    """The W&B offline run in RUN/wandb as wandb itself reads it: {metric: [(step, value)]},
    the run's config and name, and its id."""
    [log] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    values: dict[str, list] = {}
    for r in records:
        if r["type"] == "history":
            item = r["history"]["item"]
            for name, value in item.items():
                if not name.startswith("_"):
                    values.setdefault(name, []).append((item["_step"], value))
    [run] = [r["run"] for r in records if r["type"] == "run"]
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}  # wandb's own bookkeeping
    return values, config, run["display_name"], run["run_id"]


def _tensorboard(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    values = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]
              for tag in acc.Tags()["tensors"]}
    return values


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from helpers import FIXTURE_TEXT

    root = tmp_path_factory.mktemp("tracked")
    corpus = root / "play.txt"
    corpus.write_text(FIXTURE_TEXT)
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    env = {**_wandb_env(root), "TRACKIO_DIR": str(root / "trackio"), "GPTBENCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    trainer_env = {k: v for k, v in env.items() if k not in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR")}  # wandb's defaults
    trainer_env.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(root / "home" / ".cache"))
    out = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(root / "runs"), "train", "--no-ui", *TRAIN,
                          "--data", str(corpus), "--log-to", "tensorboard,wandb,trackio", "--name", "t",
                          "--eval-task", f"mc:{items}"],
                         capture_output=True, text=True, env=trainer_env, timeout=600)
    assert out.returncode == 0, out.stderr
    return root, env


def test_tensorboard_event_files_hold_exactly_the_metrics(tracked_run):
    root, _ = tracked_run
    run_dir = root / "runs" / "t"
    expected = _expected(run_dir)
    assert {"train/loss", "train/lr", "val/loss", "val/bpb"} <= set(expected)
    assert [s for s, _ in expected["val/loss"]] == [0, 10, 20]
    got = _tensorboard(run_dir / "tensorboard")
    config = json.loads(got.pop("config")[0][1])
    assert config["name"] == "t" and config["train"]["max_iters"] == 20 and config["log_to"] == "tensorboard,wandb,trackio"
    assert got == expected


def test_wandb_offline_run_holds_exactly_the_metrics(tracked_run):
    root, env = tracked_run
    run_dir = root / "runs" / "t"
    expected = _expected(run_dir)
    got, config, name, _ = _wandb(run_dir, env)
    assert got == expected
    assert name == "t" and config == json.loads((run_dir / "config.json").read_text())
    assert not (root / "wandb-dir").exists()  # everything of the run is in the run's folder,
    assert not (root / "home" / ".cache" / "wandb").exists() and (run_dir / "wandb" / "cache").is_dir()  # its logs too


def test_wandb_is_offline_unless_the_users_settings_say_otherwise(tmp_path, monkeypatch):
    import wandb

    from gptbench.trackers.wandb_offline import user_mode

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    assert user_mode(wandb) == "offline"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings").write_text("[default]\nmode = online\n")  # what `wandb online` writes
    assert user_mode(wandb) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert user_mode(wandb) == "disabled"


def test_trackio_local_store_holds_exactly_the_metrics(tracked_run):
    root, env = tracked_run
    expected = _expected(root / "runs" / "t")
    out = subprocess.run([sys.executable, "-c", READ_TRACKIO, "t"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    stored = json.loads(out.stdout)
    got: dict[str, list] = {}
    for row in stored["logs"]:
        for name, value in row.items():
            if name not in ("step", "timestamp"):
                got.setdefault(name, []).append((row["step"], value))
    assert got == expected
    assert stored["config"]["name"] == "t" and stored["config"]["train.lr"] == json.loads((root / "runs" / "t" / "config.json").read_text())["train"]["lr"]


def test_export_logs_writes_a_finished_run_to_tensorboard(tracked_run, tmp_path, capsys):
    root, _ = tracked_run
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    shutil.rmtree(runs / "t" / "tensorboard")
    rc, out, err = run_cli_output(capsys, "--runs-dir", runs, "export-logs", "t", "--to", "tensorboard")
    assert rc == 0, err
    assert out.startswith("exported ") and "to tensorboard" in out
    got = _tensorboard(runs / "t" / "tensorboard")
    got.pop("config")
    assert got == _expected(runs / "t")
    rc, _, _ = run_cli_output(capsys, "--runs-dir", runs, "export-logs", "t", "--to", "tensorboard")  # again: replaced, not doubled
    assert rc == 0 and len(list((runs / "t" / "tensorboard").iterdir())) == 1


def test_export_logs_writes_a_finished_run_to_wandb_under_its_id(tracked_run, tmp_path):
    root, env = tracked_run
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    _, _, _, run_id = _wandb(runs / "t", env)
    shutil.rmtree(runs / "t" / "wandb")
    (runs / "t" / "wandb").mkdir()
    (runs / "t" / "wandb" / "gptbench-run-id").write_text(run_id + "\n")
    for _ in range(2):  # again: replaced, not doubled
        out = subprocess.run([sys.executable, "-m", "gptbench", "--runs-dir", str(runs), "export-logs", "t", "--to", "wandb"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("exported ") and "to wandb" in out.stdout
        got, _, name, new_id = _wandb(runs / "t", env)
        assert got == _expected(runs / "t") and name == "t" and new_id == run_id
    assert [p.name for p in runs.iterdir()] == ["t"]  # no staging folder left behind


def test_an_unknown_or_missing_tracker_is_one_line_and_creates_nothing(capsys, runs_dir, corpus_file, monkeypatch):
    import importlib.util

    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "train", "--no-ui", *TRAIN, "--data", corpus_file, "--log-to", "neptune")
    assert rc == 2
    assert_one_line(err, "unknown tracker 'neptune'", "tensorboard, wandb, trackio")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("trackio", "wandb") else find_spec(name, *a))
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "train", "--no-ui", *TRAIN, "--data", corpus_file, "--log-to", "trackio")
    assert rc == 2
    assert_one_line(err, 'pip install "gptbench[trackio]"')
    assert list(runs_dir.iterdir()) == []
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "train", "--no-ui", *TRAIN, "--data", corpus_file, "--log-to", "wandb")
    assert rc == 2
    assert_one_line(err, 'pip install "gptbench[wandb]"')
    assert list(runs_dir.iterdir()) == []
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs_dir, "export-logs", "nosuch", "--to", "trackio")
    assert rc == 2
    assert_one_line(err, 'pip install "gptbench[trackio]"')
