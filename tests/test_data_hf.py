"""Records through `datasets` (local .jsonl/.json/.parquet/.csv) and `hf:` specs, offline."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest

import gptbench.data.hub as hub_mod
from gptbench.data import prepare_data
from gptbench.data.hub import parse_hf_spec
from gptbench.errors import UserError

RECORDS = [{"text": f"record {i} says hello to the world", "body": f"body number {i}", "n": i} for i in range(60)]
ALL_TEXT = "\n\n".join(r["text"] for r in RECORDS)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def _jsonl(path: Path, records=RECORDS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _decoded(d) -> str:
    return d.tokenizer.decode(np.concatenate([d.train, d.val]))


def _error(spec, cache, **kw) -> str:
    with pytest.raises(UserError) as e:
        prepare_data(spec, kw.pop("tokenizer", "byte"), block_size=8, cache_dir=cache, **kw)
    assert "\n" not in str(e.value)
    assert not cache.exists()
    return str(e.value)


def test_jsonl_default_field_and_named_field(tmp_path, cache):
    p = _jsonl(tmp_path / "r.jsonl")
    d = prepare_data(str(p), "char", block_size=8, cache_dir=cache)
    assert _decoded(d) == ALL_TEXT
    assert d.info["source"] == "records"
    assert d.info["n_docs"] == 60
    assert d.info["field"] == "text"
    body = prepare_data(f"{p}#body", "byte", block_size=8, cache_dir=cache)
    assert _decoded(body) == "\n\n".join(r["body"] for r in RECORDS)
    assert body.info["field"] == "body"


def test_json_array_parquet_and_csv(tmp_path, cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "r.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "r.parquet")
    with open(tmp_path / "r.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "body", "n"])
        w.writeheader()
        w.writerows(RECORDS)
    for name in ("r.json", "r.parquet", "r.csv"):
        d = prepare_data(str(tmp_path / name), "byte", block_size=8, cache_dir=cache)
        assert _decoded(d) == ALL_TEXT, name
        assert d.info["name"] == name


def test_records_are_separated_by_eot_with_gpt2(tmp_path, cache):
    from helpers import GPT2_RANKS

    d = prepare_data(str(_jsonl(tmp_path / "r.jsonl")), f"gpt2:{GPT2_RANKS}", block_size=8, cache_dir=cache)
    ids = np.concatenate([d.train, d.val])
    assert int((ids == 50256).sum()) == 59
    assert d.tokenizer.decode(ids).split("<|endoftext|>") == [r["text"] for r in RECORDS]


def test_glob_of_jsonl_files_and_max_docs(tmp_path, cache):
    _jsonl(tmp_path / "a.jsonl", RECORDS[:30])
    _jsonl(tmp_path / "b.jsonl", RECORDS[30:])
    d = prepare_data(str(tmp_path / "*.jsonl"), "byte", block_size=8, cache_dir=cache)
    assert _decoded(d) == ALL_TEXT
    assert d.info["files"] == 2
    d10 = prepare_data(str(tmp_path / "*.jsonl"), "byte", block_size=8, cache_dir=cache, max_docs=10)
    assert d10.info["n_docs"] == 10
    assert _decoded(d10) == "\n\n".join(r["text"] for r in RECORDS[:10])


def test_records_cache_reuse(tmp_path, cache, monkeypatch):
    p = _jsonl(tmp_path / "r.jsonl")
    prepare_data(str(p), "byte", block_size=8, cache_dir=cache)
    monkeypatch.setattr(hub_mod, "_iter_records", lambda *a, **k: pytest.fail("read the records again"))
    assert prepare_data(str(p), "byte", block_size=8, cache_dir=cache).info["cached"] is True


def test_missing_field_lists_the_fields(tmp_path, cache):
    p = _jsonl(tmp_path / "r.jsonl")
    assert _error(f"{p}#title", cache) == f"{p} has no field 'title' (fields: text, body, n); pick one with #FIELD"
    _jsonl(tmp_path / "q.jsonl", [{"body": "x"}])
    assert _error(str(tmp_path / "q.jsonl"), cache) == f"{tmp_path / 'q.jsonl'} has no field 'text' (fields: body); pick one with #FIELD"
    assert _error(f"{p}#n", cache) == f"{p} field 'n' holds int, not text; pick a text field with #FIELD"


def test_record_file_errors(tmp_path, cache):
    (tmp_path / "e.jsonl").write_text("")
    assert _error(str(tmp_path / "e.jsonl"), cache) == f"{tmp_path / 'e.jsonl'}: file is empty; pass records with a 'text' field"
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    assert _error(str(tmp_path / "bad.jsonl"), cache).startswith(f"cannot read {tmp_path / 'bad.jsonl'}: JSON parse error")
    _jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": None}])
    assert _error(str(tmp_path / "blank.jsonl"), cache) == (
        f"{tmp_path / 'blank.jsonl'}: the corpus is empty after filtering (no text documents); pass a corpus with text"
    )
    (tmp_path / "t.txt").write_text("plain text " * 10)
    assert _error(f"{tmp_path / 't.txt'}#body", cache) == (
        f"{tmp_path / 't.txt'}#body: '#body' picks a field of .jsonl/.json/.parquet/.csv records, not of text files; drop it"
    )
    assert _error(f"{tmp_path / 'missing.jsonl'}#text", cache).startswith(f"{tmp_path / 'missing.jsonl'}: no such file or folder")


# --------------------------------------------------------------------------------- hf:
def test_parse_hf_spec():
    assert parse_hf_spec("hf:roneneldan/TinyStories") == ("roneneldan/TinyStories", None, "train", "text")
    assert parse_hf_spec("hf:roneneldan/TinyStories:validation") == ("roneneldan/TinyStories", None, "validation", "text")
    assert parse_hf_spec("hf:wikitext:wikitext-2-raw-v1") == ("wikitext", "wikitext-2-raw-v1", "train", "text")
    assert parse_hf_spec("hf:wikitext:wikitext-2-raw-v1:test#page") == ("wikitext", "wikitext-2-raw-v1", "test", "page")
    assert parse_hf_spec("hf:a/b:train[:1000]") == ("a/b", None, "train[:1000]", "text")
    for bad in ("hf:", "hf::train", "hf:a:b:c:d", "hf:a::train"):
        with pytest.raises(UserError, match=r"is not hf:NAME\[:CONFIG\]\[:SPLIT\]\[#FIELD\]"):
            parse_hf_spec(bad)


def _connections(monkeypatch, *, allow: bool) -> list:
    """Every address a socket of this process tries to connect to (refused unless `allow`)."""
    import socket

    tried: list = []
    real = socket.socket.connect

    def connect(sock, address):
        tried.append(address[:2] if isinstance(address, tuple) else address)
        if not allow:
            raise ConnectionRefusedError(111, "the test allows no connection")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


def test_hf_offline_mode_is_a_quick_user_error(cache, monkeypatch):
    """Quick because it never touches the network: no connection is even attempted."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tried = _connections(monkeypatch, allow=False)
    msg = _error("hf:someone/some-set:train", cache)
    assert tried == []
    assert msg == (
        "hf:someone/some-set:train#text is not in the Hugging Face cache and the hub is off "
        "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); unset it to download, or pass a local file with --data PATH"
    )


