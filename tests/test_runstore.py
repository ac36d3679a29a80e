"""The run directory contract: tolerant readers, safe deletes, locks, summaries."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from gptbench.errors import UserError
from gptbench.runstore import JsonlTail, Run, RunStore, RunWriter, iter_jsonl, read_summary, validate_run_name


def test_jsonl_readers_tolerate_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in iter_jsonl(p)] == [1, 2]
    tail = JsonlTail(p)
    assert [r["step"] for r in tail.poll()] == [1, 2]
    assert tail.poll() == []
    with open(p, "a") as f:
        f.write('ep": 3}\n{"step": 4}\n')
    assert [r["step"] for r in tail.poll()] == [3, 4]
    p.write_text('{"step": 9}\n')  # replaced by a shorter file: start over
    assert [r["step"] for r in tail.poll()] == [9]


@pytest.mark.parametrize("content, kept, torn", [
    (b'{"step": 1}\n{"step": 2}\n{"st', b'{"step": 1}\n{"step": 2}\n', b'{"st'),
    (b'{"step": 1}\n', b'{"step": 1}\n', None),  # whole: untouched
    (b"", b"", None),
    (b"no newline at all", b"", b"no newline at all"),
    (b"a\n" + b"x" * 200_000, b"a\n", b"x" * 200_000),  # a fragment longer than one look-back chunk
], ids=["torn", "whole", "empty", "one-torn-line", "long-fragment"])
def test_repair_tail_cuts_back_to_the_last_complete_line(tmp_path, content, kept, torn):
    from gptbench.runstore.appendonly import repair_tail

    p = tmp_path / "metrics.jsonl"
    p.write_bytes(content)
    result = repair_tail(p)
    assert p.read_bytes() == kept
    side = tmp_path / "metrics.jsonl.torn"
    if torn is None:
        assert result is None
        assert not side.exists()
    else:
        assert result.fragment == torn
        assert side.read_bytes() == torn + b"\n"
        assert repair_tail(p) is None  # repaired once, whole from then on


def test_the_writer_repairs_each_append_only_file_once_before_its_first_append(tmp_path):
    """Any file the writer appends to (metrics, log, later record files) gets its torn tail
    cut before the first append, with a line in log.txt; fragments accumulate in the side file."""
    with RunWriter.create(tmp_path, "r") as w:
        w.log("first")
    run = Run(tmp_path / "r")
    run.metrics_path.write_text('{"type": "train", "step": 1}\n{"type": "tr')
    with open(run.log_path, "a") as f:
        f.write("half a li")
    extra = run.path / "evals.jsonl"
    extra.write_text('{"task": "a"}\n{"ta')
    with RunWriter.open(tmp_path, "r") as w:
        w._append(extra, '{"task": "b"}\n')
        w._append(extra, '{"task": "c"}\n')
        assert w.rewind(5) == 0
        with open(run.metrics_path, "a") as f:  # torn again while this writer holds the run:
            f.write('{"x')  # not this writer's doing, and not checked twice
        w.log("second")
    assert [json.loads(line)["task"] for line in extra.read_text().splitlines()] == ["a", "b", "c"]
    assert (run.path / "evals.jsonl.torn").read_text() == '{"ta\n'
    assert run.metrics_path.read_text() == '{"type": "train", "step": 1}\n{"x'
    assert (run.path / "metrics.jsonl.torn").read_text() == '{"type": "tr\n'
    assert (run.path / "log.txt.torn").read_text() == "half a li\n"
    log = run.log_path.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in log][0] == "first"
    assert log[-1].endswith(" second")
    assert sum("ended in a torn line" in line for line in log) == 3
    with RunWriter.open(tmp_path, "r") as w:  # the next writer cuts the new fragment
        w.log("third")
        w.rewind(5)
    assert run.metrics_path.read_text() == '{"type": "train", "step": 1}\n'
    assert (run.path / "metrics.jsonl.torn").read_text() == '{"type": "tr\n{"x\n'


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x", "a b", ".hidden", "x" * 65, "a\\b"])
def test_bad_run_names(name):
    with pytest.raises(UserError, match="invalid run name"):
        validate_run_name(name)


def test_corrupt_runs_are_summarised_not_fatal(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "no-config").mkdir()
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "config.json").write_text("{nope")
    rows = {s.name: s for s in store.summaries()}
    assert rows["no-config"].state == "corrupt"
    assert "config.json is missing" in rows["no-config"].error
    assert rows["bad-json"].state == "corrupt"
    assert "unreadable" in rows["bad-json"].error


def test_running_run_with_dead_pid_is_crashed(tmp_path, trained_run):
    shutil.copytree(trained_run.path, tmp_path / "r")
    run = Run(tmp_path / "r")
    st = run.status()
    st.update(state="running", pid=2**22 + 12345, host=os.uname().nodename)
    run.status_path.write_text(json.dumps(st))
    assert read_summary(run).state == "crashed"


def test_delete_only_inside_the_store(tmp_path, trained_run):
    store = RunStore(tmp_path / "runs")
    shutil.copytree(trained_run.path, tmp_path / "runs" / "keep")
    outside = tmp_path / "precious"
    outside.mkdir()
    for bad in ("../precious", "..", "/etc"):
        with pytest.raises(UserError):
            store.delete(bad)
    assert outside.is_dir()
    store.delete("keep")
    assert not (tmp_path / "runs" / "keep").exists()


def test_rename_updates_config(tmp_path, trained_run):
    store = RunStore(tmp_path)
    shutil.copytree(trained_run.path, tmp_path / "a")
    shutil.copytree(trained_run.path, tmp_path / "b")
    with pytest.raises(UserError, match="already exists"):
        store.rename("a", "b")
    store.rename("a", "c")
    assert store.existing("c").config()["name"] == "c"
    assert not (tmp_path / "a").exists()


def test_lock_is_exclusive_and_released(tmp_path, trained_run):
    shutil.copytree(trained_run.path, tmp_path / "r")
    with RunWriter.open(tmp_path, "r"):
        with pytest.raises(UserError, match="locked by another"):
            RunWriter.open(tmp_path, "r")
    RunWriter.open(tmp_path, "r").close()


def test_checkpoint_selection(trained_run):
    ckpts = trained_run.checkpoints()
    assert trained_run.checkpoint("last").step == ckpts[-1].step == 150
    best = trained_run.checkpoint("best")
    assert best.val_loss == min(c.val_loss for c in ckpts if c.val_loss is not None)
    assert trained_run.checkpoint(f"step-{ckpts[0].step}").step == ckpts[0].step
    with pytest.raises(UserError, match="unknown checkpoint"):
        trained_run.checkpoint("newest")
