"""The tokenizer protocol shared by char, byte, GPT-2 (tiktoken) and trained BPE.

A tokenizer is saved into a run directory (`tokenizer.json`, plus a ranks file for BPE) and
reloads identically from there, so a run never depends on where its tokenizer came from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence


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

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The UTF-8 bytes of `ids`; a token may end mid-character, so streaming decoders
        accumulate bytes and emit only complete characters."""

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """JSON-able description written to tokenizer.json (must include `kind`)."""

    def save(self, directory: Path) -> None:
        """Write tokenizer.json (and any side file) atomically into `directory`."""
        from gptbench.fsutil import atomic_write_json

        atomic_write_json(Path(directory) / "tokenizer.json", self.to_json())