def test_hf_unreachable_hub_is_a_quick_user_error(cache, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    import datasets

    loads: list = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a))
    tried = _connections(monkeypatch, allow=True)
    msg = _error("hf:someone/some-set", cache)
    # quick because one refused connection decides it: `datasets` (and its retries) never start
    assert tried == [("127.0.0.1", 9)]
    assert loads == []
    assert msg.startswith("cannot reach 127.0.0.1 for hf:someone/some-set:train#text (")
    assert msg.endswith("); offline? pass a local file with --data PATH (or set HF_DATASETS_OFFLINE=1 to use a copy in the Hugging Face cache)")


class _FakeHub:
    """Stands in for `datasets.load_dataset` on the hub: a list of records per (name, config, split)."""

    def __init__(self, monkeypatch):
        import datasets

        self.calls = []
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub_mod, "_probe_hub", lambda where, timeout=5.0: None)
        monkeypatch.setattr(datasets, "load_dataset", self)

    def __call__(self, name, config=None, *, split, streaming=False, **_):
        self.calls.append((name, config, split, streaming))
        if name != "fake/stories":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return iter([{"story": f"once upon a time {i}", "id": i} for i in range(40)])


def test_hf_stream_field_caps_and_cache_without_network(cache, monkeypatch):
    hub = _FakeHub(monkeypatch)
    d = prepare_data("hf:fake/stories:train#story", "char", block_size=8, cache_dir=cache, max_docs=25)
    assert hub.calls == [("fake/stories", None, "train", True)]
    assert _decoded(d) == "\n\n".join(f"once upon a time {i}" for i in range(25))
    assert d.info["source"] == "hf"
    assert d.info["spec"] == "hf:fake/stories:train#story"
    assert d.info["n_docs"] == 25
    # Second run: served from the token cache; the hub is not asked again.
    again = prepare_data("hf:fake/stories:train#story", "char", block_size=8, cache_dir=cache, max_docs=25)
    assert again.info["cached"] is True
    assert len(hub.calls) == 1
    assert again.tokenizer == d.tokenizer
    assert _error("hf:fake/stories", cache / "other") == "hf:fake/stories:train#text has no field 'text' (fields: story, id); pick one with #FIELD"
    assert _error("hf:fake/missing", cache / "other") == (
        "Hugging Face dataset 'fake/missing' not found (or gated/private); check the name on huggingface.co/datasets"
    )


def test_hf_hub_that_never_answers_times_out(cache, monkeypatch):
    import datasets

    hub = _FakeHub(monkeypatch)
    monkeypatch.setenv("GPTBENCH_HF_TIMEOUT", "0.5")
    never = threading.Event()  # set only after the test: until then the hub "never answers"
    # the 60 s bound only keeps a broken timeout from hanging the suite: the call then
    # returns None after a minute and the message below is not the timeout's
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: never.wait(60))
    try:
        msg = _error("hf:fake/stories#story", cache)
    finally:
        never.set()  # let the abandoned worker thread finish
    assert not hub.calls
    assert msg == "hf:fake/stories:train#story: no answer from the Hugging Face hub in 0.5 s; retry, or pass a local file with --data PATH"
