"""Every bad input of the foundation issue: one line, exit code 2, nothing written."""

from __future__ import annotations

import shutil

import pytest

from gptbench.cli import main
from helpers import assert_one_line, run_cli
from helpers import tree_snapshot as snapshot

SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--max-iters", "5",
         "--device", "cpu", "--backend", "torch", "--sample-tokens", "0"]


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "empty.txt").write_text("")
    (d / "short.txt").write_text("hello world\n")
    (d / "bin.dat").write_bytes(bytes(range(256)) * 64)
    (d / "ok.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    (d / "bad.toml").write_text("[train]\nlearning_rate = 3\n")
    return d


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--data", "{d}/missing.txt"], ["missing.txt"]),
        (["--data", "{d}/empty.txt"], ["empty"]),
        (["--data", "{d}/bin.dat"], ["binary"]),
        (["--data", "{d}/short.txt"], ["corpus too short", "--block-size 16 needs at least 17"]),
        (["--data", "{d}/ok.txt", "--preset", "huge"], ["unknown preset 'huge'"]),
        (["--data", "{d}/ok.txt", "--config", "{d}/bad.toml"], ["unknown [train] key(s): learning_rate"]),
        (["--data", "{d}/ok.txt", "--n-embd", "30", "--n-head", "4"], ["n_embd (30) must be divisible by n_head (4)"]),
        (["--data", "{d}/ok.txt", "--lr", "-1"], ["lr must be positive"]),
        (["--data", "{d}/ok.txt", "--lr", "0"], ["lr must be positive"]),
        (["--data", "{d}/ok.txt", "--max-iters", "0"], ["max-iters must be a positive integer"]),
        (["--data", "{d}/ok.txt", "--batch-size", "-2"], ["batch-size must be a positive integer"]),
        (["--data", "{d}/ok.txt", "--name", "../escape"], ["invalid run name '../escape'"]),
        (["--data", "{d}/ok.txt", "--name", "a/b"], ["invalid run name 'a/b'"]),
        (["--data", "{d}/ok.txt", "--name", ".."], ["invalid run name '..'"]),
        (["--resume", "ghost"], ["no run named 'ghost'"]),
        (["--data", "{d}/ok.txt", "--backend", "jax"], ["unknown backend 'jax'"]),
    ],
)
def test_train_bad_input(capsys, runs_dir, files, extra, needles):
    # n-embd/n-head overrides must come after SMALL to win; keep SMALL first
    argv = ["--runs-dir", str(runs_dir), "train", "--no-ui", *SMALL, *[a.format(d=files) for a in extra]]
    rc, err = run_cli(capsys, *argv)
    assert rc == 2
    assert_one_line(err, *needles)
    assert list(runs_dir.iterdir()) == []
    assert not (files.parent / "escape").exists()


@pytest.fixture
def baby(runs_dir, trained_run):
    shutil.copytree(trained_run.path, runs_dir / "baby")
    return runs_dir / "baby"


def test_resume_with_conflicting_config(capsys, runs_dir, baby):
    before = snapshot(baby)
    rc, err = run_cli(capsys, "--runs-dir", str(runs_dir), "train", "--no-ui", "--resume", "baby", "--n-layer", "8")
    assert rc == 2
    assert_one_line(err, "cannot resume 'baby' with a different n_layer=8 (run has 2)")
    rc, err = run_cli(capsys, "--runs-dir", str(runs_dir), "train", "--no-ui", "--resume", "baby", "--tokenizer", "byte")
    assert rc == 2
    assert "tokenizer='byte'" in err
    assert snapshot(baby) == before


def test_resume_from_corrupt_checkpoint(capsys, runs_dir, baby):
    from gptbench.runstore import Run

    ck = Run(baby).checkpoint("last").path
    ck.write_bytes(ck.read_bytes()[:1000])
    before = snapshot(baby)
    rc, err = run_cli(capsys, "--runs-dir", str(runs_dir), "train", "--no-ui", "--resume", "baby", "--max-iters", "400")
    assert rc == 2
    assert_one_line(err, "truncated")
    assert snapshot(baby) == before


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--temperature", "-0.5"], ["temperature must be >= 0"]),
        (["--top-p", "0"], ["top_p must be in (0, 1]"]),
        (["--top-p", "1.5"], ["top_p must be in (0, 1]"]),
        (["--top-k", "-1"], ["top_k must be >= 0"]),
        (["--checkpoint", "step-999"], ["has no checkpoint step-999"]),
        (["--prompt", "Ωmega"], ["Ω"]),
    ],
)
def test_sample_bad_input(capsys, runs_dir, baby, flags, needles):
    rc, err = run_cli(capsys, "--runs-dir", str(runs_dir), "sample", "--run", "baby", "--max-new-tokens", "5", *flags)
    assert rc == 2
    assert_one_line(err, *needles)


def test_sample_from_run_is_seeded(capsys, runs_dir, baby):
    argv = ["--runs-dir", str(runs_dir), "sample", "--run", "baby", "--prompt", "ROMEO:", "--max-new-tokens", "40",
            "--temperature", "0.8", "--top-k", "20", "--top-p", "0.95", "--seed", "1", "--no-stream"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert first == second
    assert first.startswith("ROMEO:")
    assert len(first) > len("ROMEO:") + 10


def test_usage_errors_exit_2_on_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-ui", "--max-iters", "lots"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value: 'lots'" in err
    assert err.strip().count("\n") == 0
