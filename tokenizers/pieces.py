"""Cutting long text into pieces that tokenize exactly like the whole.

A cut is made only just before a single space or newline that sits between two
non-whitespace characters. GPT-2's pre-tokenizer (and so every tokenizer here: char and
byte are context-free, gpt2 and trained bpe use GPT-2's regex) always starts a new
pre-token there — ` word`, `\\nword` — and never joins across it, so encoding the pieces
and concatenating the ids gives the same ids as encoding the text in one go.
"""

from __future__ import annotations

import re
from typing import Iterator

_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def split_text(text: str, max_chars: int = 1 << 20) -> Iterator[str]:
    """Yield consecutive pieces of `text` (about `max_chars` long) at pre-token boundaries.

    Falls back to a longer piece where no safe cut exists (e.g. one enormous word).
    """
    n = len(text)
    start = 0
    while n - start > max_chars:
        m = _CUT.search(text, start + max_chars // 2, start + max_chars)
        if m is None:
            m = _CUT.search(text, start + max_chars)
            if m is None:
                break
        cut = m.start()
        yield text[start:cut]
        start = cut
    if start < n or n == 0:
        yield text[start:]
