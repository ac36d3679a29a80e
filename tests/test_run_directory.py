"""The run directory under hostile input, through the CLI: every damaged file, bad flag,
link and leftover of the run-directory issue gives one line and exit 2 with nothing written
or changed, or is handled (resumed, cleaned) as documented.

Process-level faults (SIGKILL at random moments, a full disk, signals, two trainers racing
for a name) are in test_faults.py.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from gptbench.backends.weights import load_tensors, save_tensors
from gptbench.runstore import Run, RunStore, RunWriter
from helpers import FIXTURE_TEXT, assert_one_line, run_cli, run_cli_output, tree_snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def baby(runs_dir, trained_run) -> Run:
    """A copy of the session's trained run (150 steps, checkpoints at 50, 100, 150)."""
    shutil.copytree(trained_run.path, runs_dir / "baby", ignore=shutil.ignore_patterns(".lock"))
    return Run(runs_dir / "baby")


def resume(capsys, run: Run, *flags: str) -> tuple[int, str]:
    return run_cli(capsys, "--runs-dir", run.path.parent, "train", "--no-ui", "--resume", run.name, *flags)


def resume_output(capsys, run: Run, *flags: str) -> tuple[int, str]:
    rc, out, _ = run_cli_output(capsys, "--runs-dir", run.path.parent, "train", "--no-ui", "--resume", run.name, *flags)
    return rc, out


def rewrite_state(run: Run, change) -> None:
    """Rewrite the last checkpoint's state file after `change(tensors, trainer_state)`."""
    path = run.checkpoint("last").state_path
    tensors, meta = load_tensors(path)
    trainer = json.loads(meta["trainer"])
    change(tensors, trainer)
    save_tensors(path, tensors, {"trainer": json.dumps(trainer)})


def rewrite_weights(run: Run, change) -> None:
    path = run.checkpoint("last").path
    tensors, meta = load_tensors(path)
    change(tensors)
    save_tensors(path, tensors, meta)


def _set(obj: dict, key: str, value) -> None:
    obj[key] = value


DAMAGE = {
    "empty config.json": (lambda r: r.config_path.write_text(""), "config.json is unreadable"),
    "garbage config.json": (lambda r: r.config_path.write_text("{not json"), "config.json is unreadable"),
    "config.json of the wrong shape": (lambda r: r.config_path.write_text("[1, 2]"), "config.json is not a JSON object"),
    "config.json with a mistyped key": (
        lambda r: r.config_path.write_text(json.dumps({**r.config(), "params": "many"})), "'params' must be int"),
    "config.json with a mistyped train value": (
        lambda r: r.config_path.write_text(json.dumps({**r.config(), "train": {**r.config()["train"], "lr": "fast"}})),
        "lr must be a number"),
    "a moment of the wrong shape": (
        lambda r: rewrite_state(r, lambda t, s: _set(t, "exp_avg.wte.weight", np.zeros((3, 3), np.float32))),
        "exp_avg.wte.weight has shape [3, 3]"),
    "no optimizer moments": (
        lambda r: rewrite_state(r, lambda t, s: [t.pop(k) for k in list(t) if k.startswith("exp_avg")]),
        "has no optimizer moments"),
    "NaN moments": (
        lambda r: rewrite_state(r, lambda t, s: _set(t, "exp_avg.wte.weight", t["exp_avg.wte.weight"] * np.nan)),
        "holds NaN or infinite values"),
    "a truncated RNG state": (
        lambda r: rewrite_state(r, lambda t, s: _set(t, "rng.torch_cpu", t["rng.torch_cpu"][:100])),
        "RNG state 'torch_cpu' is uint8 [100]"),
    "a garbage batch RNG": (
        lambda r: rewrite_state(r, lambda t, s: _set(s, "batch_rng", {"bit_generator": "PCG64", "state": "garbage"})),
        "batch RNG state is damaged"),
    "an optimizer step that is not a number": (
        lambda r: rewrite_state(r, lambda t, s: _set(s, "optimizer", {"step": "abc"})), "'step' must be int, got 'abc'"),
    "a state of another step": (lambda r: rewrite_state(r, lambda t, s: _set(s, "step", 7)), "says step 7"),
    "a missing state file": (lambda r: r.checkpoint("last").state_path.unlink(), "is missing, so step 150 cannot be resumed exactly"),
    "integer weights": (
        lambda r: rewrite_weights(r, lambda t: _set(t, "wte.weight", t["wte.weight"].view(np.int32))),
        "tensor wte.weight has dtype int32; weights must be floating point"),
    "NaN weights": (
        lambda r: rewrite_weights(r, lambda t: _set(t, "ln_f.weight", t["ln_f.weight"] * np.nan)), "NaN or infinite values"),
    "a truncated weights file": (
        lambda r: r.checkpoint("last").path.write_bytes(r.checkpoint("last").path.read_bytes()[:900]),
        "truncated"),
    "an edited tokenizer": (
        lambda r: r.tokenizer_path.write_text(r.tokenizer_path.read_text().replace("J", "K", 1)),
        "tokenizer.json differs from the tokenizer"),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=lambda c: c.replace(" ", "-"))
