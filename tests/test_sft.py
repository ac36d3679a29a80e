"""Chat models: turn tokens on every tokenizer kind, the template, chat data and `--sft` runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import GPT2_RANKS, assert_one_line, run_cli, run_cli_output, tree_snapshot
from gptbench.chat.records import load_chat_corpus
from gptbench.chat.sft import pack_rows, prepare_sft_data
from gptbench.errors import UserError
from gptbench.tokenizers.byte import ByteTokenizer
from gptbench.tokenizers.chat import CHAT_TOKENS, ChatTokenizer, Message
from gptbench.tokenizers.registry import build_tokenizer, load_tokenizer

CONV = [Message("system", "Be brief."), Message("user", "Hi, who are you?"), Message("assistant", "A small model."),
        Message("user", "Ok"), Message("assistant", "Bye.")]
TEXT = "".join(m.content for m in CONV)


def _tokenizers():
    from gptbench.tokenizers.bpe import train_bpe
    from gptbench.tokenizers.gpt2 import load_gpt2

    return {"char": build_tokenizer("char", lambda: TEXT), "byte": ByteTokenizer(),
            "bpe": train_bpe([TEXT * 20], 300), "gpt2": load_gpt2(GPT2_RANKS)}


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2"])
def test_turn_tokens_follow_the_vocabulary_and_the_template_gives_the_same_ids(kind, tmp_path):
    base = _tokenizers()[kind]
    tok = ChatTokenizer(base)
    assert tok.vocab_size == base.vocab_size + 4
    assert [tok.special[t] for t in CHAT_TOKENS] == list(range(base.vocab_size, base.vocab_size + 4))
    ids, trained = tok.encode_conversation(CONV)
    want = []
    for m in CONV:
        want += [tok.role_id(m.role), *base.encode(m.content), tok.end_id]
    assert ids.tolist() == want
    # the stored Jinja template renders exactly these ids (and the generation prompt)
    assert tok.prompt_ids(CONV) == want + [tok.role_id("assistant")]
    assert tok.prompt_ids(CONV[:2]) == tok.encode_conversation(CONV[:2])[0].tolist() + [tok.role_id("assistant")]
    # trained: the assistant's content and its <|end|>, nothing else
    assert tok.decode(ids[trained].tolist()) == "A small model.<|end|>Bye.<|end|>"
    if kind != "char":  # text never produces a turn token (a char vocabulary cannot spell one at all)
        assert tok.encode("<|end|>") == base.encode("<|end|>") and tok.end_id not in tok.encode("<|end|>")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again == tok and again.template == tok.template and again.end_id == tok.end_id


def test_train_on_prompt_trains_every_token_but_the_first():
    tok = ChatTokenizer(ByteTokenizer())
    _, trained = tok.encode_conversation(CONV, train_on_prompt=True)
    assert not trained[0] and trained[1:].all()


def test_rows_are_one_conversation_each_padded_with_ignored_targets():
    tok = ChatTokenizer(ByteTokenizer())
    convs, truncated, dropped, kept = pack_rows(tok, [CONV, CONV[1:3]], block_size=64, train_on_prompt=False)
    assert (truncated, dropped) == (0, 0)
    ids0, trained0 = tok.encode_conversation(CONV)
    n = len(ids0)
    assert kept == n + len(tok.encode_conversation(CONV[1:3])[0])
    assert convs.ids[0, :n].tolist() == ids0.tolist() and (convs.ids[0, n:] == tok.end_id).all()
    assert convs.targets[0, : n - 1].tolist() == np.where(trained0[1:], ids0[1:], -1).tolist()
    assert (convs.targets[0, n - 1 :] == -1).all()
    assert len(convs) == int(trained0.sum()) + len("A small model.") + 1


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


GOOD = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
BAD_INPUTS = [
    ({"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]}, "empty user message"),
    ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}, "content must be a string, got list"),
    ({"prompt": "a", "completion": 3}, "content must be a string, got int"),
    ('{"messages": [', "malformed JSON"),
    ({"text": "plain"}, "no `messages` and no `prompt`/`completion`"),
    ({"messages": [{"role": "user", "content": "a<|end|>b"}, {"role": "assistant", "content": "b"}]},
     "message 1: the user message holds '<|end|>', the text of a special token"),
    ({"prompt": "a", "completion": "b<|endoftext|>"}, "`completion`: the assistant message holds '<|endoftext|>'"),
]


@pytest.mark.parametrize("record,problem", BAD_INPUTS, ids=[p for _, p in BAD_INPUTS])
def test_bad_conversations_are_one_line_naming_file_and_line(record, problem, tmp_path, runs_dir, capsys):
    path = _write(tmp_path / "chats.jsonl", [GOOD, GOOD, record])
    with pytest.raises(UserError, match="line 3"):
        load_chat_corpus(str(path))
    before = tree_snapshot(runs_dir)
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--data", str(path), "--runs-dir", str(runs_dir), "--name", "c",
                      "--max-iters", "1")
    assert rc == 2
    assert_one_line(err, "chats.jsonl line 3", problem)
    assert tree_snapshot(runs_dir) == before and not (runs_dir / "c").exists()


def test_a_json_file_stands_in_for_a_hub_dataset(tmp_path):
    rows = [GOOD, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(rows))
    corpus = load_chat_corpus(str(path))
    assert [[m.role for m in c] for c in corpus.conversations] == [["user", "assistant"], ["system", "user", "assistant"]]
    path.write_text(json.dumps([GOOD, {"messages": [{"role": "user", "content": "q"}]}]))
    with pytest.raises(UserError, match="chats.json record 2: the conversation has no assistant turn"):
        load_chat_corpus(str(path))


def test_data_report_counts_conversations_tokens_share_and_truncation(tmp_path):
    long = {"prompt": "x" * 80, "completion": "y"}  # its answer falls past the block: cut, then dropped
    path = _write(tmp_path / "c.jsonl", [long] + [GOOD] * 9)
    lines = []
    data = prepare_sft_data(str(path), "byte", block_size=32, val_fraction=0.1, progress=lines.append)
    assert data.info["conversations"] == 10 and data.info["truncated"] == 1 and data.info["dropped"] == 1
    assert (len(data.train.ids), len(data.val.ids)) == (8, 1)
    # each GOOD: <|user|> a <|end|> <|assistant|> b <|end|> = 6 tokens, 2 trained (b, <|end|>)
    assert len(lines) == 1
    assert "10 conversations, 54 tokens, 33.3% trained (assistant tokens), 1 truncated" in lines[0], lines[0]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_growing_the_vocabulary_keeps_old_rows_bit_identical(name, tied):
    from helpers import tiny_model_config
    from reference_model import perturbed_weights
    from gptbench.backends.registry import create_backend
    from gptbench.modelweights import fit_tensors

    src = tiny_model_config(tie_embeddings=tied)
    w = perturbed_weights(src, seed=5)
    target = src.replace(vocab_size=src.vocab_size + 4)
    grown = fit_tensors(w, src, target, "src")
    be_src, be = create_backend(src, name, device="cpu", seed=0), create_backend(target, name, device="cpu", seed=0)
    be_src.set_weights(w)
    be.set_weights(grown)
    got = be.get_weights()
    for key in ("wte.weight",) + (() if tied else ("lm_head.weight",)):
        assert got[key].shape == (src.vocab_size + 4, src.n_embd)
        assert np.array_equal(got[key][: src.vocab_size], w[key])  # bit for bit
        new = got[key][src.vocab_size :].astype(np.float64)
        mean, std = w[key].astype(np.float64).mean(0), w[key].astype(np.float64).std(0)
        assert np.all(np.abs(new - mean) < 0.5 * std + 1e-6)  # the mean row, plus a little noise
        assert len({r.tobytes() for r in got[key][src.vocab_size :]}) == 4  # four distinct turn tokens
    for key in w:
        if key not in ("wte.weight", "lm_head.weight"):
            assert np.array_equal(got[key], w[key]), key
    idx = np.arange(src.block_size).reshape(1, -1) % src.vocab_size
    np.testing.assert_allclose(be.forward_logits(idx)[..., : src.vocab_size], be_src.forward_logits(idx), rtol=1e-5, atol=1e-5)


SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32", "--batch-size", "2", "--grad-accum", "1",
         "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "2", "--sample-tokens", "0", "--log-interval", "2"]


def _chats(path, n=12):
    words = ["king", "queen", "cat", "dog", "sun", "moon"]
    rows = [{"messages": [{"role": "user", "content": f"the {words[i % 6]}"}, {"role": "assistant", "content": words[(i + 1) % 6]}]}
            for i in range(n)]
    return _write(path, rows)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_sft_from_scratch_trains_on_assistant_tokens(backend, tmp_path, runs_dir, capsys):
    from gptbench.runstore import RunStore

    data = _chats(tmp_path / "chats.jsonl")
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--data", str(data), "--runs-dir", str(runs_dir), "--name", "c",
                      "--backend", backend, "--threads", "1", *SMALL)
    assert rc == 0, err
    run = RunStore(runs_dir).existing("c")
    tok = load_tokenizer(run.path)
    assert isinstance(tok, ChatTokenizer) and tok.kind == "char"
    cfg = run.config()
    assert cfg["train"]["sft"] is True and cfg["model"]["vocab_size"] == tok.vocab_size
    evals = [r for r in run.metrics() if r.get("val_loss") is not None]
    assert evals and all(np.isfinite(r["val_loss"]) and r.get("val_bpb") for r in evals)


def test_sft_from_a_run_grows_its_vocabulary(trained_run, tmp_path, runs_dir, capsys):
    from gptbench.runstore import RunStore
    from gptbench.tokenizers.registry import load_tokenizer as load

    base = load(trained_run.path)
    data = _chats(tmp_path / "chats.jsonl")
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--init-from", str(trained_run.path), "--data", str(data),
                      "--runs-dir", str(runs_dir), "--name", "c", "--threads", "1", "--max-iters", "2", "--eval-interval", "2",
                      "--eval-iters", "1", "--batch-size", "2", "--grad-accum", "1", "--sample-tokens", "0")
    assert rc == 0, err
    run = RunStore(runs_dir).existing("c")
    tok = load(run.path)
    assert tok.base == base and tok.vocab_size == base.vocab_size + 4
    assert run.config()["model"]["vocab_size"] == trained_run.config()["model"]["vocab_size"] + 4


def test_sft_with_lora_trains_adapters_and_resumes(trained_run, tmp_path, runs_dir, capsys):
    from gptbench.runstore import RunStore

    data = _chats(tmp_path / "chats.jsonl")
    common = ["--runs-dir", str(runs_dir), "--threads", "1"]
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--init-from", str(trained_run.path), "--lora-rank", "2", "--data", str(data),
                      "--name", "c", "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "2",
                      "--grad-accum", "1", "--sample-tokens", "0", *common)
    assert rc == 0, err
    rc, err = run_cli(capsys, "train", "--no-ui", "--resume", "c", "--max-iters", "4", *common)
    assert rc == 0, err
    run = RunStore(runs_dir).existing("c")
    assert run.config()["lora"]["rank"] == 2 and [c.step for c in run.checkpoints()][-1] == 4


# ---- Hugging Face chat datasets (a local JSON file stands in for the hub set) ----------------------
HUB_ROWS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"the {w}"},
                          {"role": "assistant", "content": w[::-1]}], "id": i}
            for i, w in enumerate(["king", "queen", "cat", "dog", "sun", "moon"] * 2)]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """`datasets.load_dataset` answering hub set `fake/chats` with the real JSON builder over a
    local file (streamed, as the hub is read); any other name is not on the hub."""
    import datasets

    import gptbench.data.hub as hub_mod

    local = tmp_path / "hub-chats.json"
    local.write_text(json.dumps(HUB_ROWS))
    real, calls = datasets.load_dataset, []

    def load_dataset(name, config=None, *, split, streaming=False, **kw):
        calls.append((name, config, split, streaming))
        if name != "fake/chats":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return real("json", data_files=str(local), split=split, streaming=streaming)

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_mod, "_probe_hub", lambda where, timeout=5.0: None)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_chat_dataset_gives_the_rows_of_the_same_conversations_in_jsonl(fake_hub, tmp_path, runs_dir, capsys):
    jsonl = _write(tmp_path / "same.jsonl", [{"messages": r["messages"]} for r in HUB_ROWS])
    hub = prepare_sft_data("hf:fake/chats", "byte", block_size=32, val_fraction=0.25)
    assert fake_hub == [("fake/chats", None, "train", True)]
    ref = prepare_sft_data(str(jsonl), "byte", block_size=32, val_fraction=0.25)
    for split in ("train", "val"):
        a, b = getattr(hub, split), getattr(ref, split)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.targets, b.targets)
    tok = hub.tokenizer  # the loss covers each answer and its <|end|>, nothing of the system or user turns
    answers = [tok.decode(row[row >= 0].tolist()) for row in hub.train.targets]
    assert answers == [f"{r['messages'][2]['content']}<|end|>" for r in HUB_ROWS[:9]]
    assert hub.info["spec"] == "hf:fake/chats:train" and hub.info["sha256"] == ref.info["sha256"]

    rc, out, err = run_cli_output(capsys, "train", "--no-ui", "--sft", "--data", "hf:fake/chats", "--tokenizer", "byte",
                                  "--runs-dir", str(runs_dir), "--name", "hub", "--threads", "1", *SMALL)
    assert rc == 0, err
    from gptbench.runstore import RunStore

    run = RunStore(runs_dir).existing("hub")
    assert (run.config()["data"]["spec"], run.config()["data"]["sha256"]) == ("hf:fake/chats", ref.info["sha256"])
    share = (len(hub.train) + len(hub.val)) / hub.info["tokens"]
    assert f"chat data fake/chats: 12 conversations, {hub.info['tokens']} tokens, {share:.1%} trained (assistant tokens)" in out + err


def test_a_hub_chat_dataset_field_and_bad_records_are_one_line(fake_hub):
    with pytest.raises(UserError) as e:
        load_chat_corpus("hf:fake/chats#conversation")
    assert str(e.value) == "hf:fake/chats:train record 1 has no field 'conversation' (fields: messages, id); pick the messages column with #FIELD"
    with pytest.raises(UserError) as e:
        load_chat_corpus("hf:fake/missing")
    assert str(e.value) == "Hugging Face dataset 'fake/missing' not found (or gated/private); check the name on huggingface.co/datasets"


def test_a_hub_chat_dataset_offline_and_not_cached_is_one_line(tmp_path, runs_dir, monkeypatch, capsys):
    import socket

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-datasets"))

    def no_network(sock, address):
        raise AssertionError(f"offline, yet a connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = tree_snapshot(runs_dir)
    rc, err = run_cli(capsys, "train", "--no-ui", "--sft", "--data", "hf:someone/no-such-chats", "--runs-dir", str(runs_dir),
                      "--name", "c", "--max-iters", "1")
    assert rc == 2
    assert_one_line(err, "someone/no-such-chats")
    assert "--data PATH" in err or "huggingface.co/datasets" in err
    assert tree_snapshot(runs_dir) == before
