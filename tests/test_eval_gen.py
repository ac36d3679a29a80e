"""Generative tasks on chat runs (`gen:FILE.jsonl`): greedy answers through the run's chat
template against a reference decode written out here, exact match after normalisation,
the JSONL format's checks, and a base run (no template) refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import assert_one_line, run_cli_output, train_fixture_run, tree_snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["king", "queen", "cat", "dog", "sun", "moon"]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny char-level chat run (--sft) that learned a little: "the king" -> "queen"."""
    root = tmp_path_factory.mktemp("chat-run")
    data = root / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"the {WORDS[i % 6]}"}, {"role": "assistant", "content": WORDS[(i + 1) % 6]}]}
            for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mp = pytest.MonkeyPatch()
    mp.setenv("GPTBENCH_CACHE_DIR", str(root / "cache"))
    try:
        run = train_fixture_run(root / "runs", data, name="chat", max_iters=60, sft=True, sample_tokens=0, eval_interval=60)
    finally:
        mp.undo()
    return root / "runs", run


def reference_answer(backend, tokenizer, text: str, max_new: int) -> str:
    """Greedy decoding without a cache: the template written out by hand (turn tokens around
    the content, then <|assistant|>), the argmax of the full forward pass each step, until
    <|end|>."""
    ids = [tokenizer.role_id("user"), *tokenizer.encode(text), tokenizer.end_id, tokenizer.role_id("assistant")]
    out: list[int] = []
    for _ in range(max_new):
        window = (ids + out)[-backend.config.block_size:]
        nxt = int(np.argmax(backend.forward_logits(np.array([window]))[0, -1]))
        if nxt in (tokenizer.end_id, tokenizer.eot_id):
            break
        out.append(nxt)
    return tokenizer.decode(out)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_gen_answers_match_a_reference_decode_and_score_by_exact_match(capsys, tmp_path, chat_run, backend):
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    runs, run = chat_run
    loaded = load_model(RunStore(runs), run=run.name, backend=backend, device="cpu")
    prompts = ["the king", "the cat", "the sun", "the moon"]
    want = [reference_answer(loaded.backend, loaded.tokenizer, p, 8) for p in prompts]
    # right answers for the first two (the second with extra whitespace: normalised away), wrong for the rest
    items = [{"prompt": prompts[0], "answer": want[0]}, {"prompt": prompts[1], "answer": [" nope ", f"  {want[1]}\n"]},
             {"messages": [{"role": "user", "content": prompts[2]}], "answer": want[2] + "!"},
             {"prompt": prompts[3], "answer": "x" + want[3]}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    rc, out, err = run_cli_output(capsys, "--runs-dir", runs, "eval", "--run", run.name, "--task", f"gen:{path}", "--backend", backend,
                                  "--max-new-tokens", "8", "--batch-size", "3", "--no-record", "--json", "--per-item", tmp_path / "p.jsonl")
    assert rc == 0, err
    got = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [g["output"] for g in got] == want
    assert [g["correct"] for g in got] == [True, True, False, False]
    task = json.loads(out)["tasks"][f"gen:{path}"]
    assert task["kind"] == "gen" and task["n"] == 4 and task["acc"] == 0.5
    rc, out, _ = run_cli_output(capsys, "--runs-dir", runs, "eval", "--run", run.name, "--task", f"gen:{path}", "--backend", backend,
                                "--max-new-tokens", "8", "--no-record", "--limit", "1")
    assert rc == 0 and "exact-match rate" in out


def test_gen_shots_are_earlier_turns_drawn_per_item():
    from gptbench.evaluation.generative import check_gen_item, conversations
    from gptbench.evaluation.items import Task
    from gptbench.tokenizers.chat import Message

    items = tuple(check_gen_item({"prompt": f"q{i}", "answer": f"a{i}"}, "x") for i in range(10))
    task = Task("gen:t", "gen", gen_items=items)
    convs = conversations(task, 2, seed=3)
    assert convs == conversations(task, 2, seed=3) and convs != conversations(task, 2, seed=4)
    for i, conv in enumerate(convs):
        assert conv[-1] == Message("user", f"q{i}") and len(conv) == 5
        for q, a in zip(conv[:-1:2], conv[1:-1:2]):
            j = int(q.content[1:])
            assert j != i and a == Message("assistant", f"a{j}")
    assert conversations(task.limited(3), 2, seed=3) == convs[:3]


def test_a_base_run_is_refused_in_one_line(capsys, tmp_path, trained_run):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run.path, runs / trained_run.name)
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "ROMEO", "answer": "JULIET"}) + "\n")
    before = tree_snapshot(tmp_path)
    rc, _, err = run_cli_output(capsys, "--runs-dir", runs, "eval", "--run", trained_run.name, "--task", f"gen:{path}")
    assert rc == 2
    assert_one_line(err, f"task gen:{path}", "chat template", "--sft")
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("line, needle", [
    ('{"prompt": "q"}', '"answer" must be a non-empty string'),
    ('{"prompt": "q", "answer": ""}', '"answer" must be a non-empty string'),
    ('{"prompt": "q", "answer": [1]}', '"answer" must be a non-empty string'),
    ('{"prompt": "q", "messages": [], "answer": "a"}', "exactly one of prompt and messages"),
    ('{"prompt": "q", "answer": "a", "extra": 1}', "unknown key(s) extra"),
    ('{"messages": [], "answer": "a"}', "non-empty list"),
    ('{"messages": [{"role": "bot", "content": "q"}], "answer": "a"}', "message 1 needs a role"),
    ('{"messages": [{"role": "user", "content": " "}], "answer": "a"}', "message 1 (user) needs non-empty text"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "a"}', "end with a user turn"),
    ('["q"]', "JSON object"),
    ('{"prompt": ', "not JSON"),
])
def test_gen_format_refuses_a_bad_item_naming_file_and_line(tmp_path, line, needle):
    from gptbench.errors import UserError
    from gptbench.evaluation.tasks import resolve_task

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "q", "answer": "a"}) + "\n" + line + "\n")
    with pytest.raises(UserError) as err:
        resolve_task(f"gen:{path}")
    assert f"{path} line 2" in str(err.value) and needle in str(err.value)