def test_resuming_a_damaged_run_is_one_line_and_changes_nothing(capsys, baby, case):
    damage, needle = DAMAGE[case]
    damage(baby)
    before = tree_snapshot(baby.path)
    rc, err = resume(capsys, baby, "--max-iters", "160")
    assert rc == 2
    assert_one_line(err, needle)
    assert tree_snapshot(baby.path) == before


@pytest.mark.parametrize("flags,needle", [
    (["--temperature", "nan"], "temperature must be >= 0"),
    (["--max-new-tokens", "1000000000000"], "max_new_tokens must be at most 100,000,000"),
    (["--num-samples", "100000000"], "ask for fewer --num-samples"),
    (["--checkpoint", "step-7"], "has no checkpoint step-7"),
])
def test_sampling_limits_are_checked_up_front(capsys, baby, flags, needle):
    rc, err = run_cli(capsys, "--runs-dir", baby.path.parent, "sample", "--run", "baby", *flags)
    assert rc == 2
    assert_one_line(err, needle)


def test_a_vanishing_temperature_samples_greedily(capsys, baby):
    outs = []
    for t in ("0", "1e-40"):
        rc, out, _ = run_cli_output(capsys, "--runs-dir", baby.path.parent, "sample", "--run", "baby", "--prompt", "ROMEO:",
                                    "--temperature", t, "--max-new-tokens", "30", "--seed", "3", "--no-stream")
        assert rc == 0
        outs.append(out)
    assert outs[0] == outs[1]


def test_sampling_nan_weights_is_one_line(capsys, baby):
    rewrite_weights(baby, lambda t: _set(t, "ln_f.weight", t["ln_f.weight"] * np.nan))
    rc, err = run_cli(capsys, "--runs-dir", baby.path.parent, "sample", "--run", "baby", "--checkpoint", "last")
    assert rc == 2
    assert_one_line(err, "ln_f.weight holds")


@pytest.mark.parametrize("flags,needle", [
    (["--grad-clip", "nan"], "argument --grad-clip: 'nan' is not a finite number"),
    (["--min-lr", "nan"], "argument --min-lr: 'nan' is not a finite number"),
    (["--lr", "inf"], "argument --lr: 'inf' is not a finite number"),
    (["--name", ""], "invalid run name ''"),
    (["--n-embd", "65536", "--n-head", "4"], "needs about"),
])
def test_new_runs_refuse_impossible_numbers_before_writing(capsys, runs_dir, corpus_file, flags, needle):
    rc, err = run_cli(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--data", corpus_file, "--device", "cpu",
                      "--backend", "torch", "--max-iters", "5", "--sample-tokens", "0", *flags)
    assert rc == 2
    assert_one_line(err, needle)
    assert list(runs_dir.iterdir()) == []  # no run, not even an empty claim


