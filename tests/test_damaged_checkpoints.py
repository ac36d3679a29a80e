"""A damaged newest checkpoint is never skipped in silence (issue 26, part 1), through the
real CLI: a tiny run with checkpoints at steps 10 and 20, then `step-20.safetensors`
truncated at several offsets or with a damaged header.

- `sample`/`convert` with `last` (and `best`) use step 10 and say so in one stderr line
  naming the file; `--strict` refuses (exit 2); an explicit `step-20` is refused naming the
  file and why (not "no such checkpoint").
- `convert` prints the step it exported and records it in the export's metadata.
- `runs` marks the run and `runs --json` lists its damaged checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import assert_one_line, run_cli_output, train_fixture_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DAMAGED = "step-20.safetensors"


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory, corpus_file) -> Path:
    """A run trained to step 20 with checkpoints at 10 and 20 (trained once, copied per test)."""
    runs = tmp_path_factory.mktemp("two-ckpt-runs")
    run = train_fixture_run(runs, corpus_file, name="b", max_iters=20, eval_interval=10, eval_iters=2, log_interval=5,
                            warmup_iters=2, sample_tokens=0)
    assert sorted(p.name for p in run.checkpoints_dir.glob("step-*[0-9].safetensors")) == ["step-10.safetensors", DAMAGED]
    return run.path


def truncate_at(size_fraction_or_offset):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        cut = size_fraction_or_offset if isinstance(size_fraction_or_offset, int) else int(len(data) * size_fraction_or_offset)
        path.write_bytes(data[:cut])
    return damage


def damage_header(path: Path) -> None:
    """Garbage where the header's JSON starts (its length prefix intact)."""
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated to 5 bytes": truncate_at(5),
    "truncated in the header": truncate_at(40),
    "truncated in the middle": truncate_at(0.5),
    "truncated by one byte": truncate_at(-1),
    "damaged header": damage_header,
}


@pytest.fixture(params=list(DAMAGES), ids=list(DAMAGES))
def damaged_run(request, two_checkpoint_run, tmp_path) -> Path:
    """A copy of the run whose newest checkpoint's weights file is damaged; returns the runs dir."""
    runs = tmp_path / "runs"
    shutil.copytree(two_checkpoint_run, runs / "b")
    DAMAGES[request.param](runs / "b" / "checkpoints" / DAMAGED)
    return runs


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if DAMAGED in line]


@pytest.mark.parametrize("which", ["last", "best"])
def test_sample_uses_the_newest_intact_checkpoint_and_says_so_once(damaged_run, which, capsys):
    rc, out, err = run_cli_output(capsys, "sample", "--runs-dir", damaged_run, "--run", "b", "--checkpoint", which,
                                  "--max-new-tokens", "3", "--temperature", "0", "--json", "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out.splitlines()[0])["source"] == "b@step-10"
    [line] = warning_lines(err)
    assert line.startswith("gptbench: warning: ")
    assert "using step-10" in line and "--strict" in line


def test_sample_strict_and_an_explicit_damaged_step_are_refused(damaged_run, capsys):
    rc, out, err = run_cli_output(capsys, "sample", "--runs-dir", damaged_run, "--run", "b", "--checkpoint", "last", "--strict",
                                  "--max-new-tokens", "3", "--device", "cpu")
    assert (rc, out) == (2, "")
    assert_one_line(err, DAMAGED, "--strict", "step-10")
    rc, out, err = run_cli_output(capsys, "sample", "--runs-dir", damaged_run, "--run", "b", "--checkpoint", "step-20",
                                  "--max-new-tokens", "3", "--device", "cpu")
    assert (rc, out) == (2, "")
    assert_one_line(err, DAMAGED, "checkpoint step-20 of run 'b' cannot be used", "intact checkpoints: step-10")
    assert "has no checkpoint step-20" not in err
    assert any(word in err for word in ("truncated", "not a safetensors file", "not a valid safetensors file")), err


def test_chat_strict_is_refused_before_the_session(damaged_run, capsys):
    rc, out, err = run_cli_output(capsys, "chat", "--runs-dir", damaged_run, "--run", "b", "--checkpoint", "best", "--strict",
                                  "--device", "cpu")
    assert (rc, out) == (2, "")
    assert_one_line(err, DAMAGED, "--strict")


def test_chat_message_answers_from_the_newest_intact_checkpoint_and_says_so_once(damaged_run, capsys):
    rc, out, err = run_cli_output(capsys, "chat", "--runs-dir", damaged_run, "--run", "b", "--checkpoint", "last",
                                  "--message", "hi", "--json", "--max-new-tokens", "3", "--temperature", "0", "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out)["finish_reason"] == "length"
    [line] = warning_lines(err)
    assert line.startswith("gptbench: warning: ")
    assert "using step-10" in line


def test_convert_exports_step_10_says_so_and_records_it(damaged_run, tmp_path, capsys):
    from gptbench.backends.weights import read_header

    dst = tmp_path / "out.safetensors"
    rc, out, err = run_cli_output(capsys, "convert", "b", dst, "--runs-dir", damaged_run, "--checkpoint", "last", "--to", "torch")
    assert rc == 0, err
    [line] = warning_lines(err)
    assert line.startswith("gptbench: warning: ") and "using step-10" in line
    assert "exported step 10" in out
    assert read_header(dst)[1]["step"] == "10"
    hf = tmp_path / "hf"
    rc, out, err = run_cli_output(capsys, "convert", "b", hf, "--runs-dir", damaged_run, "--to", "hf", "--json")
    assert rc == 0, err
    assert len(warning_lines(err)) == 1
    assert json.loads(out)["step"] == 10
    assert json.loads((hf / "config.json").read_text())["gptbench"] == {"converted_from": "b@step-10", "step": "10"}


def test_convert_strict_and_explicit_damaged_step_write_nothing(damaged_run, tmp_path, capsys):
    for extra in (["--strict"], ["--checkpoint", "step-20"]):
        rc, out, err = run_cli_output(capsys, "convert", "b", tmp_path / "out.safetensors", "--runs-dir", damaged_run, "--to", "torch", *extra)
        assert rc == 2, extra
        assert_one_line(err, DAMAGED)
        assert not (tmp_path / "out.safetensors").exists()


def test_runs_marks_the_run_and_json_lists_the_damaged_file(damaged_run, capsys):
    rc, out, err = run_cli_output(capsys, "runs", "--runs-dir", damaged_run, "--json")
    assert rc == 0, err
    [row] = json.loads(out)
    [entry] = row["damaged_checkpoints"]
    assert entry["step"] == 20 and entry["file"] == f"checkpoints/{DAMAGED}"
    assert DAMAGED in entry["reason"]
    rc, out, err = run_cli_output(capsys, "runs", "--runs-dir", damaged_run)
    assert rc == 0, err
    assert "finished !" in out
    assert f"b !: damaged checkpoint: checkpoints/{DAMAGED}" in out


def test_an_intact_run_has_no_marker_and_no_warning(two_checkpoint_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(two_checkpoint_run, runs / "b")
    rc, out, err = run_cli_output(capsys, "runs", "--runs-dir", runs, "--json")
    assert json.loads(out)[0]["damaged_checkpoints"] == []
    rc, out, err = run_cli_output(capsys, "sample", "--runs-dir", runs, "--run", "b", "--checkpoint", "last", "--strict",
                                  "--max-new-tokens", "3", "--json", "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out.splitlines()[0])["source"] == "b@step-20"
    assert "warning" not in err
