"""`gptbench sample` end to end on the trained fixture run: output, JSON, batches, seeds,
and every bad input as a one-line error with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gptbench.backends.generate import generate
from gptbench.backends.sampling import SamplingParams
from gptbench.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample(trained_run, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["sample", "--runs-dir", str(trained_run.path.parent), "--run", trained_run.name, "--device", "cpu", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_text_matches_the_engine(trained_run, trained_model, capsys):
    want = generate(trained_model.backend, trained_model.tokenizer, "ROMEO: line", SamplingParams(temperature=0, max_new_tokens=25)).text
    for extra in (["--no-stream"], ["--stream"], ["--no-stream", "--no-kv-cache"]):
        code, out, err = sample(trained_run, capsys, "--prompt", "ROMEO: line", "--temperature", "0", "--max-new-tokens", "25", *extra)
        assert code == 0, extra
        assert out == "ROMEO: line" + want + "\n", extra
        assert "25 tokens" in err


def test_json_one_object_per_sample(trained_run, capsys):
    code, out, _ = sample(trained_run, capsys, "--prompt", "JULIET:", "--json", "--num-samples", "3", "--seed", "4", "--max-new-tokens", "30", "--temperature", "1.0")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["sample"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["generation_tokens"] == 30
        assert r["prompt_tokens"] == 7
        assert r["finish_reason"] == "length"
        assert r["tokens_per_sec"] > 0
        assert len(r["text"]) == 30
        assert r["source"] == "fixture@step-150"
    assert len({r["text"] for r in rows}) > 1  # rows are different samples


def test_same_seed_same_text(trained_run, capsys):
    args = ("--prompt", "ROMEO:", "--seed", "7", "--max-new-tokens", "40", "--temperature", "1.2", "--top-k", "10", "--no-stream")
    a, b = sample(trained_run, capsys, *args)[1], sample(trained_run, capsys, *args)[1]
    c = sample(trained_run, capsys, *args[:-7], "--seed", "8", *args[-5:])[1]
    assert a == b
    assert a != c


def test_stop_string_and_num_samples_text_output(trained_run, trained_model, capsys):
    full = generate(trained_model.backend, trained_model.tokenizer, "ROMEO:", SamplingParams(temperature=0, max_new_tokens=30)).text
    stop = full[6:8]
    code, out, _ = sample(trained_run, capsys, "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "30", "--stop", stop, "--num-samples", "2")
    cut = full[: full.index(stop)]
    assert code == 0
    assert out == f"--- sample 1/2 ---\nROMEO:{cut}\n--- sample 2/2 ---\nROMEO:{cut}\n"


def test_weights_file_with_tokenizer_folder(trained_run, capsys):
    ck = trained_run.checkpoint("best")
    code = main(["sample", "--weights", str(ck.path), "--tokenizer", str(trained_run.path), "--prompt", "ROMEO", "--temperature", "0", "--max-new-tokens", "10", "--no-stream", "--device", "cpu"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith("ROMEO")
    assert len(out) == len("ROMEO") + 10 + 1


@pytest.fixture(scope="module")
def bad_files(trained_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-weights")
    good = trained_run.checkpoint("best").path.read_bytes()
    (d / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (d / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    return d


BAD = [
    (["--temperature", "-0.5"], "temperature must be >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--top-k", "-3"], "top_k must be >= 0"),
    (["--min-p", "1"], "min_p must be in [0, 1)"),
    (["--min-p", "-0.1"], "min_p must be in [0, 1)"),
    (["--repetition-penalty", "0"], "repetition_penalty must be > 0"),
    (["--repetition-penalty", "-2"], "repetition_penalty must be > 0"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--prompt", "ROMEO ☃ says"], "cannot encode '☃'"),
    (["--checkpoint", "step-99999"], "has no checkpoint step-99999"),
    (["--checkpoint", "newest"], "unknown checkpoint 'newest'"),
]


@pytest.mark.parametrize("args, fragment", BAD, ids=[a[0] + "=" + a[1] for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(trained_run, capsys, args, fragment):
    code, out, err = sample(trained_run, capsys, "--max-new-tokens", "3", *args)
    assert code == 2
    assert out == ""
    assert err.startswith("gptbench: error: ")
    assert fragment in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--run", "nope"], "no run named 'nope'"),
        (["--weights", "{d}/garbage.safetensors"], "--weights needs --tokenizer"),
        (["--weights", "{d}/garbage.safetensors", "--tokenizer", "{run}"], "not a valid safetensors file"),
        (["--weights", "{d}/truncated.safetensors", "--tokenizer", "{run}"], "garbage"),
        (["--weights", "{d}/missing.safetensors", "--tokenizer", "{run}"], "weights file not found"),
        (["--weights", "{d}/garbage.safetensors", "--run", "x"], "exactly one of --run NAME or --weights"),
    ],
)
def test_bad_model_sources(trained_run, bad_files, capsys, argv, fragment):
    argv = [a.format(d=bad_files, run=trained_run.path) for a in argv]
    code = main(["sample", "--runs-dir", str(trained_run.path.parent), "--max-new-tokens", "3", *argv])
    _, err = capsys.readouterr()
    if fragment == "garbage":  # a truncated file: any one-line weights error naming the file
        assert "truncated.safetensors" in err
    else:
        assert fragment in err
    assert code == 2
    assert err.startswith("gptbench: error: ")
    assert err.count("\n") == 1


def test_subprocess_exit_code_and_no_traceback(trained_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run.path, runs / trained_run.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "gptbench", "sample", "--runs-dir", str(runs), "--run", trained_run.name, "--device", "cpu"]
    bad = subprocess.run([*base, "--top-p", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1
    ok = subprocess.run([*base, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0
    assert ok.stdout.startswith("ROMEO:")
    assert len(ok.stdout) == len("ROMEO:") + 12 + 1


def test_stop_token_id_ends_with_eos(trained_run, trained_model, capsys):
    full = generate(trained_model.backend, trained_model.tokenizer, "ROMEO:", SamplingParams(temperature=0, max_new_tokens=20))
    stop_id = full.tokens[3]
    first = full.tokens.index(stop_id)
    code, out, _ = sample(trained_run, capsys, "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "20", "--stop-token-id", str(stop_id), "--json")
    row = json.loads(out)
    assert code == 0
    assert row["finish_reason"] == "eos"
    assert row["generation_tokens"] == first + 1
    assert row["text"] == trained_model.tokenizer.decode(full.tokens[:first])
