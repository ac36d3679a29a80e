"""Tokenizers: char, byte, GPT-2 (tiktoken), trained byte-level BPE, the registry."""

from __future__ import annotations

import base64
import functools
import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import GPT2_RANKS, TINYSHAKESPEARE
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbench.errors import UserError
from gptbench.tokenizers import gpt2 as gpt2_mod
from gptbench.tokenizers.bpe import BPETokenizer, bytes_to_unicode, hf_merges_to_ranks, train_bpe, train_hf_bpe
from gptbench.tokenizers.byte import ByteTokenizer
from gptbench.tokenizers.char import CharTokenizer
from gptbench.tokenizers.gpt2 import GPT2Tokenizer
from gptbench.tokenizers.pieces import split_text
from gptbench.tokenizers.registry import SPEC_FORMS, build_tokenizer, load_tokenizer
from gptbench.tokenizers.tiktoken_bpe import ENDOFTEXT, GPT2_PAT_STR, ranks_to_bytes

SHAKESPEARE = TINYSHAKESPEARE.read_text(encoding="utf-8")
TRICKY = ["\x00", "\r\n", "e\u0301", "😀", "👩\u200d👩\u200d👧", ENDOFTEXT, " ", "\n\n", "\t", "  \n", "ǅ", "\u00a0", "'s", "123"]

# Arbitrary Unicode text (no lone surrogates: they are not text), with tricky pieces mixed in.
unicode_text = st.lists(
    st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30), st.sampled_from(TRICKY)),
    max_size=12,
).map("".join)


@functools.lru_cache(maxsize=None)
def gpt2() -> GPT2Tokenizer:
    return build_tokenizer(f"gpt2:{GPT2_RANKS}")


@functools.lru_cache(maxsize=None)
def shakespeare_bpe() -> BPETokenizer:
    return train_bpe(split_text(SHAKESPEARE, 1 << 16), 1024)


# ---------------------------------------------------------------------------------- char
def test_char_vocab_is_sorted_corpus_characters_and_round_trips():
    tok = CharTokenizer.from_text("hello, world")
    assert tok.chars == " ,dehlorw"
    assert tok.vocab_size == 9
    assert tok.eot_id is None
    assert tok.spec == "char"
    ids = tok.encode("hello")
    assert ids == [4, 3, 5, 5, 6]
    assert tok.decode(ids) == "hello"
    assert tok.decode_bytes(ids) == b"hello"
    assert [a.tolist() for a in tok.encode_arrays(["lol", ""])] == [[5, 6, 5], []]


def test_char_shakespeare_has_65_characters():
    tok = build_tokenizer("char", corpus_text=lambda: SHAKESPEARE)
    assert tok.vocab_size == 65
    assert tok.decode(tok.encode(SHAKESPEARE[:5000])) == SHAKESPEARE[:5000]


def test_char_unknown_characters_are_named():
    tok = build_tokenizer("char", corpus_text=lambda: SHAKESPEARE)
    with pytest.raises(UserError) as e:
        tok.encode("Hello Ω and 😀 and Ω again")
    msg = str(e.value)
    assert msg.startswith("cannot encode 'Ω', '😀': not in this run's character vocabulary (65 characters)")
    assert "\n" not in msg


def test_char_unknown_characters_list_is_capped():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(UserError, match=r"^cannot encode 'c', 'd', 'e', 'f', 'g', \.\.\.: not in"):
        tok.encode("abcdefghij")


def test_char_decode_out_of_range_is_user_error():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(UserError, match="token id 7 is out of range for this char vocabulary"):
        tok.decode([0, 7])


def test_char_from_empty_text_is_user_error():
    with pytest.raises(UserError, match="empty text"):
        CharTokenizer.from_text("")


