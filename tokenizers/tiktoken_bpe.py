"""Byte-level BPE encoded through tiktoken: the shared base of `gpt2` and trained `bpe`.

A tokenizer is its mergeable ranks (token bytes -> rank, every single byte 0..255 present,
ranks 0..n-1), a pre-tokenizer regex and its special tokens. In a run it is saved as
`tokenizer.json` (pattern, specials, sha256 of the ranks) plus `tokenizer.tiktoken`, the
ranks in tiktoken's own format (`base64(token bytes) rank` per line), so reloading never
needs the network or the file the tokenizer originally came from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer

# GPT-2's pre-tokenizer, as tiktoken writes it (tiktoken_ext.openai_public.r50k_pat_str).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
RANKS_FILE = "tokenizer.tiktoken"


def _fix_surrogates(text: str) -> str:
    # What tiktoken itself does for text that is not valid Unicode (lone surrogates).
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def ranks_to_bytes(ranks: dict[bytes, int]) -> bytes:
    """Canonical tiktoken ranks file: one `base64 rank` line per token, by rank."""
    items = sorted(ranks.items(), key=lambda kv: kv[1])
    return b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n" for tok, rank in items)


def parse_ranks(blob: bytes, where: str) -> dict[bytes, int]:
    """Parse and validate a tiktoken ranks file (UserError naming `where` if malformed)."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(blob.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            tok = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (ValueError, binascii.Error):
            raise UserError(
                f"{where} line {lineno} is not `base64 rank`: not a tiktoken ranks file; "
                f"pass a .tiktoken file (e.g. one written by `gptbench tokenizer train`)"
            ) from None
        if tok in ranks:
            raise UserError(f"{where} line {lineno} repeats a token; the ranks file is corrupt")
        ranks[tok] = rank
    validate_ranks(ranks, where)
    return ranks


def validate_ranks(ranks: dict[bytes, int], where: str) -> None:
    if not ranks:
        raise UserError(f"{where} holds no tokens; pass a non-empty tiktoken ranks file")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UserError(
            f"{where} lacks {len(missing)} of the 256 single bytes (e.g. byte {missing[0]}), "
            f"so it cannot encode arbitrary text; use a byte-level BPE ranks file"
        )
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{where} ranks are not 0..{len(ranks) - 1} without gaps; the ranks file is corrupt")


def read_ranks_file(path: Path, where: str | None = None) -> tuple[dict[bytes, int], bytes]:
    where = where or str(path)
    blob = read_file_bytes(path, where)
    return parse_ranks(blob, where), blob


def read_file_bytes(path: Path, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; pass the path of a .tiktoken ranks file") from None
    except IsADirectoryError:
        raise UserError(f"{where} is a folder, not a .tiktoken ranks file") from None
    except OSError as exc:
        raise UserError(f"cannot read {where}: {exc.strerror}") from None


class TiktokenTokenizer(Tokenizer):
    """BPE over UTF-8 bytes with a regex pre-tokenizer; encoding runs in tiktoken (Rust)."""

    kind = "tiktoken"

    def __init__(
        self,
        ranks: dict[bytes, int],
        *,
        name: str,
        pat_str: str = GPT2_PAT_STR,
        special_tokens: dict[str, int] | None = None,
    ):
        import tiktoken

        validate_ranks(ranks, f"{self.kind} tokenizer")
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: len(ranks)}
        for tok, idx in special_tokens.items():
            if idx < len(ranks):
                raise UserError(f"special token {tok!r} id {idx} collides with a BPE rank; the tokenizer.json is corrupt")
        self._ranks = ranks
        self._name = name
        self._pat_str = pat_str
        self._special = dict(special_tokens)
        self._blob = ranks_to_bytes(ranks)
        self._ranks_sha256 = hashlib.sha256(self._blob).hexdigest()
        try:
            self._enc = tiktoken.Encoding(
                name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=self._special
            )
        except ValueError as exc:  # e.g. a bad regex in a hand-edited tokenizer.json
            raise UserError(f"cannot build tokenizer {name!r}: {exc}") from None
        self._fingerprint: str | None = None

    # -- identity ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def eot_id(self) -> int | None:
        return self._special.get(ENDOFTEXT)

    @property
    def encoding(self):  # the tiktoken.Encoding, for callers that want it directly
        return self._enc

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        return self._ranks

    @property
    def ranks_sha256(self) -> str:
        return self._ranks_sha256

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = super().fingerprint()
        return self._fingerprint

    # -- encoding ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 1) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=max(1, num_threads))

    def _encode_np(self, text: str) -> np.ndarray:
        # allowed_special is empty, so special-token text is encoded as ordinary text.
        try:
            return self._enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:
            return self._enc.encode_to_numpy(_fix_surrogates(text), disallowed_special=())

    def encode_arrays(self, texts: Sequence[str], *, num_threads: int = 1) -> list[np.ndarray]:
        if num_threads <= 1 or len(texts) <= 1:
            return [self._encode_np(t) for t in texts]
        # tiktoken releases the GIL while encoding, so threads scale across cores.
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(self._encode_np, texts))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ints = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        try:
            return self._enc.decode_bytes(ints)
        except (KeyError, OverflowError, ValueError):
            specials = set(self._special.values())
            bad = next((i for i in ints if not (0 <= i < len(self._ranks) or i in specials)), -1)
            raise UserError(f"token id {bad} is out of range for tokenizer {self.spec} (vocab {self.vocab_size})") from None

    # -- persistence ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self._name,
            "vocab_size": self.vocab_size,
            "pat_str": self._pat_str,
            "special_tokens": dict(sorted(self._special.items())),
            "n_ranks": len(self._ranks),
            "ranks_file": RANKS_FILE,
            "ranks_sha256": self._ranks_sha256,
        }

    def save(self, directory: Path) -> None:
        from gptbench.fsutil import atomic_write_bytes, atomic_write_json

        directory = Path(directory)
        atomic_write_bytes(directory / RANKS_FILE, self._blob)  # ranks first: json refers to it
        atomic_write_json(directory / "tokenizer.json", self.to_json())

    @classmethod
    def from_json(cls, obj: dict[str, Any], directory: Path) -> TiktokenTokenizer:
        directory = Path(directory)
        fname = obj.get("ranks_file", RANKS_FILE)
        if not isinstance(fname, str) or "/" in fname or "\\" in fname or fname.startswith("."):
            raise UserError(f"{directory / 'tokenizer.json'} has a bad `ranks_file`; re-create the tokenizer")
        path = directory / fname
        ranks, blob = read_ranks_file(path)
        want = obj.get("ranks_sha256")
        got = hashlib.sha256(ranks_to_bytes(ranks)).hexdigest()
        if want and want != got:
            raise UserError(
                f"{path} does not match {directory / 'tokenizer.json'} (sha256 differs); "
                f"the tokenizer files are corrupted or mixed from two tokenizers"
            )
        special = obj.get("special_tokens")
        if special is not None:
            if not isinstance(special, dict) or not all(isinstance(v, int) for v in special.values()):
                raise UserError(f"{directory / 'tokenizer.json'} has malformed `special_tokens`")
        return cls._from_parts(
            ranks,
            name=str(obj.get("name", cls.kind)),
            pat_str=str(obj.get("pat_str", GPT2_PAT_STR)),
            special_tokens=special,
        )

    @classmethod
    def _from_parts(cls, ranks, *, name, pat_str, special_tokens):
        return cls(ranks, name=name, pat_str=pat_str, special_tokens=special_tokens)
