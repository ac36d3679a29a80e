"""Corpora -> cached token ids (`prepare_data`) and batch sampling (`get_batch`)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import GPT2_RANKS, TINYSHAKESPEARE, TINYSHAKESPEARE_SHA256

import gptbench.data.cache as cache_mod
import gptbench.data.sources as sources_mod
from gptbench.data import PreparedData, get_batch, load_corpus, prepare_data
from gptbench.paths import default_cache_dir
from gptbench.errors import UserError
from gptbench.tokenizers.byte import ByteTokenizer
from gptbench.tokenizers.char import CharTokenizer
from gptbench.tokenizers.registry import build_tokenizer

GPT2 = f"gpt2:{GPT2_RANKS}"
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def nothing_in(cache: Path) -> bool:
    return not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


# ------------------------------------------------------------------------------ get_batch
def test_get_batch_shapes_dtypes_and_shift():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == np.int64
    assert (y[:, :-1] == x[:, 1:]).all()
    assert (y[:, -1] == x[:, -1] + 1).all()
    assert ((x[:, 1:] - x[:, :-1]) == 1).all()  # contiguous windows of the data
    assert x.min() >= 0
    assert y.max() <= 999


def test_get_batch_is_deterministic_for_a_seed_and_covers_the_ends():
    data = np.arange(20, dtype=np.uint32)
    a = get_batch(data, 64, 4, np.random.default_rng(123))
    b = get_batch(data, 64, 4, np.random.default_rng(123))
    c = get_batch(data, 64, 4, np.random.default_rng(124))
    assert (a[0] == b[0]).all()
    assert (a[1] == b[1]).all()
    assert not (a[0] == c[0]).all()
    starts = {int(s) for _ in range(20) for s in get_batch(data, 64, 4, np.random.default_rng(_))[0][:, 0]}
    assert starts == set(range(16))  # every window start 0..len-T-1, and no other


def test_get_batch_from_memmap(tmp_path):
    from gptbench.data.batches import open_tokens

    path = tmp_path / "t.bin"
    np.arange(300, dtype=np.uint16).tofile(path)
    mm = open_tokens(path, np.dtype(np.uint16), 300)  # as the cache opens it (advised for random reads)
    assert mm.tolist() == list(range(300))
    x, y = get_batch(mm[100:], 4, 10, np.random.default_rng(1))
    assert type(x) is np.ndarray
    assert x.min() >= 100
    assert (y - x == 1).all()


def test_get_batch_too_short():
    with pytest.raises(UserError, match=r"^10 tokens cannot fill one block of 10 \(\+1 target\)"):
        get_batch(np.arange(10), 2, 10, np.random.default_rng(0))


# --------------------------------------------------------------------------- text files
def test_text_file_char_split_and_info(text_file, cache):
    d = prepare_data(str(text_file), "char", block_size=32, cache_dir=cache)
    assert isinstance(d, PreparedData)
    n = len(TEXT)
    assert (len(d.train), len(d.val)) == (int(n * 0.9), n - int(n * 0.9))
    assert isinstance(d.train, np.memmap)
    assert d.train.dtype == np.uint16
    assert d.val.dtype == np.uint16
    assert d.tokenizer.decode(d.train) + d.tokenizer.decode(d.val) == TEXT  # val is the tail
    info = d.info
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == "corpus.txt"
    assert info["source"] == "file"
    assert info["n_docs"] == 1
    assert info["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert info["bytes"] == len(TEXT.encode())
    assert info["tokenizer"] == "char"
    assert info["cached"] is False
    assert (info["train_tokens"], info["val_tokens"]) == (len(d.train), len(d.val))
    assert Path(info["cache"]).is_relative_to(cache)


def test_val_fraction(text_file, cache):
    d = prepare_data(str(text_file), "byte", block_size=8, val_fraction=0.25, cache_dir=cache)
    assert len(d.val) == len(TEXT) - int(len(TEXT) * 0.75)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match=r"--val-fraction must be between 0 and 1"):
            prepare_data(str(text_file), "byte", block_size=8, val_fraction=bad, cache_dir=cache)


def test_crlf_nul_free_unicode_survive_exactly(tmp_path, cache):
    text = "Ünïcödé 😀 e\u0301\r\nsecond line\r\n" * 40
    p = tmp_path / "u.txt"
    p.write_bytes(text.encode())
    for spec in ("char", "byte", GPT2):
        d = prepare_data(str(p), spec, block_size=8, cache_dir=cache)
        assert d.tokenizer.decode_bytes(np.concatenate([d.train, d.val])) == text.encode()


def test_gpt2_corpus_ids_and_uint16(text_file, cache):
    d = prepare_data(str(text_file), GPT2, block_size=16, cache_dir=cache)
    tok = d.tokenizer
    assert d.train.dtype == np.uint16
    assert tok.spec == "gpt2"
    assert np.concatenate([d.train, d.val]).tolist() == tok.encode(TEXT)


def test_vocab_over_65536_is_stored_as_uint32(tmp_path, cache):
    chars = [chr(c) for c in range(0x100, 0x100 + 70000) if not 0xD800 <= c < 0xE000]
    p = tmp_path / "wide.txt"
    p.write_text("".join(chars), encoding="utf-8")
    d = prepare_data(str(p), "char", block_size=8, cache_dir=cache)
    assert d.tokenizer.vocab_size > 65536
    assert d.train.dtype == np.uint32
    assert d.tokenizer.decode(np.concatenate([d.train, d.val])) == "".join(chars)


# ------------------------------------------------------------------------ folders, globs
def _tree(root: Path) -> None:
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "b" / "two.txt").write_text("second document " * 20)
    (root / "a.txt").write_text("first document " * 20)
    (root / "c.md").write_text("third document " * 20)
    (root / ".secret.txt").write_text("hidden " * 20)
    (root / ".hidden" / "x.txt").write_text("hidden " * 20)
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 50)
    (root / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 20)
    (root / "empty.txt").write_text("")


def test_folder_recursive_sorted_skipping_hidden_binary_and_empty(tmp_path, cache):
    _tree(tmp_path / "corpus")
    d = prepare_data(str(tmp_path / "corpus"), "char", block_size=8, cache_dir=cache)
    text = d.tokenizer.decode(np.concatenate([d.train, d.val]))
    assert text == "\n\n".join(["first document " * 20, "second document " * 20, "third document " * 20])
    assert d.info["n_docs"] == 3
    assert d.info["source"] == "folder"
    assert d.info["name"] == "corpus"
    assert d.info["skipped_files"] == 3
    assert "hidden" not in text


def test_documents_are_separated_by_eot(tmp_path, cache):
    _tree(tmp_path / "corpus")
    d = prepare_data(str(tmp_path / "corpus"), GPT2, block_size=8, cache_dir=cache)
    ids = np.concatenate([d.train, d.val])
    assert int((ids == 50256).sum()) == 2
    parts = d.tokenizer.decode(ids).split("<|endoftext|>")
    assert parts == ["first document " * 20, "second document " * 20, "third document " * 20]


def test_glob_and_max_docs(tmp_path, cache):
    _tree(tmp_path / "corpus")
    d = prepare_data(str(tmp_path / "corpus" / "**" / "*.txt"), "byte", block_size=8, cache_dir=cache)
    assert d.info["source"] == "glob"
    assert d.info["n_docs"] == 2  # a.txt, b/two.txt (latin1 and empty skipped)
    d1 = prepare_data(str(tmp_path / "corpus"), "byte", block_size=8, cache_dir=cache, max_docs=1)
    assert d1.info["n_docs"] == 1
    assert np.concatenate([d1.train, d1.val]).astype(np.uint8).tobytes() == ("first document " * 20).encode()


def test_max_tokens_truncates(text_file, cache):
    d = prepare_data(str(text_file), GPT2, block_size=8, cache_dir=cache, max_tokens=500)
    assert len(d.train) + len(d.val) == 500
    assert d.info["truncated"] is True
    full = prepare_data(str(text_file), GPT2, block_size=8, cache_dir=cache)
    assert np.concatenate([d.train, d.val]).tolist() == np.concatenate([full.train, full.val])[:500].tolist()


def test_many_pieces_and_threads_give_the_same_ids(text_file, cache, monkeypatch):
    one = prepare_data(str(text_file), GPT2, block_size=8, cache_dir=cache / "1")
    monkeypatch.setattr(cache_mod, "PIECE_CHARS", 97)
    monkeypatch.setattr(cache_mod, "BATCH_CHARS", 500)
    many = prepare_data(str(text_file), GPT2, block_size=8, cache_dir=cache / "2", num_proc=2)
    assert np.concatenate([one.train, one.val]).tolist() == np.concatenate([many.train, many.val]).tolist()



def test_an_interrupted_cache_build_resumes_where_it_stopped(tmp_path, cache, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):  # documents of several pieces each: a batch ends inside a document
        (corpus / f"{i}.txt").write_text(f"Document {i}. " + " ".join(f"word{j}x{i}" for j in range(300)) + "\n", encoding="utf-8")
    whole = prepare_data(str(corpus), GPT2, block_size=8, cache_dir=cache / "whole")
    monkeypatch.setattr(cache_mod, "PIECE_CHARS", 700)
    monkeypatch.setattr(cache_mod, "BATCH_CHARS", 2000)
    encoded: list[int] = []
    stop = [True]
    real_flush = cache_mod._TokenFileWriter.flush

    def flush(self, n_docs):
        if len(encoded) == 3 and stop[0]:
            stop[0] = False
            raise KeyboardInterrupt  # Ctrl-C after three batches were written
        encoded.append(sum(map(len, self._batch)))
        return real_flush(self, n_docs)

    monkeypatch.setattr(cache_mod._TokenFileWriter, "flush", flush)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(str(corpus), GPT2, block_size=8, cache_dir=cache / "r")
    entry = next((cache / "r" / "tokens").iterdir())
    assert (entry / "tokens.bin.partial").exists() and not (entry / "index.json").exists()
    done_chars = sum(encoded)
    resumed = prepare_data(str(corpus), GPT2, block_size=8, cache_dir=cache / "r")
    assert np.concatenate([resumed.train, resumed.val]).tolist() == np.concatenate([whole.train, whole.val]).tolist()
    total_chars = sum(len(p.read_text(encoding="utf-8")) for p in corpus.iterdir())
    assert sum(encoded[3:]) == total_chars - done_chars  # only what was not written before
    assert sorted(p.name for p in entry.iterdir()) == ["index.json", "tokenizer.json", "tokenizer.tiktoken", "tokens.bin"]

# ------------------------------------------------------------------------------- default
def test_default_corpus_is_python_stdlib_and_deterministic(tmp_path):
    a = prepare_data(None, "byte", block_size=64, cache_dir=tmp_path / "a")
    b = prepare_data("default", "byte", block_size=64, cache_dir=tmp_path / "b")
    assert a.info["name"] == "pystdlib"
    assert a.info["spec"] == "default"
    assert a.info["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (a.info["sha256"], a.info["n_docs"], a.info["tokens"]) == (b.info["sha256"], b.info["n_docs"], b.info["tokens"])
    assert 3_000_000 < a.info["bytes"] < 5_000_000
    assert a.info["n_docs"] > 50
    assert b"import " in a.train[:200_000].astype(np.uint8).tobytes()


def test_default_corpus_file_selection(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    files = {
        "abc.py": "A" * 10, "zz.py": "Z" * 10, "json/__init__.py": "J" * 10, "json/decoder.py": "D" * 10,
        "test/test_x.py": "T", "site-packages/pkg.py": "S", "encodings/cp1.py": "E", "__pycache__/x.py": "C",
        ".hidden/h.py": "H", "notes.txt": "N", "_bin.py": "\x00", "empty.py": "",
    }
    for rel, text in files.items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text(text)
    monkeypatch.setattr(sources_mod.sysconfig, "get_paths", lambda: {"stdlib": str(lib)})
    monkeypatch.setattr(sources_mod, "PYSTDLIB_CAP_BYTES", 25)
    corpus = load_corpus(None)
    assert corpus.name == "pystdlib"
    assert corpus.docs_list == ["A" * 10, "J" * 10, "D" * 10]  # sorted, capped
    monkeypatch.setattr(sources_mod, "PYSTDLIB_CAP_BYTES", 1000)
    assert load_corpus("default").docs_list == ["A" * 10, "J" * 10, "D" * 10, "Z" * 10]


# ------------------------------------------------------------------------ tinyshakespeare
def test_tinyshakespeare_downloaded_once_and_checked(cache, monkeypatch):
    monkeypatch.setenv("GPTBENCH_TINYSHAKESPEARE_URL", TINYSHAKESPEARE.resolve().as_uri())
    d = prepare_data("tinyshakespeare", "char", block_size=256, cache_dir=cache)
    assert d.info["sha256"] == TINYSHAKESPEARE_SHA256
    assert d.info["bytes"] == 1_115_394
    assert d.tokenizer.vocab_size == 65
    assert len(d.train) == 1_003_854
    assert len(d.val) == 111_540
    assert (cache / "downloads" / "tinyshakespeare.txt").read_bytes() == TINYSHAKESPEARE.read_bytes()
    monkeypatch.setenv("GPTBENCH_TINYSHAKESPEARE_URL", "http://127.0.0.1:9/offline")  # the cache serves
    again = prepare_data("tinyshakespeare", "char", block_size=256, cache_dir=cache)
    assert again.info["cached"] is True


def test_tinyshakespeare_offline(cache, monkeypatch):
    monkeypatch.setenv("GPTBENCH_TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    with pytest.raises(UserError) as e:
        prepare_data("tinyshakespeare", "char", block_size=8, cache_dir=cache)
    assert str(e.value).startswith("cannot download tinyshakespeare from http://127.0.0.1:9/input.txt (")
    assert str(e.value).endswith("); offline? pass a local copy with --data PATH")
    assert not cache.exists()


def test_tinyshakespeare_wrong_content(text_file, cache, monkeypatch):
    monkeypatch.setenv("GPTBENCH_TINYSHAKESPEARE_URL", text_file.as_uri())
    got = hashlib.sha256(text_file.read_bytes()).hexdigest()
    with pytest.raises(UserError) as e:
        prepare_data("tinyshakespeare", "char", block_size=8, cache_dir=cache)
    assert str(e.value) == (
        f"tinyshakespeare from {text_file.as_uri()} has sha256 {got[:16]}..., expected "
        f"{TINYSHAKESPEARE_SHA256[:16]}... (corrupted or a different file); pass a local copy with --data PATH"
    )
    assert not cache.exists()


# -------------------------------------------------------------------------------- errors
def _error(spec, cache, tokenizer="char", **kw) -> str:
    with pytest.raises(UserError) as e:
        prepare_data(spec, tokenizer, block_size=kw.pop("block_size", 8), cache_dir=cache, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert nothing_in(cache)
    assert not cache.exists()
    return msg


def test_missing_path(tmp_path, cache):
    msg = _error(str(tmp_path / "nope.txt"), cache)
    assert msg.startswith(f"{tmp_path / 'nope.txt'}: no such file or folder; pass default, tinyshakespeare, a text file")


def test_glob_without_matches(tmp_path, cache):
    assert _error(str(tmp_path / "*.txt"), cache) == (
        f"{tmp_path / '*.txt'}: no files match this pattern; check the glob (quote it so the shell leaves it alone)"
    )


def test_empty_file_and_folder(tmp_path, cache):
    (tmp_path / "empty.txt").write_text("  \n")
    assert _error(str(tmp_path / "empty.txt"), cache) == f"{tmp_path / 'empty.txt'} is empty; pass a file with some text in it"
    (tmp_path / "d").mkdir()
    assert _error(str(tmp_path / "d"), cache) == f"{tmp_path / 'd'} is an empty folder; pass a folder holding text files"


def test_binary_and_non_utf8_files(tmp_path, cache):
    (tmp_path / "x.bin").write_bytes(b"PK\x03\x04\x00\x00" * 100)
    assert _error(str(tmp_path / "x.bin"), cache) == (
        f"{tmp_path / 'x.bin'} looks binary (it contains NUL bytes), not text; pass a UTF-8 text file"
    )
    (tmp_path / "l.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    assert _error(str(tmp_path / "l.txt"), cache) == (
        f"{tmp_path / 'l.txt'} is not UTF-8 text (invalid byte at offset 2; binary?); "
        f"pass a UTF-8 text file or convert it (e.g. iconv -t UTF-8)"
    )


def test_folder_with_nothing_usable(tmp_path, cache):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "d" / "b.txt").write_text("")
    assert _error(str(tmp_path / "d"), cache) == (
        f"{tmp_path / 'd'}: no text to train on (2 files, all empty, binary or not UTF-8); pass UTF-8 text files"
    )


def test_corpus_too_short_for_block_size(text_file, cache):
    n = len(TEXT)
    msg = _error(str(text_file), cache, block_size=2000)
    assert msg == (
        f"corpus too short: corpus.txt has {n:,} tokens, so the val split gets {n - int(n * 0.9):,} but "
        f"--block-size 2000 needs at least 2001; use a bigger corpus or a smaller --block-size/--val-fraction"
    )
    msg = _error(str(text_file), cache, block_size=2000, val_fraction=0.99)
    assert "so the train split gets" in msg


def test_too_short_after_a_cached_build(text_file, cache):
    prepare_data(str(text_file), "char", block_size=8, cache_dir=cache)
    before = sorted(p for p in cache.rglob("*"))
    with pytest.raises(UserError, match="corpus too short"):
        prepare_data(str(text_file), "char", block_size=5000, cache_dir=cache)
    assert sorted(p for p in cache.rglob("*")) == before


def test_resumed_char_tokenizer_missing_characters(text_file, cache):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match=r"^cannot encode 'l', 'i', 'n', 'e', ' ', \.\.\.: not in this run's character vocabulary \(3 characters\)"):
        prepare_data(str(text_file), "char", block_size=8, cache_dir=cache, tokenizer=tok)
    assert not cache.exists()


def test_bad_tokenizer_spec_fails_before_reading(cache, monkeypatch):
    monkeypatch.setenv("GPTBENCH_TINYSHAKESPEARE_URL", "http://127.0.0.1:9/never-fetched")
    msg = _error("tinyshakespeare", cache, tokenizer="sentencepiece")
    assert msg.startswith("unknown tokenizer 'sentencepiece'; valid forms: char, byte, gpt2")


def test_bad_caps(text_file, cache):
    assert _error(str(text_file), cache, max_tokens=0) == "--max-tokens must be a positive integer, got 0"
    assert _error(str(text_file), cache, max_docs=-1) == "--max-docs must be a positive integer, got -1"
    assert _error(str(text_file), cache, block_size=0) == "--block-size must be a positive integer, got 0"


# --------------------------------------------------------------------------------- cache
def test_second_call_reuses_the_cache_without_tokenizing(text_file, cache, monkeypatch):
    first = prepare_data(str(text_file), "char", block_size=8, cache_dir=cache)
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert {p.name for p in files} == {"index.json", "tokens.bin", "tokenizer.json"}

    def boom(*_a, **_k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(CharTokenizer, "encode_arrays", boom)
    second = prepare_data(str(text_file), "char", block_size=8, cache_dir=cache)
    assert second.info["cached"] is True
    assert first.info["cached"] is False
    assert second.tokenizer == first.tokenizer
    assert np.array_equal(second.train, first.train)
    assert np.array_equal(second.val, first.val)
    # A resumed run passing its own (identical) tokenizer reuses the same entry too.
    third = prepare_data(str(text_file), "char", block_size=8, cache_dir=cache, tokenizer=first.tokenizer)
    assert third.info["cached"] is True
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files


def test_changed_content_is_a_new_entry(text_file, cache):
    a = prepare_data(str(text_file), "byte", block_size=8, cache_dir=cache)
    text_file.write_text(TEXT.replace("fox", "cat"))
    b = prepare_data(str(text_file), "byte", block_size=8, cache_dir=cache)
    assert b.info["cached"] is False
    assert b.info["cache"] != a.info["cache"]
    assert np.concatenate([b.train, b.val]).astype(np.uint8).tobytes().decode() == TEXT.replace("fox", "cat")


def test_cache_written_by_another_tokenizer_is_rebuilt(tmp_path, text_file, cache):
    """bpe:PATH: the tokenizer at PATH was retrained; the index's fingerprint catches it."""
    from gptbench.tokenizers.bpe import train_bpe

    train_bpe([TEXT], 300).save(tmp_path / "tok")
    a = prepare_data(str(text_file), f"bpe:{tmp_path / 'tok'}", block_size=8, cache_dir=cache)
    train_bpe([TEXT], 320).save(tmp_path / "tok")
    b = prepare_data(str(text_file), f"bpe:{tmp_path / 'tok'}", block_size=8, cache_dir=cache)
    assert b.info["cache"] == a.info["cache"]  # same entry...
    assert b.info["cached"] is False
    assert b.tokenizer.vocab_size == 320  # ...rebuilt
    assert np.concatenate([b.train, b.val]).tolist() == b.tokenizer.encode(TEXT)
    index = json.loads((Path(b.info["cache"]) / "index.json").read_text())
    assert index["tokenizer_fingerprint"] == b.tokenizer.fingerprint()
    c = prepare_data(str(text_file), f"bpe:{tmp_path / 'tok'}", block_size=8, cache_dir=cache)
    assert c.info["cached"] is True


