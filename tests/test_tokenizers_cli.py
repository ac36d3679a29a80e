"""`gptbench tokenizer train|stats`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from helpers import GPT2_RANKS, TINYSHAKESPEARE

from gptbench.cli import build_parser, main
from gptbench.tokenizers.bpe import BPETokenizer
from gptbench.tokenizers.registry import build_tokenizer, load_tokenizer


@pytest.fixture
def shakespeare_slice(tmp_path) -> Path:
    """The first 100 kB of tinyshakespeare: enough text for a 512-token BPE, a tenth of the time."""
    path = tmp_path / "slice" / "tinyshakespeare.txt"
    path.parent.mkdir()
    path.write_text(TINYSHAKESPEARE.read_text()[:100_000])
    return path


def test_train_writes_a_reloadable_tokenizer(tmp_path, capsys, shakespeare_slice):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(shakespeare_slice), "--vocab-size", "512", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("trained bpe:512 on tinyshakespeare.txt (0.10 MB, 1 docs) in ")
    assert f"use it with --tokenizer bpe:{out}" in printed
    tok = load_tokenizer(out)
    assert isinstance(tok, BPETokenizer)
    assert tok.vocab_size == 512
    assert build_tokenizer(f"bpe:{out}") == tok
    # Refuses to overwrite without --force.
    assert main(["tokenizer", "train", "--corpus", str(shakespeare_slice), "--vocab-size", "300", "--out", str(out)]) == 2
    assert "already holds a tokenizer.json; pass --force" in capsys.readouterr().err
    assert load_tokenizer(out).vocab_size == 512
    assert main(["tokenizer", "train", "--corpus", str(shakespeare_slice), "--vocab-size", "300", "--out", str(out), "--force"]) == 0
    assert load_tokenizer(out).vocab_size == 300


def test_train_errors_are_one_line(tmp_path, capsys):
    assert main(["tokenizer", "train", "--corpus", str(TINYSHAKESPEARE), "--vocab-size", "100", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "gptbench: error: BPE vocabulary size 100 is too small: it needs at least 257 (256 bytes + <|endoftext|>); "
        "pass e.g. bpe:4096\n"
    )
    assert not (tmp_path / "t").exists()
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "none.txt"), "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 2
    assert "none.txt: no such file or folder" in capsys.readouterr().err


def test_stats_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTBENCH_GPT2_RANKS", str(GPT2_RANKS))
    corpus = tmp_path / "c.txt"
    corpus.write_text(TINYSHAKESPEARE.read_text()[:100_000])
    assert main(["tokenizer", "stats", "--corpus", str(corpus), "--tokenizer", "bpe:1024", "--json"]) == 0
    rows = {r["tokenizer"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert list(rows) == ["char", "byte", "gpt2", "bpe:1024"]
    assert rows["char"]["bytes_per_token"] == rows["byte"]["bytes_per_token"] == 1.0
    assert rows["gpt2"]["vocab_size"] == 50257
    assert 3.0 < rows["gpt2"]["bytes_per_token"] < 3.6
    assert 2.4 < rows["bpe:1024"]["bytes_per_token"] < rows["gpt2"]["bytes_per_token"]
    assert main(["tokenizer", "stats", "--corpus", str(corpus)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "corpus c.txt: 100,000 bytes, 1 documents"
    assert lines[1].split() == ["tokenizer", "vocab", "tokens", "bytes/token", "MB/s"]
    assert [ln.split()[0] for ln in lines[2:]] == ["char", "byte", "gpt2"]


def test_stats_without_gpt2_ranks_says_why(tmp_path, capsys, monkeypatch):
    import gptbench.tokenizers.gpt2 as gpt2_mod

    monkeypatch.delenv("GPTBENCH_GPT2_RANKS", raising=False)
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    monkeypatch.setattr(gpt2_mod, "_fetch_with_tiktoken", lambda: (_ for _ in ()).throw(OSError("offline")))
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    assert main(["tokenizer", "stats", "--corpus", str(corpus)]) == 0
    gpt2_line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gpt2")][0]
    assert gpt2_line.split(None, 1)[1].startswith("unavailable: GPT-2 BPE ranks are not available offline")
    # Asked for explicitly, an unavailable tokenizer is an error.
    assert main(["tokenizer", "stats", "--corpus", str(corpus), "--tokenizer", "gpt2"]) == 2
    assert "GPT-2 BPE ranks are not available offline" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["tokenizer", "stats", "--tokenizer", "wordpiece"], ["tokenizer", "stats", "--max-docs", "0"]])
def test_stats_bad_arguments(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptbench: error: ")
    assert err.count("\n") == 1


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command a user can type (`train`, `tokenizer stats`, ...) with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*path, name))


def test_every_command_takes_runs_dir():
    """The README's promise, for nested commands too: `gptbench tokenizer stats --runs-dir X`."""
    top = build_parser()
    commands = [(path, p) for path, p in _leaf_parsers(top) if path]
    assert ("tokenizer", "stats") in [path for path, _ in commands]
    for path, parser in commands:
        assert "--runs-dir" in parser._option_string_actions, " ".join(path)


def test_tokenizer_actions_accept_runs_dir(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    runs = tmp_path / "runs"
    assert main(["tokenizer", "stats", "--corpus", str(corpus), "--runs-dir", str(runs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == 1400
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "260", "--out", str(out), "--runs-dir", str(runs)]) == 0
    assert load_tokenizer(out).vocab_size == 260
    assert not runs.exists()  # nothing is written there