def test_resume_to_a_step_already_reached_is_refused(capsys, baby):
    before = tree_snapshot(baby.path)
    rc, err = resume(capsys, baby, "--max-iters", "100")
    assert rc == 2
    assert_one_line(err, "is at step 150; --max-iters 100 would not train it further")
    rc, err = resume(capsys, baby)
    assert rc == 2
    assert_one_line(err, "already reached its --max-iters (150)")
    assert tree_snapshot(baby.path) == before


def test_resume_says_what_the_schedule_will_do(capsys, baby):
    rc, out = resume_output(capsys, baby, "--max-iters", "170", "--eval-interval", "10")
    assert rc == 0
    assert "resuming baby at step 150 of 170" in out
    assert "pass --lr-decay-iters 170 to stretch the schedule" in out
    # the history holds each step once: no duplicated eval rows after the resume
    evals = [r["step"] for r in baby.metrics() if r["type"] == "eval"]
    assert evals == sorted(set(evals))
    assert evals[-1] == 170


def test_a_run_without_a_checkpoint_trains_again_from_step_0(capsys, baby):
    shutil.rmtree(baby.checkpoints_dir)
    rc, out = resume_output(capsys, baby)
    assert rc == 0
    assert "run baby has no complete checkpoint: training it again from step 0 with its saved config" in out
    for kind in ("train", "eval"):
        steps = [r["step"] for r in baby.metrics() if r["type"] == kind]
        assert steps == sorted(set(steps)), kind  # rewound to 0, then logged once
    assert baby.status()["state"] == "finished"
    assert baby.checkpoint("last").step == 150


def test_leftovers_of_killed_writes_are_cleared(capsys, baby):
    ck = baby.checkpoints_dir
    (ck / ".step-150.safetensors.x1y2.tmp").write_bytes(b"partial")
    (ck / "step-10.safetensors").write_bytes(b"x" * 1000)  # damaged, older than the last checkpoint
    shutil.copy(ck / "step-150.state.safetensors", ck / "step-20.state.safetensors")  # an orphan state
    (baby.path / ".status.json.abcd.tmp").write_text("{")
    (ck / "index.json").write_text("[]")  # what gptbench 0.1 kept; checkpoints are found on disk now
    rc, _ = resume(capsys, baby, "--max-iters", "200")
    assert rc == 0
    names = sorted(p.name for p in ck.iterdir())
    steps = sorted({int(n.split("-")[1].split(".")[0]) for n in names})
    assert not [n for n in names if n.endswith(".tmp")]
    assert not list(baby.path.glob(".*.tmp"))
    assert "index.json" not in names
    assert all(f"step-{s}.safetensors" in names and f"step-{s}.state.safetensors" in names for s in steps)
    assert steps[-3:] == [100, 150, 200]  # --keep-last 3 (and the best among them)


def test_a_torn_tail_is_cut_before_the_resume_appends(capsys, baby):
    """A crash mid-append left half a record in metrics.jsonl and half a line in log.txt:
    the resume moves each fragment to a `.torn` side file and says so in log.txt, so no
    record written after it is glued to the fragment and lost."""
    torn_record = '{"type": "train", "step": 151, "lo'
    log_before = baby.log_path.read_text()
    with open(baby.metrics_path, "a") as f:
        f.write(torn_record)
    with open(baby.log_path, "a") as f:
        f.write("2026-01-01 00:00:00 step 151 | lo")
    rc, _ = resume(capsys, baby, "--max-iters", "200", "--log-interval", "5")
    assert rc == 0
    lines = baby.metrics_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert len(records) == len(lines)
    train_steps = [r["step"] for r in records if r["type"] == "train"]
    assert [s for s in train_steps if s > 150] == list(range(155, 201, 5))
    assert (baby.path / "metrics.jsonl.torn").read_text() == torn_record + "\n"
    assert (baby.path / "log.txt.torn").read_text() == "2026-01-01 00:00:00 step 151 | lo\n"
    log = baby.log_path.read_text()
    assert log.startswith(log_before)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (log.txt|metrics.jsonl) ended in a torn line", log[len(log_before):])
    assert "metrics.jsonl ended in a torn line (34 bytes" in log
    assert "kept the fragment in metrics.jsonl.torn" in log
    assert "kept the fragment in log.txt.torn" in log
    assert "resuming baby at step 150" in log