def test_damaged_entry_is_rebuilt(text_file, cache):
    a = prepare_data(str(text_file), "byte", block_size=8, cache_dir=cache)
    tokens = Path(a.info["cache"]) / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    b = prepare_data(str(text_file), "byte", block_size=8, cache_dir=cache)
    assert b.info["cached"] is False
    assert len(b.train) + len(b.val) == len(TEXT)
    (Path(a.info["cache"]) / "index.json").write_text("{not json")
    assert prepare_data(str(text_file), "byte", block_size=8, cache_dir=cache).info["cached"] is False


def test_given_tokenizer_with_other_vocab_gets_its_own_ids(text_file, cache):
    derived = prepare_data(str(text_file), "char", block_size=8, cache_dir=cache)
    wider = CharTokenizer(derived.tokenizer.chars + "XYZ")
    d = prepare_data(str(text_file), "char", block_size=8, cache_dir=cache, tokenizer=wider)
    assert d.info["cached"] is False
    assert d.tokenizer is wider
    assert d.tokenizer.vocab_size == derived.tokenizer.vocab_size + 3
    assert wider.decode(np.concatenate([d.train, d.val])) == TEXT
    again = prepare_data(str(text_file), "char", block_size=8, cache_dir=cache)  # derived entry untouched
    assert again.info["cached"] is True
    assert again.tokenizer == derived.tokenizer


