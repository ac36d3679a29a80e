"""`gptbench eval` as a user meets it: tables and JSON, per-item files, scores recorded in
the run and shown by `gptbench runs`, every bad input as one line (exit 2, nothing written),
and the log-likelihoods of a Hugging Face model against transformers on identical weights."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from helpers import GPT2_RANKS, assert_one_line, run_cli_output, save_hf_gpt2, tree_snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# made of the fixture run's characters (its corpus is the ROMEO/JULIET play)
ITEMS = [
    {"context": "ROMEO: line 1 of the play, said the", "choices": [" cat to the dog.", " sun to the moon.", " king to the queen."], "answer": 0},
    {"context": "JULIET: and so it goes,", "choices": [" king.", " sun."], "answer": 0},
    {"context": "ROMEO: line 2 of the play, said the sun", "choices": [" to the moon.", " to the dog."], "answer": 0},
]


@pytest.fixture
def run_copy(tmp_path, trained_run):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run.path, runs / trained_run.name)
    return runs, trained_run.name


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    return path


def test_eval_prints_json_writes_per_item_and_records_in_the_run(capsys, tmp_path, run_copy, items_file):
    runs, name = run_copy
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: line 3 of the play, said the king to the queen.\n")
    per_item = tmp_path / "per-item.jsonl"
    rc, out, err = run_cli_output(capsys, "--runs-dir", runs, "eval", "--run", name, "--task", f"mc:{items_file}",
                                  "--task", f"bpb:{text}", "--json", "--per-item", per_item, "--backend", "torch")
    assert rc == 0, err
    report = json.loads(out)
    mc, bpb = report["tasks"][f"mc:{items_file}"], report["tasks"][f"bpb:{text}"]
    assert mc["n"] == 3 and 0 <= mc["acc"] <= 1 and 0 <= mc["acc_norm"] <= 1
    assert 0 < bpb["bpb"] < 8 and bpb["n"] == len(text.read_text()) - 1  # char tokens: no end-of-text, the first is given
    assert report["core"] == pytest.approx(mc["centered"]) and report["core_tasks"] == [f"mc:{items_file}"]
    lines = [json.loads(x) for x in per_item.read_text().splitlines()]
    assert [len(x["logliks"]) for x in lines] == [3, 2, 2]
    assert mc["acc"] == np.mean([x["pred"] == x["answer"] for x in lines])
    records = [json.loads(x) for x in (runs / name / "evals.jsonl").read_text().splitlines()]
    assert sorted(r["task"] for r in records) == sorted(report["tasks"])
    assert {r["step"] for r in records} == {int(report["model"].rpartition("@step-")[2])}
    # again: the record of the same task and step is replaced, not repeated
    assert run_cli_output(capsys, "--runs-dir", runs, "eval", "--run", name, "--task", f"mc:{items_file}", "--backend", "mlx")[0] == 0
    assert len((runs / name / "evals.jsonl").read_text().splitlines()) == 2
    rc, out, _ = run_cli_output(capsys, "--runs-dir", runs, "runs", "--json")
    (row,) = json.loads(out)
    assert row["score"] == pytest.approx(mc["centered"])


def test_backends_agree_and_the_table_names_core_tasks(capsys, run_copy, items_file):
    runs, name = run_copy
    got = {}
    for backend in ("torch", "mlx"):
        rc, out, err = run_cli_output(capsys, "--runs-dir", runs, "eval", "--run", name, "--task", f"mc:{items_file}",
                                      "--backend", backend, "--no-record", "--per-item", runs / f"{backend}.jsonl")
        assert rc == 0, err
        assert "acc_norm" in out and f"CORE (centred acc, mean over mc:{items_file})" in out
        got[backend] = [json.loads(x)["logliks"] for x in (runs / f"{backend}.jsonl").read_text().splitlines()]
    for a, b in zip(got["torch"], got["mlx"]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not (runs / name / "evals.jsonl").exists()  # --no-record


def test_logliks_equal_transformers_on_identical_weights(capsys, tmp_path):
    """A Hugging Face GPT-2 folder made by transformers, scored by `gptbench eval --model`,
    against the same model in transformers (float64), item by item."""
    import torch

    from gptbench.tokenizers.registry import load_tokenizer_spec

    model = save_hf_gpt2(tmp_path / "hf", n_positions=24).double()
    items = [{"context": "The quick brown fox", "choices": [" jumps over the lazy dog", " sleeps", " runs away from the hen house"], "answer": 0},
             {"context": "Paris is the capital of ", "choices": ["France", "Germany and of nothing else at all"], "answer": 0},
             {"context": "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " * 2 + "one",
              "choices": [" sixteen", " zero"], "answer": 0}]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    rc, out, err = run_cli_output(capsys, "eval", "--model", tmp_path / "hf", "--task", f"mc:{path}", "--backend", "torch",
                                  "--per-item", tmp_path / "p.jsonl", "--json")
    assert rc == 0, err
    got = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    tok = load_tokenizer_spec(f"gpt2:{GPT2_RANKS}")
    truncated = 0
    for item, mine in zip(items, got):
        for choice, ll in zip(item["choices"], mine["logliks"]):
            ctx, cont = item["context"].rstrip(), item["context"][len(item["context"].rstrip()):] + choice
            ctx_ids = tok.encode(ctx)
            cont_ids = tok.encode(ctx + cont)[len(ctx_ids):]
            whole = (ctx_ids + cont_ids)[-25:]
            truncated += len(ctx_ids) + len(cont_ids) > 25
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0], -1)
            ref = sum(float(logp[len(whole) - 1 - len(cont_ids) + k, t]) for k, t in enumerate(cont_ids))
            assert ll == pytest.approx(ref, abs=1e-4)
    assert truncated >= 1
    assert json.loads(out)["tasks"][f"mc:{path}"]["acc"] == np.mean([int(np.argmax(x["logliks"])) == 0 for x in got])


@pytest.mark.parametrize("case, needles", [
    ({"line": '{"context": "a", "choices": [], "answer": 0}'}, ["line 2", "at least 2"]),
    ({"line": '{"context": "a", "choices": [" b", " c"], "answer": 5}'}, ["line 2", "answer"]),
    ({"line": '{"context": "a", "choices": [" b", ""], "answer": 0}'}, ["line 2", "choice 1 is empty"]),
    ({"line": '{"context": "a", "choices": [" b", " \\u00e9"], "answer": 0}'}, ["item 2", "cannot encode"]),
    ({"task": "nope"}, ["unknown task 'nope'", "mc:FILE.jsonl"]),
    ({"task": "mc:missing.jsonl"}, ["task file not found"]),
    ({"task": "bpb:missing.txt"}, ["text file not found"]),
    ({"args": ["--limit", "0"]}, ["--limit must be >= 1"]),
    ({"args": ["--model", "x"]}, ["exactly one of --run NAME or --model SOURCE"]),
    ({"args": ["--per-item", "no/such/dir/p.jsonl"]}, ["--per-item", "does not exist"]),
    ({"run": "ghost"}, ["ghost"]),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, run_copy, items_file, monkeypatch, case, needles):
    runs, name = run_copy
    monkeypatch.chdir(tmp_path)
    if "line" in case:
        items_file.write_text(json.dumps(ITEMS[0]) + "\n" + case["line"] + "\n")
    before = tree_snapshot(tmp_path)
    argv = ["--runs-dir", runs, "eval", "--run", case.get("run", name), "--task", case.get("task", f"mc:{items_file}"), *case.get("args", [])]
    rc, out, err = run_cli_output(capsys, *argv)
    assert rc == 2
    assert_one_line(err, *needles)
    assert tree_snapshot(tmp_path) == before


def test_eval_task_scores_at_every_evaluation_of_training(tmp_path, corpus_file, items_file):
    from gptbench.runstore.evals import read_scores

    from helpers import train_fixture_run

    run = train_fixture_run(tmp_path / "runs", corpus_file, name="scored", max_iters=100, eval_task=f"mc:{items_file}")
    scores = read_scores(run.path)
    evals = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [s.step for s in scores] == [e["step"] for e in evals] and len(scores) >= 2
    assert all(s.task == f"mc:{items_file}" and s.n == 3 and s.kind == "mc" for s in scores)
    assert f"mc:{items_file} acc" in (run.path / "log.txt").read_text()


def test_a_bad_eval_task_leaves_no_run(capsys, tmp_path, corpus_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": [" b"], "answer": 0}\n')
    runs = tmp_path / "runs"
    for task, needles in ((f"mc:{bad}", [f"{bad} line 1", "at least 2"]), ("nope", ["eval-task", "unknown task 'nope'"])):
        rc, _, err = run_cli_output(capsys, "--runs-dir", runs, "train", "--no-ui", "--data", corpus_file, "--preset", "tiny",
                                    "--max-iters", "10", "--device", "cpu", "--name", "x", "--eval-task", task)
        assert rc == 2
        assert_one_line(err, *needles)
        assert not (runs / "x").exists()


def test_run_details_show_the_score():
    from rich.console import Console

    from gptbench.runstore import RunSummary
    from gptbench.tui.widgets.rundetails import summary_table

    console = Console(record=True, width=120)
    console.print(summary_table(RunSummary("r", "finished", step=10, max_iters=10, created=1.0, score=0.25), None, now=2.0))
    assert re.search(r"score +0.250 \(mean centred accuracy", console.export_text())
    console.print(summary_table(RunSummary("r", "finished", step=10, max_iters=10, created=1.0), None, now=2.0))
    assert console.export_text().count("score") == 0
