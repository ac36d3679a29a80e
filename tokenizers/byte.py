"""Byte tokenizer: the 256 byte values of UTF-8 are the vocabulary. No eot token.

Kept at exactly 256 ids (no extra eot) so `byte` means "raw UTF-8" everywhere; documents
in a corpus are separated by a blank line instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer


def utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates (not valid Unicode text) become U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class ByteTokenizer(Tokenizer):
    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(utf8(text))

    def encode_arrays(self, texts: Sequence[str], *, num_threads: int = 1) -> list[np.ndarray]:
        return [np.frombuffer(utf8(t), dtype=np.uint8).astype(np.uint32) for t in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            bad = int(arr[(arr < 0) | (arr > 255)][0])
            raise UserError(f"token id {bad} is out of range for the byte tokenizer (0..255)")
        return arr.astype(np.uint8).tobytes()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": 256}
