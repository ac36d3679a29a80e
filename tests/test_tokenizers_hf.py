"""Hugging Face tokenizer files (`tokenizers/hf_files.py`) against the real thing: files
built offline from gptbench tokenizers must encode and decode exactly as gptbench does
when read by Hugging Face `tokenizers`, and read back into the same tokenizer; files
gptbench cannot reproduce are refused with one line."""

from __future__ import annotations

import json

import pytest

from helpers import GPT2_RANKS, TINYSHAKESPEARE
from gptbench.tokenizers.hf_files import (
    HFTokenizerError,
    load_hf_tokenizer,
    merges_from_ranks,
    tokenizer_config,
    tokenizer_json,
    write_hf_tokenizer,
)

SHAKESPEARE = TINYSHAKESPEARE.read_text(encoding="utf-8")[:200_000]
HOSTILE = ("héllo wörld 東京 🤖👨‍👩‍👧 \x00\x01 \t\r\n  x   DON'T it's 'S 'll \u00a0nbsp \u3000 \u2028 \ufeffbom "
           "trailing   \n\n\n  12345 3.14 <|endoftext|> ")
CL100K_STYLE = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


def _tokenizers():
    from gptbench.tokenizers.bpe import BPETokenizer, train_bpe
    from gptbench.tokenizers.byte import ByteTokenizer
    from gptbench.tokenizers.char import CharTokenizer
    from gptbench.tokenizers.gpt2 import load_gpt2

    bpe = train_bpe([SHAKESPEARE], 600)
    custom = BPETokenizer(bpe.mergeable_ranks, name="custom", pat_str=CL100K_STYLE)
    return {"gpt2": load_gpt2(GPT2_RANKS), "bpe": bpe, "bpe-custom-pattern": custom, "byte": ByteTokenizer(),
            "char": CharTokenizer.from_text(SHAKESPEARE)}


TOKENIZERS = _tokenizers()


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_hugging_face_reads_the_files_exactly_as_gptbench_tokenizes(kind, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    tok = TOKENIZERS[kind]
    write_hf_tokenizer(tok, tmp_path, 1024)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf.encode_special_tokens = True  # gptbench encodes special-token text as plain text
    texts = [SHAKESPEARE] if kind == "char" else [SHAKESPEARE, HOSTILE, HOSTILE * 3]
    for text in texts:
        want = tok.encode(text)
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == want
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(want)
    assert hf.get_vocab_size() == tok.vocab_size
    back = load_hf_tokenizer(tmp_path)  # and gptbench reads its own export back
    assert back is not None
    assert back.kind == tok.kind
    assert back.encode(texts[-1]) == tok.encode(texts[-1])
    assert back.vocab_size == tok.vocab_size
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # loaded verbatim, never rebuilt as GPT2Tokenizer
    assert cfg.get("eos_token") == ("<|endoftext|>" if tok.eot_id is not None else None)


def test_autotokenizer_in_a_model_folder_gives_gptbench_ids(tmp_path):
    """transformers' own loader (what pipeline and mlx-lm use), inside a GPT-2 model folder
    where, without tokenizer_config.json, it would rebuild a GPT2Tokenizer."""
    from transformers import AutoTokenizer

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 65}))
    for kind in ("char", "byte", "bpe-custom-pattern"):
        tok = TOKENIZERS[kind]
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "config.json").write_text((tmp_path / "config.json").read_text())
        write_hf_tokenizer(tok, folder, 64)
        auto = AutoTokenizer.from_pretrained(folder)
        text = SHAKESPEARE[:3000] if kind == "char" else HOSTILE.replace("<|endoftext|>", "")
        assert auto.encode(text, add_special_tokens=False) == tok.encode(text), kind


def test_gpt2_merges_are_the_familiar_ones():
    merges = merges_from_ranks(TOKENIZERS["gpt2"].mergeable_ranks)
    assert len(merges) == 50000
    spelled = tokenizer_json(TOKENIZERS["gpt2"])["model"]["merges"][:5]
    assert spelled == ["Ġ t", "Ġ a", "h e", "i n", "r e"]  # the start of GPT-2's merges.txt


def test_vocab_and_merges_files_are_read_too(tmp_path):
    doc = tokenizer_json(TOKENIZERS["gpt2"])
    (tmp_path / "vocab.json").write_text(json.dumps(doc["model"]["vocab"]), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(doc["model"]["merges"]) + "\n", encoding="utf-8")
    tok = load_hf_tokenizer(tmp_path)
    assert tok is not None
    assert tok.kind == "gpt2"
    assert tok == TOKENIZERS["gpt2"]


def test_no_files_is_none(tmp_path):
    assert load_hf_tokenizer(tmp_path) is None


def _doc(tmp_path, doc):
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc), encoding="utf-8")
    return tmp_path


def _wordpiece(doc):
    doc["model"] = {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}


def _swapped_merges(doc):
    doc["model"]["merges"][0], doc["model"]["merges"][1] = doc["model"]["merges"][1], doc["model"]["merges"][0]


def _special_first(doc):
    doc["added_tokens"][0]["id"] = 0


def _normalizer(doc):
    doc["normalizer"] = {"type": "Lowercase"}


def _unsorted_chars(doc):
    vocab = doc["model"]["vocab"]
    a, b = list(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]


@pytest.mark.parametrize("damage,kind,fragment", [
    (_wordpiece, "bpe", "this one is 'WordPiece'"),
    (_swapped_merges, "bpe", "its merges are not in id order"),
    (_special_first, "bpe", "special tokens must come after the ordinary ones"),
    (_normalizer, "bpe", "this one has a normalizer"),
    (_unsorted_chars, "char", "ids in sorted order"),
])
def test_tokenizers_gptbench_cannot_reproduce_are_refused(damage, kind, fragment, tmp_path):
    doc = tokenizer_json(TOKENIZERS[kind])
    damage(doc)
    with pytest.raises(HFTokenizerError) as info:
        load_hf_tokenizer(_doc(tmp_path, doc))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_config_has_no_eos_without_end_of_text():
    assert "eos_token" not in tokenizer_config(TOKENIZERS["byte"], 64)
    assert tokenizer_config(TOKENIZERS["gpt2"], 1024)["eos_token"] == "<|endoftext|>"