def test_a_changed_corpus_is_refused_unless_accepted(capsys, runs_dir, tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text(FIXTURE_TEXT)
    common = ["--device", "cpu", "--backend", "torch", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
              "--block-size", "16", "--sample-tokens", "0", "--eval-interval", "5", "--eval-iters", "2"]
    rc, _ = run_cli(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--data", corpus, "--max-iters", "5", "--name", "c", *common)
    assert rc == 0
    corpus.write_text(FIXTURE_TEXT.replace("king", "kink"))
    run = Run(runs_dir / "c")
    before = tree_snapshot(run.path)
    rc, err = resume(capsys, run, "--max-iters", "10")
    assert rc == 2
    assert_one_line(err, "changed since run 'c' was trained on it", "--accept-changed-data")
    assert tree_snapshot(run.path) == before
    rc, out = resume_output(capsys, run, "--max-iters", "10", "--accept-changed-data")
    assert rc == 0
    assert "continuing on the new text" in out


def test_mistyped_status_corrupts_only_that_run_in_the_listing(capsys, baby, runs_dir, trained_run):
    shutil.copytree(trained_run.path, runs_dir / "fine", ignore=shutil.ignore_patterns(".lock"))
    baby.status_path.write_text(json.dumps({**baby.status(), "step": "many"}))
    rc, out, _ = run_cli_output(capsys, "--runs-dir", runs_dir, "runs", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0
    assert rows["fine"]["state"] == "finished"
    assert rows["baby"]["state"] == "corrupt"
    assert "'step' must be int, got 'many'" in rows["baby"]["error"]


# ---- claims, locks and links ---------------------------------------------------------------
def test_a_claim_killed_before_its_config_can_be_restarted(capsys, runs_dir, corpus_file):
    claim = RunWriter.create(runs_dir, "k")
    claim.lock.release()  # what a SIGKILL leaves: the folder, its status `starting`, no config
    rc, err = run_cli(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--resume", "k")
    assert rc == 2
    assert_one_line(err, "killed while starting", "start it again with --name k")
    rc, _ = run_cli(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--name", "k", "--data", corpus_file, "--device", "cpu",
                    "--backend", "torch", "--max-iters", "3", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                    "--block-size", "16", "--sample-tokens", "0", "--eval-iters", "2")
    assert rc == 0
    assert Run(runs_dir / "k").status()["state"] == "finished"


def test_a_name_held_by_another_trainer_is_refused(capsys, runs_dir, corpus_file):
    holder = RunWriter.create(runs_dir, "busy")
    before = tree_snapshot(runs_dir / "busy")
    rc, err = run_cli(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--name", "busy", "--data", corpus_file,
                      "--device", "cpu", "--max-iters", "3")
    assert rc == 2
    assert_one_line(err, "is being created or trained by pid")
    assert tree_snapshot(runs_dir / "busy") == before
    holder.abandon()
    assert not (runs_dir / "busy").exists()


def test_delete_and_rename_refuse_a_run_in_use(baby):
    from gptbench.errors import UserError

    store = RunStore(baby.path.parent)
    with RunWriter.open(store.root, "baby"):
        with pytest.raises(UserError, match="locked by another"):
            store.delete("baby")
        with pytest.raises(UserError, match="locked by another"):
            store.rename("baby", "other")
    assert baby.exists()
    store.rename("baby", "other")
    assert Run(store.root / "other").config()["name"] == "other"


def test_links_are_never_followed_for_writing(capsys, baby, tmp_path):
    from gptbench.errors import UserError

    root = baby.path.parent
    (root / "alias").symlink_to(baby.path)
    outside = tmp_path / "outside-run"
    shutil.copytree(baby.path, outside)
    (root / "escape").symlink_to(outside)
    store = RunStore(root)
    before, before_outside = tree_snapshot(baby.path), tree_snapshot(outside)
    for call in (lambda: store.delete("alias"), lambda: store.rename("alias", "x"), lambda: store.delete("escape")):
        with pytest.raises(UserError, match="symbolic link"):
            call()
    for name in ("alias", "escape"):
        rc, err = run_cli(capsys, "--runs-dir", root, "train", "--no-ui", "--resume", name, "--max-iters", "160")
        assert rc == 2
        assert_one_line(err, "symbolic link")
    assert tree_snapshot(baby.path) == before
    assert tree_snapshot(outside) == before_outside
    assert sorted(store.names()) == ["baby"]  # links are not listed as runs
    # a link inside a run, where a run file belongs, is refused too
    baby.metrics_path.unlink()
    baby.metrics_path.symlink_to(tmp_path / "elsewhere.jsonl")
    rc, err = resume(capsys, baby, "--max-iters", "160")
    assert rc == 2
    assert_one_line(err, "metrics.jsonl is a symbolic link")
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_convert_into_an_existing_run_in_use_is_refused(capsys, baby, tmp_path):
    root = baby.path.parent
    shutil.copytree(baby.path, root / "target", ignore=shutil.ignore_patterns(".lock"))
    before = tree_snapshot(root / "target")
    with RunWriter.open(root, "target"):
        rc, err = run_cli(capsys, "convert", "baby", "target", "--to", "torch", "--force", "--runs-dir", root)
    assert rc == 2
    assert_one_line(err, "locked by another")
    assert tree_snapshot(root / "target") == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_run_with_a_relative_corpus_path_resumes_from_anywhere(capsys, runs_dir, tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "text.txt").write_text(FIXTURE_TEXT)
    monkeypatch.chdir(tmp_path / "here")
    rc, _ = run_cli(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--data", "text.txt", "--name", "rel", "--max-iters", "3",
                    "--device", "cpu", "--backend", "torch", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                    "--block-size", "16", "--sample-tokens", "0", "--eval-iters", "2")
    assert rc == 0
    assert Run(runs_dir / "rel").config()["data"]["spec"] == str(tmp_path / "here" / "text.txt")
    monkeypatch.chdir(tmp_path)
    rc, err = resume(capsys, Run(runs_dir / "rel"), "--max-iters", "5")
    assert rc == 0, err


def test_the_runs_table_fits_80_columns_and_shows_bits_per_byte(capsys, baby, monkeypatch):
    """The listing drops whole columns, least useful first, instead of cutting cells."""
    from gptbench.commands.runs import COLUMNS

    run = Run(baby.path)
    status = run.status()
    run.status_path.write_text(json.dumps({**status, "best_val_bpb": 1.2345}))
    for width, shown, hidden in ((80, ["name", "status", "step", "best val", "params", "bits/byte"], ["device"]),
                                 (160, [c[0] for c in COLUMNS], [])):
        monkeypatch.setenv("COLUMNS", str(width))
        rc, out, _ = run_cli_output(capsys, "--runs-dir", baby.path.parent, "runs")
        assert rc == 0
        table = [line for line in out.splitlines() if "│" in line or "┃" in line]
        assert max(len(line) for line in table) <= width
        header = table[0]
        for col in shown:
            assert col in header, (width, col)
        for col in hidden:
            assert col not in header, (width, col)
        row = next(line for line in table if "baby" in line)
        assert "150/150" in row
        assert "1.2345" in row
