"""Character tokenizer: one id per Unicode code point of the training corpus.

The vocabulary is the sorted set of the corpus's characters and is saved with the run;
text containing any other character cannot be encoded (UserError naming them). No eot.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer

_MAX_NAMED = 5


def _codepoints(text: str) -> np.ndarray:
    try:
        raw = text.encode("utf-32-le")
    except UnicodeEncodeError:  # lone surrogates: cannot be in any vocabulary built from UTF-8
        raw = text.encode("utf-32-le", "surrogatepass")
    return np.frombuffer(raw, dtype=np.uint32)


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        vocab = sorted(set(chars))
        if not vocab:
            raise UserError("cannot build a char tokenizer from empty text; pass a non-empty corpus")
        for ch in vocab:
            if len(ch) != 1:
                raise UserError(f"char vocabulary entries must be single characters, got {ch!r}")
        self._chars: list[str] = vocab
        self._cps = np.fromiter((ord(c) for c in vocab), dtype=np.uint32, count=len(vocab))
        self._table = np.array(vocab, dtype=object)
        self._lut_cache: np.ndarray | None = None

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(set(text))

    @property
    def chars(self) -> str:
        return "".join(self._chars)

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    def _ids(self, text: str) -> np.ndarray:
        cps = _codepoints(text)
        if cps.size == 0:
            return np.zeros(0, dtype=np.uint32)
        lut = self._lut()
        idx = lut[np.minimum(cps, len(lut) - 1)]
        ok = (idx >= 0) & (cps < len(lut))
        if not ok.all():
            bad_positions = np.flatnonzero(~ok)
            named: list[str] = []
            for p in bad_positions:
                ch = chr(int(cps[p]))
                if ch not in named:
                    named.append(ch)
                    if len(named) > _MAX_NAMED:
                        break
            shown = ", ".join(repr(c) for c in named[:_MAX_NAMED])
            more = ", ..." if len(named) > _MAX_NAMED else ""
            raise UserError(
                f"cannot encode {shown}{more}: not in this run's character vocabulary "
                f"({self.vocab_size} characters); use text made of those characters "
                f"or a byte/gpt2/bpe tokenizer"
            )
        return idx.astype(np.uint32)

    def _lut(self) -> np.ndarray:
        """code point -> id (-1: not in the vocabulary), up to the largest code point."""
        if self._lut_cache is None:
            lut = np.full(int(self._cps[-1]) + 1, -1, dtype=np.int32)
            lut[self._cps] = np.arange(len(self._cps), dtype=np.int32)
            self._lut_cache = lut
        return self._lut_cache

    def encode(self, text: str) -> list[int]:
        return self._ids(text).tolist()

    def encode_arrays(self, texts: Sequence[str], *, num_threads: int = 1) -> list[np.ndarray]:
        return [self._ids(t) for t in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8", errors="replace")

    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise UserError(f"token id {bad} is out of range for this char vocabulary ({self.vocab_size} characters)")
        return "".join(self._table[arr].tolist())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CharTokenizer:
        chars = obj.get("chars")
        if not isinstance(chars, str) or not chars:
            raise UserError("tokenizer.json (kind char) has no `chars`; re-create the run's tokenizer")
        return cls(chars)