@settings(max_examples=150, deadline=None)
@given(data=st.data(), vocab=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_char_round_trip_property(data, vocab):
    tok = CharTokenizer.from_text(vocab)
    text = data.draw(st.text(st.sampled_from(tok.chars), max_size=200))
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    reloaded = CharTokenizer.from_json(json.loads(json.dumps(tok.to_json())))
    assert reloaded.encode(text) == ids


# ---------------------------------------------------------------------------------- byte
def test_byte_is_utf8():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.eot_id is None
    assert tok.spec == "byte"
    assert tok.encode("aé😀") == list("aé😀".encode())
    assert tok.decode(tok.encode("aé😀")) == "aé😀"
    assert tok.encode_arrays(["é"])[0].tolist() == [0xC3, 0xA9]
    # A token stream may end mid-character: decode_bytes gives the raw bytes.
    assert tok.decode_bytes([0xF0, 0x9F]) == b"\xf0\x9f"
    with pytest.raises(UserError, match="token id 256 is out of range for the byte tokenizer"):
        tok.decode_bytes([65, 256])


def test_byte_lone_surrogate_becomes_replacement_character():
    assert ByteTokenizer().encode("a\ud800b") == list("a\ufffdb".encode())


@settings(max_examples=200, deadline=None)
@given(unicode_text)
def test_byte_round_trip_property(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert np.concatenate([np.zeros(0, np.uint32), *tok.encode_arrays([text])]).tolist() == tok.encode(text)


# ---------------------------------------------------------------------------------- gpt2
def test_gpt2_known_ids():
    tok = gpt2()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257
    assert tok.eot_id == 50256
    assert tok.spec == "gpt2"
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.decode([50256]) == ENDOFTEXT


def test_gpt2_never_produces_special_tokens_from_text():
    tok = gpt2()
    for ids in (tok.encode(ENDOFTEXT), tok.encode_batch([ENDOFTEXT])[0], tok.encode_arrays([ENDOFTEXT])[0].tolist()):
        assert 50256 not in ids
        assert tok.decode(ids) == ENDOFTEXT


def test_gpt2_decode_bad_id_is_user_error():
    with pytest.raises(UserError, match="token id 50257 is out of range for tokenizer gpt2"):
        gpt2().decode([1, 50257])


@settings(max_examples=150, deadline=None)
@given(unicode_text)
def test_gpt2_round_trip_property(text):
    tok = gpt2()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_arrays([text], num_threads=2)[0].tolist() == ids


def test_gpt2_save_reload_needs_no_original_file(tmp_path):
    ranks_copy = tmp_path / "src" / "ranks.tiktoken"
    ranks_copy.parent.mkdir()
    shutil.copy(GPT2_RANKS, ranks_copy)
    tok = build_tokenizer(f"gpt2:{ranks_copy}")
    run = tmp_path / "run"
    tok.save(run)
    shutil.rmtree(ranks_copy.parent)
    assert sorted(p.name for p in run.iterdir()) == ["tokenizer.json", "tokenizer.tiktoken"]
    assert json.loads((run / "tokenizer.json").read_text())["kind"] == "gpt2"
    again = load_tokenizer(run)
    assert isinstance(again, GPT2Tokenizer)
    assert again == tok
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode("Hello world") == [15496, 995]
    assert (run / "tokenizer.tiktoken").read_bytes() == GPT2_RANKS.read_bytes()


def test_gpt2_ranks_from_env_var(monkeypatch):
    monkeypatch.setenv("GPTBENCH_GPT2_RANKS", str(GPT2_RANKS))
    monkeypatch.setattr(gpt2_mod, "_fetch_with_tiktoken", _no_network)
    assert build_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def _no_network(*_args, **_kw):
    raise OSError("Name or service not known")


def test_gpt2_offline_without_ranks_is_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTBENCH_GPT2_RANKS", raising=False)
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setattr(gpt2_mod, "_fetch_with_tiktoken", _no_network)
    with pytest.raises(UserError) as e:
        build_tokenizer("gpt2")
    assert str(e.value) == (
        "GPT-2 BPE ranks are not available offline (download failed: no network?); pass --tokenizer "
        "gpt2:PATH (a GPT-2 .tiktoken ranks file) or set GPTBENCH_GPT2_RANKS=PATH"
    )
    assert not (tmp_path / "cache").exists()


def test_gpt2_found_in_tiktoken_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTBENCH_GPT2_RANKS", raising=False)
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setattr(gpt2_mod, "_fetch_with_tiktoken", _no_network)
    tk_cache = gpt2_mod._tiktoken_cache_file()
    tk_cache.parent.mkdir(parents=True)
    shutil.copy(GPT2_RANKS, tk_cache)
    assert build_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_gpt2_download_is_kept_in_gptbench_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTBENCH_GPT2_RANKS", raising=False)
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setattr(gpt2_mod, "_fetch_with_tiktoken", lambda: dict(gpt2().mergeable_ranks))
    build_tokenizer("gpt2")
    assert (tmp_path / "cache" / "gpt2.tiktoken").read_bytes() == GPT2_RANKS.read_bytes()
    monkeypatch.setattr(gpt2_mod, "_fetch_with_tiktoken", _no_network)  # now offline: cache serves
    assert build_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_gpt2_path_errors(tmp_path):
    with pytest.raises(UserError, match=r"^gpt2:/nonexistent/r\.tiktoken does not exist; pass the path of a \.tiktoken ranks file$"):
        build_tokenizer("gpt2:/nonexistent/r.tiktoken")
    other = tmp_path / "other.tiktoken"
    other.write_bytes(ranks_to_bytes(shakespeare_bpe().mergeable_ranks))
    with pytest.raises(UserError, match=r"is not GPT-2's ranks file \(1023 tokens, sha256 mismatch\); use bpe:PATH"):
        build_tokenizer(f"gpt2:{other}")
    junk = tmp_path / "junk.tiktoken"
    junk.write_text("hello world this is not ranks\n")
    with pytest.raises(UserError, match=r"line 1 is not `base64 rank`: not a tiktoken ranks file"):
        build_tokenizer(f"gpt2:{junk}")


# ----------------------------------------------------------------------------------- bpe
def test_bpe_ranks_are_bytes_then_merges():
    tok = shakespeare_bpe()
    ranks = tok.mergeable_ranks
    assert tok.vocab_size == 1024
    assert tok.eot_id == 1023
    assert tok.spec == "bpe:1024"
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert sorted(ranks.values()) == list(range(1023))
    # Merge order: every merged token is made of two tokens of lower rank.
    for tok_bytes, rank in ranks.items():
        if rank >= 256:
            assert any(
                tok_bytes[:i] in ranks and tok_bytes[i:] in ranks and max(ranks[tok_bytes[:i]], ranks[tok_bytes[i:]]) < rank
                for i in range(1, len(tok_bytes))
            )


def _hf_ids_as_ranks(hf, ranks: dict[bytes, int], text: str) -> list[int]:
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    return [ranks[bytes(u2b[c] for c in t)] for t in hf.encode(text).tokens]


def test_bpe_tiktoken_encoding_equals_hugging_face_encoding():
    """The converted ranks make tiktoken reproduce the trained HF merges exactly."""
    hf = train_hf_bpe(split_text(SHAKESPEARE, 1 << 16), 4096)
    merges = json.loads(hf.to_str())["model"]["merges"]
    ranks = hf_merges_to_ranks(merges)
    tok = BPETokenizer(ranks, name="t", pat_str=GPT2_PAT_STR)
    assert tok.vocab_size == 4096
    stdlib = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    for text in (SHAKESPEARE, stdlib, "Ünïcödé 😀 text, 12345 and 'quotes' don't\r\n\tend  "):
        assert tok.encode(text) == _hf_ids_as_ranks(hf, ranks, text)
    # GPT-2-like compression on the corpus it was trained on.
    assert 3.1 < len(SHAKESPEARE.encode()) / len(tok.encode(SHAKESPEARE)) < 3.4


def test_bpe_never_produces_eot_from_text():
    tok = shakespeare_bpe()
    assert tok.eot_id not in tok.encode(ENDOFTEXT)
    assert tok.decode(tok.encode(ENDOFTEXT)) == ENDOFTEXT
    assert tok.decode([tok.eot_id]) == ENDOFTEXT


@settings(max_examples=150, deadline=None)
@given(unicode_text)
def test_bpe_round_trip_property(text):
    tok = shakespeare_bpe()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids, default=0) < tok.eot_id


def test_bpe_save_reload_all_forms(tmp_path):
    tok = shakespeare_bpe()
    tok.save(tmp_path / "t")
    sample = SHAKESPEARE[:2000]
    for spec in (f"bpe:{tmp_path / 't'}", f"bpe:{tmp_path / 't' / 'tokenizer.json'}"):
        again = build_tokenizer(spec)
        assert isinstance(again, BPETokenizer)
        assert again == tok
        assert again.spec == "bpe:1024"
        assert again.encode(sample) == tok.encode(sample)
    assert load_tokenizer(tmp_path / "t") == tok
    bare = build_tokenizer(f"bpe:{tmp_path / 't' / 'tokenizer.tiktoken'}")
    assert bare.encode(sample) == tok.encode(sample)
    assert bare.eot_id == 1023


def test_bpe_vocab_too_small():
    msg = r"^BPE vocabulary size 256 is too small: it needs at least 257 \(256 bytes \+ <\|endoftext\|>\); pass e\.g\. bpe:4096$"
    with pytest.raises(UserError, match=msg):
        build_tokenizer("bpe:256", corpus_text=lambda: "abc")
    with pytest.raises(UserError, match=msg):
        train_bpe(["abc"], 256)
    assert train_bpe(["abc abc"], 257).vocab_size == 257  # bytes + eot, no merges


def test_bpe_small_corpus_gives_fewer_ids_than_asked():
    tok = train_bpe(["ab ab ab"], 4096)
    assert 257 < tok.vocab_size < 300
    assert tok.spec == f"bpe:{tok.vocab_size}"


def test_bpe_corrupt_files(tmp_path):
    tok = shakespeare_bpe()
    tok.save(tmp_path)
    ranks_file = tmp_path / "tokenizer.tiktoken"
    lines = ranks_file.read_bytes().splitlines(keepends=True)
    ranks_file.write_bytes(b"".join(lines[:-1]))  # drop the last merge
    with pytest.raises(UserError, match=r"tokenizer\.tiktoken does not match .*tokenizer\.json \(sha256 differs\)"):
        load_tokenizer(tmp_path)
    ranks_file.write_bytes(b"".join(lines[1:]))  # drop byte 0
    with pytest.raises(UserError, match=r"lacks 1 of the 256 single bytes \(e\.g\. byte 0\)"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(UserError, match=r"tokenizer\.json is not valid JSON"):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match=r"has no saved tokenizer"):
        load_tokenizer(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ registry
def test_unknown_spec_lists_valid_forms():
    for spec in ("wordpiece", "char:3", "bpe", "bpe:", ""):
        with pytest.raises(UserError) as e:
            build_tokenizer(spec, corpus_text=lambda: "x")
        assert str(e.value) == f"unknown tokenizer {spec!r}; valid forms: {SPEC_FORMS}"


def test_specs_needing_a_corpus():
    with pytest.raises(UserError, match="char tokenizer builds its vocabulary from the corpus"):
        build_tokenizer("char")
    with pytest.raises(UserError, match=r"bpe:512 trains on the corpus, but none was given"):
        build_tokenizer("bpe:512")
    with pytest.raises(UserError, match=r"bpe:/no/such/tok: /no/such/tok does not exist"):
        build_tokenizer("bpe:/no/such/tok")


@pytest.mark.parametrize("kind", ["char", "byte", "gpt2", "bpe"])
def test_save_reload_identity_every_kind(tmp_path, kind):
    tok = {
        "char": lambda: CharTokenizer.from_text(SHAKESPEARE),
        "byte": ByteTokenizer,
        "gpt2": gpt2,
        "bpe": shakespeare_bpe,
    }[kind]()
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok)
    assert again.to_json() == tok.to_json()
    assert again.fingerprint() == tok.fingerprint()
    assert (again.vocab_size, again.eot_id, again.spec) == (tok.vocab_size, tok.eot_id, tok.spec)
    sample = SHAKESPEARE[-3000:]
    assert again.encode(sample) == tok.encode(sample)


def test_tokenizer_json_of_unknown_kind(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(UserError, match=r"unknown kind 'sentencepiece' \(known: char, byte, gpt2, bpe\)"):
        load_tokenizer(tmp_path)


# -------------------------------------------------------------------------------- pieces
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TRICKY + ["word", "Word", "  ", "\n", "!!", "x"]), unicode_text), max_size=40).map("".join),
       st.integers(2, 40))
def test_split_text_pieces_tokenize_like_the_whole(text, max_chars):
    pieces = list(split_text(text, max_chars))
    assert "".join(pieces) == text
    for tok in (gpt2(), shakespeare_bpe()):
        joined = [i for p in pieces for i in tok.encode(p)]
        assert joined == tok.encode(text)


def test_split_text_cuts_long_text_into_bounded_pieces():
    pieces = list(split_text(SHAKESPEARE, 10_000))
    assert "".join(pieces) == SHAKESPEARE
    assert len(pieces) > 100
    assert max(map(len, pieces)) <= 10_000
    assert list(split_text("x" * 50, 10)) == ["x" * 50]  # no safe cut: one piece
    assert list(split_text("")) == [""]


def test_bpe_tiktoken_file_is_base64_rank_lines(tmp_path):
    tok = shakespeare_bpe()
    tok.save(tmp_path)
    lines = (tmp_path / "tokenizer.tiktoken").read_text().splitlines()
    assert len(lines) == 1023
    first_tok, first_rank = lines[0].split()
    assert base64.b64decode(first_tok) == b"\x00"
    assert first_rank == "0"
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta["special_tokens"] == {ENDOFTEXT: 1023}
    assert meta["pat_str"] == GPT2_PAT_STR
