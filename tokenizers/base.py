"""The tokenizer protocol shared by char, byte, GPT-2 (tiktoken) and trained BPE.

A tokenizer is saved into a run directory (`tokenizer.json`, plus a ranks file for BPE) and
reloads identically from there, so a run never depends on where its tokenizer came from.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np


class Tokenizer(ABC):
    kind: str  # "char" | "byte" | "gpt2" | "bpe"

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int | None:
        """End-of-text token id (document separator, generation stop), if any."""
        return None

    @property
    def spec(self) -> str:
        """Short display form, e.g. `char`, `gpt2`, `bpe:4096`."""
        return self.kind

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Plain text to ids; special tokens are never produced from text.
        Raises UserError for text the tokenizer cannot represent (char: unknown characters)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: Sequence[str], *, num_threads: int = 1) -> list[np.ndarray]:
        """Like `encode_batch`, but one uint32 array per text (the fast path for corpora).

        Subclasses override this with vectorised or multi-threaded encoders; `num_threads`
        is a hint. Text must be split only where the tokenizer's pre-tokenizer splits
        anyway (see `gptbench.data.split_text`), so that the result equals `encode(whole)`.
        """
        import numpy as np

        return [np.asarray(self.encode(t), dtype=np.uint32) for t in texts]

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The UTF-8 bytes of `ids`; a token may end mid-character, so streaming decoders
        accumulate bytes and emit only complete characters."""

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """JSON-able description written to tokenizer.json (must include `kind`)."""

    def fingerprint(self) -> str:
        """SHA-256 of the canonical tokenizer.json: equal fingerprints encode identically."""
        blob = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec} vocab={self.vocab_size}>"

    def save(self, directory: Path) -> None:
        """Write tokenizer.json (and any side file) atomically into `directory`."""
        from gptbench.fsutil import atomic_write_json

        atomic_write_json(Path(directory) / "tokenizer.json", self.to_json())
