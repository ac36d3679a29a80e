"""Sampled tokens to text, one row at a time: UTF-8 assembly, stop strings and end-of-text.

`stream_generate` and `generate_batch` both end their rows here, so a row ends the same way
alone or in a batch.

Stop strings. The returned text never contains a stop string and is cut where the
earliest-*starting* match begins, as OpenAI's and Hugging Face's APIs do: when one stop
completes while a longer one that starts earlier may still complete, the text is held back
until that is decided.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Sequence

from gptbench.backends.sampling import SamplingParams

if TYPE_CHECKING:
    from gptbench.tokenizers.base import Tokenizer


class StreamDecoder:
    """Turns a stream of token bytes into text without splitting UTF-8 characters:
    an incomplete trailing sequence is held until the bytes that finish it arrive."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text and holds back text that may start one.

    Only a tail that could still begin a stop is held (never longer than the longest stop
    string), so a long generation costs no growing string. A completed stop is acted on
    only when no earlier-starting stop is still possible; otherwise the text from that
    earlier start is held until more text (or the end) decides.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, chunk: str, final: bool = False) -> tuple[str, bool]:
        """Add text (`final`: no more will come); return (text safe to emit, stop hit)."""
        text = self.pending + chunk
        self.pending = ""
        if not self.stops:
            return text, False
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        hit = min(hits) if hits else -1
        # The earliest position from which a stop may still complete: the longest tail of
        # `text` that is a proper prefix of some stop. Nothing can start before it.
        held_from = len(text)
        if not final:
            for s in self.stops:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        held_from = min(held_from, len(text) - k)
                        break
        if hit >= 0 and hit <= held_from:
            return text[:hit], True
        self.pending = text[held_from:]
        return text[:held_from], False


class Row:
    """One sequence being generated: its tokens, its text (UTF-8 assembly, then stop
    strings) and why it ended. `stream_generate` and `generate_batch` share it, so a row
    ends the same way alone or in a batch."""

    def __init__(self, tokenizer: "Tokenizer", params: SamplingParams, eos: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos = eos
        self.decoder = StreamDecoder()
        self.stops = StopMatcher(params.stop)
        self.tokens: list[int] = []
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        """Add a sampled token; return the text it releases. Ends the row on end-of-text
        (its text is not emitted) or on a stop string (neither is it nor what follows)."""
        self.tokens.append(token)
        if token in self.eos:
            return self.end("eos")
        text, hit = self.stops.feed(self.decoder.push(self.tokenizer.decode_bytes([token])))
        if hit:
            self.finish_reason = "stop"
        return text

    def end(self, reason: str) -> str:
        """End the row (unless it already ended); return the text still held back (an
        unfinished character becomes U+FFFD; a stop string found in it still cuts)."""
        if self.finish_reason is not None:
            return ""
        self.finish_reason = reason
        text, hit = self.stops.feed(self.decoder.flush(), final=True)
        if hit:  # a stop completed earlier but waited on a longer, earlier-starting one
            self.finish_reason = "stop"
        return text


def end_token_ids(tokenizer: "Tokenizer", params: SamplingParams) -> set[int]:
    """The ids that end a row: `stop_token_ids` and the tokenizer's end-of-text."""
    eos = set(params.stop_token_ids)
    if tokenizer.eot_id is not None:
        eos.add(tokenizer.eot_id)
    return eos
