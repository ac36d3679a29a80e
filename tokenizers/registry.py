"""Tokenizer specs (`char`, `byte`, `gpt2`, `gpt2:PATH`, `bpe:N`, `bpe:PATH`) and run reloads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer

SPEC_FORMS = (
    "char, byte, gpt2, gpt2:PATH (GPT-2 .tiktoken ranks file), "
    "bpe:N (train an N-token BPE on the corpus), "
    "bpe:PATH (a saved tokenizer.json, its folder, or a .tiktoken file)"
)
KINDS = ("char", "byte", "gpt2", "bpe")


def _unknown(spec: str) -> UserError:
    return UserError(f"unknown tokenizer {spec!r}; valid forms: {SPEC_FORMS}")


def parse_bpe_size(arg: str) -> int | None:
    """`4096` -> 4096 (also `4k`), anything else (a path) -> None."""
    a = arg.strip().lower()
    if a.endswith("k") and a[:-1].isdigit():
        return int(a[:-1]) * 1024
    return int(a) if a.isdigit() else None


@dataclass(frozen=True)
class TokenizerSpec:
    """A parsed `--tokenizer` value: the one place the spec grammar is read.

    `kind` is char | byte | gpt2 | bpe; `path` is set for gpt2:PATH and bpe:PATH, `size`
    for bpe:N. `trains_on_corpus` says whether building it needs the corpus (char, bpe:N).
    """

    text: str
    kind: str
    path: Path | None = None
    size: int | None = None

    @classmethod
    def parse(cls, spec: str | None) -> "TokenizerSpec":
        text = (spec or "").strip()
        kind, sep, arg = text.partition(":")
        kind = kind.lower()
        if kind in ("char", "byte") and not sep:
            return cls(text, kind)
        if kind == "gpt2":
            if sep and not arg:
                raise UserError("gpt2: needs a path after the colon (gpt2:PATH), or use plain gpt2")
            return cls(text, kind, path=Path(arg).expanduser() if arg else None)
        if kind == "bpe" and sep and arg:
            size = parse_bpe_size(arg)
            if size is not None:
                from gptbench.tokenizers.bpe import check_vocab_size

                check_vocab_size(size)
                return cls(text, kind, size=size)
            return cls(text, kind, path=Path(arg).expanduser())
        raise _unknown(text)

    @property
    def trains_on_corpus(self) -> bool:
        return self.kind == "char" or self.size is not None


def build_tokenizer(spec: "str | TokenizerSpec", corpus_text: Callable[[], str] | None = None) -> Tokenizer:
    """A tokenizer from its spec; `char` and `bpe:N` read the corpus through `corpus_text()`."""
    s = spec if isinstance(spec, TokenizerSpec) else TokenizerSpec.parse(spec)
    if s.kind == "char":
        if corpus_text is None:
            raise UserError("the char tokenizer builds its vocabulary from the corpus, but none was given; pass --data")
        from gptbench.tokenizers.char import CharTokenizer

        return CharTokenizer.from_text(corpus_text())
    if s.kind == "byte":
        from gptbench.tokenizers.byte import ByteTokenizer

        return ByteTokenizer()
    if s.kind == "gpt2":
        from gptbench.tokenizers.gpt2 import load_gpt2

        return load_gpt2(s.path)
    if s.size is not None:
        if corpus_text is None:
            raise UserError(f"bpe:{s.size} trains on the corpus, but none was given; pass --data or bpe:PATH")
        from gptbench.tokenizers.bpe import train_bpe
        from gptbench.tokenizers.pieces import split_text

        return train_bpe(split_text(corpus_text(), 1 << 16), s.size)
    assert s.path is not None
    return load_bpe_path(s.path, shown=s.text)


def load_bpe_path(path: Path, *, shown: str | None = None) -> Tokenizer:
    """A saved BPE: a folder with tokenizer.json, a tokenizer.json, or a bare .tiktoken file."""
    from gptbench.tokenizers.bpe import BPETokenizer
    from gptbench.tokenizers.tiktoken_bpe import read_ranks_file

    shown = shown or str(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise UserError(f"{shown}: folder has no tokenizer.json; pass a folder written by `gptbench tokenizer train`")
        return load_tokenizer(path)
    if not path.exists():
        raise UserError(f"{shown}: {path} does not exist; pass a saved tokenizer.json, its folder, or a .tiktoken file")
    if path.suffix == ".json":
        tok = _load_json_file(path)
        if tok.kind not in ("bpe", "gpt2"):
            raise UserError(f"{shown} is a {tok.kind} tokenizer, not BPE; pass --tokenizer {tok.kind} instead")
        return tok
    ranks, _ = read_ranks_file(path, where=shown)
    return BPETokenizer(ranks, name=path.stem)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; the run has no saved tokenizer") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; re-create the tokenizer") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise UserError(f"{path} is not a gptbench tokenizer.json (no `kind`); re-create the tokenizer")
    return obj


def _load_json_file(path: Path) -> Tokenizer:
    return tokenizer_from_json(_read_json(path), path.parent)


def tokenizer_from_json(obj: dict[str, Any], directory: Path) -> Tokenizer:
    """Rebuild a tokenizer from its `to_json()` (side files are read from `directory`)."""
    if "chat" in obj:  # a chat run's: the base tokenizer plus the turn tokens
        from gptbench.tokenizers.chat import ChatTokenizer

        base = tokenizer_from_json({k: v for k, v in obj.items() if k != "chat"}, directory)
        return ChatTokenizer.from_json(base, obj["chat"], Path(directory) / "tokenizer.json")
    kind = obj.get("kind")
    if kind == "char":
        from gptbench.tokenizers.char import CharTokenizer

        return CharTokenizer.from_json(obj)
    if kind == "byte":
        from gptbench.tokenizers.byte import ByteTokenizer

        return ByteTokenizer()
    if kind == "gpt2":
        from gptbench.tokenizers.gpt2 import GPT2Tokenizer

        return GPT2Tokenizer.from_json(obj, directory)
    if kind == "bpe":
        from gptbench.tokenizers.bpe import BPETokenizer

        return BPETokenizer.from_json(obj, directory)
    raise UserError(f"{Path(directory) / 'tokenizer.json'} has unknown kind {kind!r} (known: {', '.join(KINDS)}); is gptbench too old?")


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer saved in `directory` by `Tokenizer.save` (no network, no original files)."""
    directory = Path(directory)
    return tokenizer_from_json(_read_json(directory / "tokenizer.json"), directory)


def load_tokenizer_spec(spec: str) -> "Tokenizer":
    """A tokenizer from a spec (gpt2, byte, bpe:PATH...) or a run / tokenizer.json path."""
    p = Path(spec)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return load_tokenizer(p)
    if p.name == "tokenizer.json" and p.is_file():
        return load_tokenizer(p.parent)
    if spec.split(":")[0] == "char":
        raise UserError("a char tokenizer is built from its corpus; pass the run's folder or its tokenizer.json as --tokenizer")
    return build_tokenizer(spec)