def test_bpe_trained_on_the_corpus_is_cached_with_its_tokens(text_file, cache, monkeypatch):
    a = prepare_data(str(text_file), "bpe:300", block_size=8, cache_dir=cache)
    assert a.tokenizer.spec == "bpe:300"
    assert (Path(a.info["cache"]) / "tokenizer.tiktoken").is_file()
    import gptbench.tokenizers.bpe as bpe_mod

    monkeypatch.setattr(bpe_mod, "train_hf_bpe", lambda *a, **k: pytest.fail("retrained"))
    b = prepare_data(str(text_file), "bpe:300", block_size=8, cache_dir=cache)
    assert b.info["cached"] is True
    assert b.tokenizer == a.tokenizer


def test_byte_tokenizer_entry_via_tokenizer_object(text_file, cache):
    d = prepare_data(str(text_file), "ignored", block_size=8, cache_dir=cache, tokenizer=ByteTokenizer())
    assert d.tokenizer.spec == "byte"
    assert len(d.train) + len(d.val) == len(TEXT)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("GPTBENCH_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "x" / "gptbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "gptbench"


def test_default_cache_dir_is_used(text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTBENCH_CACHE_DIR", str(tmp_path / "envcache"))
    d = prepare_data(str(text_file), "byte", block_size=8)
    assert Path(d.info["cache"]).is_relative_to(tmp_path / "envcache")
    assert build_tokenizer("byte") == d.tokenizer
