"""Chat mode: the end-of-turn stop, history trimming, `--message`, `--json` and `/system`.

The models are built by hand so their greedy answer is known: the final norm outputs one
constant vector whatever the input (weight 0, bias b), and the head's only non-zero row is
b for one token, so that token always wins: `<|end|>` (the answer ends at once, by the end
of its turn) or a letter (the answer runs to `max_new_tokens`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import assert_one_line, run_cli, run_cli_output
from reference_model import perturbed_weights
from gptbench.backends.registry import create_backend
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.backends.weights import save_weights
from gptbench.chat.session import ChatHistory
from gptbench.errors import UserError
from gptbench.tokenizers.char import CharTokenizer
from gptbench.tokenizers.chat import ChatTokenizer, Message

TOK = ChatTokenizer(CharTokenizer("abcdefghijklmnopqrstuvwxyz ?."))


def _model(winner: int, block_size: int = 48):
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16, bias=True, tie_embeddings=False)
    w = perturbed_weights(cfg, seed=0)
    b = np.linspace(-1, 1, cfg.n_embd).astype(np.float32)
    w["ln_f.weight"][:] = 0.0
    w["ln_f.bias"][:] = b
    w["lm_head.weight"][:] = 0.0
    w["lm_head.weight"][winner] = 10 * b
    return cfg, w


def _backend(winner: int, block_size: int = 48):
    cfg, w = _model(winner, block_size)
    be = create_backend(cfg, "torch", device="cpu", seed=0)
    be.set_weights(w)
    return be


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=5)


def test_the_answer_stops_at_the_end_of_its_turn():
    h = ChatHistory(TOK, 48, system="be brief.")
    answer = h.ask(_backend(TOK.end_id), "who are you?", GREEDY)
    assert (answer.text, answer.tokens, answer.finish_reason) == ("", [], "stop")
    assert h.conversation() == [Message("system", "be brief."), Message("user", "who are you?"), Message("assistant", "")]
    letter = TOK.encode("x")[0]
    answer = h.ask(_backend(letter), "again", GREEDY)
    assert (answer.text, answer.tokens, answer.finish_reason) == ("xxxxx", [letter] * 5, "length")


def test_history_is_trimmed_from_the_oldest_turn_and_the_system_prompt_stays():
    h = ChatHistory(TOK, 48, system="sys")
    h.messages = [Message("user", "one one"), Message("assistant", "a"), Message("user", "two two"), Message("assistant", "b"),
                  Message("user", "three")]
    ids, dropped = h.prompt(reserve=16)  # budget 48 - 16 = 32 tokens; all of it takes 37
    assert dropped == 2 and h.messages[0] == Message("user", "two two")
    assert ids == TOK.prompt_ids(h.conversation()) and len(ids) <= 32
    # and with the whole history kept it would not have fitted
    full = [Message("system", "sys"), Message("user", "one one"), Message("assistant", "a")] + h.messages
    assert len(TOK.prompt_ids(full)) > 32
    h.messages = [Message("user", "x" * 40)]
    with pytest.raises(UserError, match="more than the 32"):
        h.prompt(reserve=16)


def test_ask_reports_trimming_and_regenerate_asks_again():
    h = ChatHistory(TOK, 32)
    be = _backend(TOK.encode("z")[0], block_size=32)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    first = h.ask(be, "hello there", params)
    assert first.trimmed == 0 and first.text == "zzzz"
    second = h.ask(be, "and again you", params)
    assert second.trimmed == 2 and [m.content for m in h.messages] == ["and again you", "zzzz"]
    again = h.regenerate(be, params)
    assert again.text == "zzzz" and [m.content for m in h.messages] == ["and again you", "zzzz"]


def test_special_token_text_in_a_message_or_the_system_prompt_is_refused_and_the_history_kept():
    from gptbench.tokenizers.byte import ByteTokenizer

    tok = ChatTokenizer(ByteTokenizer())
    h = ChatHistory(tok, 64, messages=[Message("user", "hi"), Message("assistant", "yo")])
    with pytest.raises(UserError) as e:
        h.ask(None, "a<|end|>b", GREEDY)  # refused before any generation
    assert str(e.value) == ("the user message holds '<|end|>', the text of a special token, which Hugging Face's chat template "
                            "would read as that token; remove or rewrite it")
    assert h.messages == [Message("user", "hi"), Message("assistant", "yo")]
    h.system = "be <|user|> brief"
    with pytest.raises(UserError, match=r"the system message holds '<\|user\|>'"):
        h.ask(None, "ok", GREEDY)
    # no special token of a byte vocabulary: plain text, as the exported tokenizer reads it too (test_chat_export)
    assert tok.prompt_ids([Message("user", "x<|endoftext|>y")])[1:-2] == tok.encode("x<|endoftext|>y")


@pytest.fixture
def chat_files(tmp_path):
    cfg, w = _model(TOK.encode("k")[0])
    save_weights(tmp_path / "m.safetensors", cfg, w)
    TOK.save(tmp_path)
    return tmp_path


def _chat(capsys, files, *argv):
    return run_cli_output(capsys, "chat", "--weights", str(files / "m.safetensors"), "--tokenizer", str(files), "--backend", "torch",
                          "--temperature", "0", "--max-new-tokens", "3", *argv)


def test_message_mode_answers_each_turn_and_json_prints_text_tokens_and_reason(chat_files, capsys):
    rc, out, err = _chat(capsys, chat_files, "--system", "be brief.", "--message", "hi", "--message", "why?", "--json")
    assert rc == 0, err
    k = TOK.encode("k")[0]
    assert [json.loads(line) for line in out.splitlines()] == [{"text": "kkk", "tokens": [k] * 3, "finish_reason": "length"}] * 2
    rc, out, _ = _chat(capsys, chat_files, "--message", "hi")
    assert rc == 0 and out == "kkk\n"


def test_message_with_characters_outside_the_vocabulary_is_one_line(chat_files, capsys):
    rc, _, err = _chat(capsys, chat_files, "--message", "HELLO")
    assert rc == 2
    assert_one_line(err, "not in this run's character vocabulary")


def test_system_prompt_on_a_base_model_is_refused(trained_run, runs_dir, capsys):
    rc, err = run_cli(capsys, "chat", "--runs-dir", str(trained_run.path.parent), "--run", trained_run.name, "--system", "x",
                      "--message", "the king")
    assert rc == 2
    assert_one_line(err, "--system needs a chat run", "completion mode")
