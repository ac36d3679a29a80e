"""`gptbench serve` on a chat run (trained with `--sft`), through the real `openai` client: the
run's template, the end-of-turn stop, streaming and usage, each answer equal to
`gptbench chat --run R --message ... --json` (greedy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from helpers import run_cli_output
from gptbench.cli import main
from gptbench.runstore import RunStore
from gptbench.tokenizers.chat import Message
from gptbench.tokenizers.registry import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["king", "queen", "cat", "dog", "sun", "moon"]
TRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "48", "--batch-size", "8", "--grad-accum", "1",
         "--max-iters", "60", "--eval-interval", "60", "--eval-iters", "1", "--sample-tokens", "0", "--lr", "1e-2",
         "--threads", "1", "--backend", "torch", "--tokenizer", "char"]
ASKS = [("", "the cat"), ("one", "the sun"), ("", "the queen")]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny char-level chat run: 'the X' answered with the next word, then <|end|>."""
    tmp = tmp_path_factory.mktemp("serve-chat")
    rows = [{"messages": [{"role": "user", "content": f"the {WORDS[i % 6]}"}, {"role": "assistant", "content": WORDS[(i + 1) % 6]}]}
            for i in range(24)]
    (tmp / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp / "runs"
    assert main(["train", "--no-ui", "--sft", "--data", str(tmp / "chats.jsonl"), "--runs-dir", str(runs), "--name", "c", *TRAIN]) == 0
    return runs


def _chat_cli(capsys, runs, system: str, message: str, max_new: int) -> dict:
    extra = ["--system", system] if system else []
    rc, out, err = run_cli_output(capsys, "chat", "--runs-dir", str(runs), "--run", "c", "--backend", "torch", "--device", "cpu",
                                  "--temperature", "0", "--max-new-tokens", str(max_new), "--message", message, "--json", *extra)
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def chat_server(chat_run):
    """`gptbench serve` itself (the command wires the run's template), one thread, a free port."""
    env = {**os.environ, "GPTBENCH_RUNS_DIR": str(chat_run), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gptbench", "serve", "--run", "c", "--port", "0", "--backend", "torch",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "[completions and chat]" in line, line + proc.stderr.read()
        yield line.split(" at ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(60)


def _messages(system: str, message: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]


@pytest.mark.parametrize("system, message", ASKS)
def test_chat_answers_equal_gptbench_chat(chat_run, chat_server, capsys, system, message):
    client = openai.OpenAI(base_url=chat_server, api_key="unused", max_retries=0, timeout=120)
    want = _chat_cli(capsys, chat_run, system, message, 12)
    r = client.chat.completions.create(model="c", messages=_messages(system, message), max_tokens=12, temperature=0)
    c = r.choices[0]
    assert (c.message.role, c.message.content, c.finish_reason) == ("assistant", want["text"], want["finish_reason"])
    tok = load_tokenizer(RunStore(chat_run).existing("c").path)
    conv = ([Message("system", system)] if system else []) + [Message("user", message)]
    # the prompt is the run's template; the completion counts the answer and its <|end|> (when it stopped there)
    assert r.usage.prompt_tokens == len(tok.prompt_ids(conv))
    assert r.usage.completion_tokens == len(want["tokens"]) + (want["finish_reason"] == "stop")
    chunks = list(client.chat.completions.create(model="c", messages=_messages(system, message), max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want["text"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == want["finish_reason"]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices


def test_an_answer_stops_at_the_end_of_its_turn(chat_run, chat_server, capsys):
    """The trained model ends its one-word answers with <|end|>: finish_reason stop, no turn token in the text."""
    client = openai.OpenAI(base_url=chat_server, api_key="unused", max_retries=0, timeout=120)
    reasons = []
    for _, message in ASKS:
        r = client.chat.completions.create(model="c", messages=_messages("", message), max_tokens=12, temperature=0,
                                           logprobs=True, top_logprobs=2)
        c = r.choices[0]
        assert "<|" not in c.message.content
        assert len(c.logprobs.content) == r.usage.completion_tokens
        reasons.append(c.finish_reason)
    assert "stop" in reasons


def test_chat_text_outside_a_char_vocabulary_is_a_400(chat_server):
    client = openai.OpenAI(base_url=chat_server, api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="c", messages=[{"role": "user", "content": "THE KING"}], max_tokens=4)
    assert exc.value.body["param"] == "messages" and "chat template" in exc.value.body["message"]
