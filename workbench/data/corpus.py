"""`Corpus`: a source of documents, the one type every corpus form resolves to.

Its own module so the forms that build one (`sources` for local text, `hub` for record
files and Hugging Face sets) and the token cache that reads one share it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from gptbench.errors import UserError

DOC_SEPARATOR = "\n\n"  # between documents for tokenizers without an eot token


@dataclass
class Corpus:
    """A source of documents. A text file is read eagerly (validated, hashed); folders of
    text files are hashed up front and streamed (`rereadable`: a second pass reads the files
    again); records and Hugging Face sets are streamed (hashed while they are tokenized)."""

    spec: str  # canonical form
    name: str  # short display name (pystdlib, tinyshakespeare, file or folder name, ...)
    source: str  # pystdlib | tinyshakespeare | file | folder | glob | records | hf
    key: str  # identity for the token cache (content hash, or spec hash when streamed)
    docs_list: list[str] | None = None
    stream: Callable[[], Iterator[str]] | None = None
    sha256: str | None = None
    n_bytes: int | None = None
    doc_count: int | None = None  # known up front for a streamed folder
    rereadable: bool = False  # the stream is cheap to read again (local files): never held in memory
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_docs(self) -> int | None:
        return len(self.docs_list) if self.docs_list is not None else self.doc_count

    def docs(self) -> Iterator[str]:
        if self.docs_list is not None:
            return iter(self.docs_list)
        assert self.stream is not None
        return self.stream()

    def reread(self) -> Iterable[str]:
        """The documents for one of several passes: streamed again where that is cheap
        (local files), else held in memory after the first pass (hub sets, records)."""
        return self.docs() if self.rereadable else self.materialize()

    def materialize(self) -> list[str]:
        if self.docs_list is None:
            self.docs_list = list(self.docs())
            if not self.docs_list:
                raise UserError(f"{self.spec} holds no text documents; pass a corpus with text")
        return self.docs_list

    def text(self) -> str:
        return DOC_SEPARATOR.join(self.materialize())
