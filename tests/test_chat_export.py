"""`convert --to hf` of a chat run: transformers applies the exported template to the same ids
and its greedy generation gives gptbench's greedy answer."""

from __future__ import annotations

import json

import pytest

from helpers import GPT2_RANKS, run_cli, save_hf_gpt2
from gptbench.backends.sampling import SamplingParams
from gptbench.chat.session import ChatHistory
from gptbench.loading import load_model
from gptbench.runstore import RunStore
from gptbench.tokenizers.chat import Message

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["king", "queen", "cat", "dog", "sun", "moon"]
CONVERSATION = [Message("system", "Answer with one word."), Message("user", "the king"), Message("assistant", "queen"),
                Message("user", "the cat")]


def _chats(path):
    rows = [{"messages": [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": f"the {WORDS[i % 6]}"},
                          {"role": "assistant", "content": WORDS[(i + 1) % 6]}]} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TRAIN = ["--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--batch-size", "2", "--grad-accum", "1",
         "--sample-tokens", "0", "--threads", "1", "--backend", "torch", "--block-size", "96", "--lr", "1e-2"]


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_exported_template_and_greedy_answer_match_transformers(kind, tmp_path, runs_dir, capsys, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _chats(tmp_path / "chats.jsonl")
    if kind == "gpt2":  # a pretrained GPT-2 (tiny, by transformers) grows by the turn tokens
        from gptbench.tokenizers.gpt2 import load_gpt2

        save_hf_gpt2(tmp_path / "base", tokenizer=load_gpt2(GPT2_RANKS), n_positions=128)
        source = ["--init-from", str(tmp_path / "base")]
    else:
        source = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--tokenizer", "char"]
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--data", str(data), "--runs-dir", str(runs_dir), "--name", "c", *source, *TRAIN)
    assert rc == 0, err
    out = tmp_path / "out-hf"
    rc, err = run_cli(capsys, "convert", "c", str(out), "--to", "hf", "--runs-dir", str(runs_dir))
    assert rc == 0, err

    loaded = load_model(RunStore(runs_dir), run="c", backend="torch", device="cpu")
    tok = loaded.tokenizer
    hf_tok = AutoTokenizer.from_pretrained(out)
    messages = [{"role": m.role, "content": m.content} for m in CONVERSATION]
    hf_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True)
    hf_ids = hf_ids["input_ids"] if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys") else hf_ids
    assert list(hf_ids) == tok.prompt_ids(CONVERSATION)

    history = ChatHistory(tok, loaded.backend.config.block_size, system=CONVERSATION[0].content, messages=list(CONVERSATION[1:3]))
    answer = history.ask(loaded.backend, CONVERSATION[3].content, SamplingParams(temperature=0.0, max_new_tokens=8))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        gen = model.generate(torch.tensor([hf_ids]), max_new_tokens=8, do_sample=False, eos_token_id=tok.end_id,
                             pad_token_id=tok.end_id)[0, len(hf_ids):].tolist()
    want = gen[: gen.index(tok.end_id)] if tok.end_id in gen else gen
    assert answer.tokens == want
    assert answer.finish_reason == ("stop" if tok.end_id in gen else "length")
    assert hf_tok.decode(want) == answer.text


def test_mlx_lm_applies_the_template_and_gives_the_greedy_answer(tmp_path, runs_dir, capsys):
    """`convert --to mlx-lm` of a (tied-head) chat run: mlx_lm.load + generate with the
    tokenizer's own template give gptbench's prompt ids and greedy answer."""
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    data = _chats(tmp_path / "chats.jsonl")
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--data", str(data), "--runs-dir", str(runs_dir), "--name", "c",
                      "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--tie-embeddings", *TRAIN)
    assert rc == 0, err
    out = tmp_path / "out-mlx"
    rc, err = run_cli(capsys, "convert", "c", str(out), "--to", "mlx-lm", "--runs-dir", str(runs_dir))
    assert rc == 0, err
    loaded = load_model(RunStore(runs_dir), run="c", backend="mlx", device="cpu")
    model, mtok = load(str(out))
    ids = mtok.apply_chat_template([{"role": m.role, "content": m.content} for m in CONVERSATION], add_generation_prompt=True)
    assert list(ids) == loaded.tokenizer.prompt_ids(CONVERSATION)
    assert loaded.tokenizer.end_id in mtok.eos_token_ids
    history = ChatHistory(loaded.tokenizer, loaded.backend.config.block_size, system=CONVERSATION[0].content, messages=list(CONVERSATION[1:3]))
    answer = history.ask(loaded.backend, CONVERSATION[3].content, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert generate(model, mtok, ids, max_tokens=8, sampler=make_sampler(temp=0.0)) == answer.text


@pytest.mark.parametrize("kind", ["byte", "gpt2"])
def test_special_token_text_is_refused_where_the_exported_tokenizer_would_read_a_token(kind, tmp_path):
    """Why gptbench refuses `<|end|>` & co. inside a message (gptbench.tokenizers.chat): the
    exported tokenizer's `apply_chat_template` reads them as the special tokens, which plain
    text encoding does not; text that is no special token of the export is accepted, with
    the export's very ids."""
    from transformers import AutoTokenizer

    from gptbench.errors import UserError
    from gptbench.tokenizers.byte import ByteTokenizer
    from gptbench.tokenizers.chat import ChatTokenizer
    from gptbench.tokenizers.gpt2 import load_gpt2
    from gptbench.tokenizers.hf_files import write_hf_tokenizer

    tok = ChatTokenizer(ByteTokenizer() if kind == "byte" else load_gpt2(GPT2_RANKS))
    write_hf_tokenizer(tok, tmp_path, 64)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)

    def hf_ids(content):
        ids = hf_tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    for special in ("<|end|>", "<|user|>") + (("<|endoftext|>",) if kind == "gpt2" else ()):
        content = f"a{special}b"
        plain = [tok.role_id("user"), *tok.encode(content), tok.end_id, tok.role_id("assistant")]
        assert hf_ids(content) != plain  # the export reads a token out of the text
        with pytest.raises(UserError, match="the text of a special token"):
            tok.prompt_ids([Message("user", content)])
    if kind == "byte":  # <|endoftext|> is no token of a byte vocabulary: text on both sides
        assert hf_ids("a<|endoftext|>b") == tok.prompt_ids([Message("user", "a<|endoftext|>b")])
