"""The generation engine: stream, collect or batch completions of prompts, with timing.

One token loop serves every backend (`token_loop.py`: cropping, padding, the sliding window
and the KV cache); each row's tokens become text in `row_text.py` (UTF-8 assembly, stop
strings, end-of-text). This module turns them into streamed `GenerationResponse`s or whole
`GenerationResult`s, with cancellation and speeds; `generate_tokens` is re-exported here as
the engine's raw token stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from gptbench.backends.row_text import Row, StreamDecoder, end_token_ids
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.token_loop import MAX_PENDING_TOKENS, default_stride, generate_tokens
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import GenerationBackend as Backend
    from gptbench.tokenizers.base import Tokenizer

__all__ = [
    "MAX_PENDING_TOKENS", "GenerationResponse", "GenerationResult", "StreamDecoder", "default_stride",
    "encode_prompt", "generate", "generate_batch", "generate_tokens", "stream_generate",
]


@dataclass
class GenerationResponse:
    """One streamed step: the new text and token, running speeds, and why it ended."""

    text: str  # text delta; never splits a multi-byte character
    token: int | None  # the sampled token id (None on a response that carries no token)
    generation_tokens: int  # tokens generated so far
    prompt_tokens: int  # prompt tokens after cropping
    tokens_per_sec: float  # decode speed so far (tokens after the first ÷ time since it)
    prompt_tokens_per_sec: float  # prefill speed (prompt tokens ÷ time to the first token)
    time_to_first_token: float  # seconds from the call to the first sampled token
    finish_reason: str | None = None  # None while streaming, then length|stop|eos|cancelled


@dataclass
class GenerationResult:
    """A whole sample (non-streaming and batched generation)."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    tokens_per_sec: float
    prompt_tokens_per_sec: float
    time_to_first_token: float
    finish_reason: str
    batch_tokens_per_sec: float | None = None  # the whole batch's throughput (batches of 2+)

    def to_dict(self) -> dict:
        out = {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": len(self.tokens),
            "tokens_per_sec": round(self.tokens_per_sec, 2),
            "prompt_tokens_per_sec": round(self.prompt_tokens_per_sec, 2),
            "time_to_first_token": round(self.time_to_first_token, 4),
            "finish_reason": self.finish_reason,
        }
        if self.batch_tokens_per_sec is not None:
            out["batch_tokens_per_sec"] = round(self.batch_tokens_per_sec, 2)
        return out


def encode_prompt(tokenizer: "Tokenizer", prompt: str | Sequence[int]) -> list[int]:
    """Prompt text (or ids) to ids; an empty text prompt starts from end-of-text if the
    tokenizer has one (the GPT-2 convention for unconditional samples)."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
        if not ids:
            if tokenizer.eot_id is not None:
                return [tokenizer.eot_id]
            raise UserError("empty prompt: give at least one character of prompt text")
        return ids
    return [int(t) for t in prompt]


@dataclass
class _StreamClock:
    """The counts and times one stream's responses report, kept as its tokens arrive."""

    t_call: float
    prompt_tokens: int  # after cropping
    t_first: float = 0.0
    n: int = 0
    timing: dict = field(default_factory=dict)  # filled by `generate_tokens`

    def count_token(self) -> None:
        self.n += 1
        if self.n == 1:
            self.t_first = time.perf_counter()

    def response(self, text: str, token: int | None, reason: str | None) -> GenerationResponse:
        now = time.perf_counter()
        n, prefill = self.n, self.timing.get("prefill_seconds", 0.0)
        return GenerationResponse(
            text=text,
            token=token,
            generation_tokens=n,
            prompt_tokens=self.prompt_tokens,
            tokens_per_sec=(n - 1) / (now - self.t_first) if n > 1 and now > self.t_first else 0.0,
            prompt_tokens_per_sec=self.prompt_tokens / prefill if prefill > 0 else 0.0,
            time_to_first_token=self.t_first - self.t_call if n else 0.0,
            finish_reason=reason,
        )


def stream_generate(
    backend: "Backend",
    tokenizer: "Tokenizer",
    prompt: str | Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    cancel: threading.Event | None = None,
    stride: int | None = None,
) -> Iterator[GenerationResponse]:
    """Stream one completion, one response per token; the last has `finish_reason` set.

    `cancel` (set from any thread) stops the stream within one token with reason
    `cancelled`. End-of-text (the tokenizer's eot or `stop_token_ids`) ends with `eos` (its
    text is not emitted), a stop string with `stop` (the stop string and anything after it
    are not emitted), else `length`.
    """
    t_call = time.perf_counter()
    ids = encode_prompt(tokenizer, prompt)
    row = Row(tokenizer, params, end_token_ids(tokenizer, params))
    clock = _StreamClock(t_call, min(len(ids), backend.config.block_size))
    if params.max_new_tokens == 0:
        yield clock.response("", None, "length")
        return
    if cancel is not None and cancel.is_set():
        yield clock.response("", None, "cancelled")
        return
    tokens = generate_tokens(backend, [ids], params, use_cache=use_cache, stride=stride, timing=clock.timing)
    try:
        for arr in tokens:
            token = int(arr[0])
            clock.count_token()
            text = row.push(token)
            if row.finish_reason is None and cancel is not None and cancel.is_set():
                text += row.end("cancelled")
            elif row.finish_reason is None and clock.n == params.max_new_tokens:
                text += row.end("length")
            yield clock.response(text, token, row.finish_reason)
            if row.finish_reason is not None:
                return
    finally:
        tokens.close()


def generate(
    backend: "Backend",
    tokenizer: "Tokenizer",
    prompt: str | Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    stride: int | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Collect a whole streamed completion."""
    parts: list[str] = []
    toks: list[int] = []
    last: GenerationResponse | None = None
    for r in stream_generate(backend, tokenizer, prompt, params, use_cache=use_cache, stride=stride, cancel=cancel):
        parts.append(r.text)
        if r.token is not None:
            toks.append(r.token)
        last = r
    assert last is not None and last.finish_reason is not None
    return GenerationResult(
        text="".join(parts),
        tokens=toks,
        prompt_tokens=last.prompt_tokens,
        tokens_per_sec=last.tokens_per_sec,
        prompt_tokens_per_sec=last.prompt_tokens_per_sec,
        time_to_first_token=last.time_to_first_token,
        finish_reason=last.finish_reason,
    )



class _BatchRows:
    """The rows of one batch with their text so far and when each ended, so a row's speed
    is its own tokens over its own decode time."""

    def __init__(self, tokenizer: "Tokenizer", params: SamplingParams, n_rows: int, t_call: float) -> None:
        eos = end_token_ids(tokenizer, params)
        self.rows = [Row(tokenizer, params, eos) for _ in range(n_rows)]
        self.texts: list[list[str]] = [[] for _ in range(n_rows)]
        self.ended_at = [0.0] * n_rows
        self.timing: dict = {}  # filled by `generate_tokens`
        self.t_call = self.t_first = t_call
        self.n = 0

    def push(self, column, cancel: threading.Event | None) -> bool:
        """Add one sampled column ([B] ids) to the rows still going, then end them all if
        `cancel` is set; True once every row has ended."""
        self.n += 1
        now = time.perf_counter()
        if self.n == 1:
            self.t_first = now
        for b, row in enumerate(self.rows):
            if row.finish_reason is None:
                self.texts[b].append(row.push(int(column[b])))
                if row.finish_reason is not None:
                    self.ended_at[b] = now
        if cancel is not None and cancel.is_set():
            for b, row in enumerate(self.rows):
                if row.finish_reason is None:
                    self.texts[b].append(row.end("cancelled"))
                    self.ended_at[b] = now
        return all(row.finish_reason is not None for row in self.rows)

    def results(self, prompt_tokens: list[int]) -> list[GenerationResult]:
        """End the rows still going (`length`) and describe every row."""
        now = time.perf_counter()
        n, t_first, B = self.n, self.t_first, len(self.rows)
        prefill = self.timing.get("prefill_seconds", 0.0)
        total = sum(len(row.tokens) for row in self.rows)
        batch_tps = (total - B) / (now - t_first) if n > 1 and now > t_first else 0.0
        results = []
        for b, row in enumerate(self.rows):
            self.texts[b].append(row.end("length"))
            end = self.ended_at[b] or now
            k = len(row.tokens)
            results.append(
                GenerationResult(
                    text="".join(self.texts[b]),
                    tokens=row.tokens,
                    prompt_tokens=prompt_tokens[b],
                    tokens_per_sec=(k - 1) / (end - t_first) if k > 1 and end > t_first else 0.0,
                    prompt_tokens_per_sec=self.timing.get("prompt_tokens", 0) / prefill if prefill else 0.0,
                    time_to_first_token=t_first - self.t_call if n else 0.0,
                    finish_reason=row.finish_reason or "length",
                    batch_tokens_per_sec=batch_tps if B > 1 else None,
                )
            )
        return results


def generate_batch(
    backend: "Backend",
    tokenizer: "Tokenizer",
    prompts: Sequence[str | Sequence[int]],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    stride: int | None = None,
    cancel: threading.Event | None = None,
) -> list[GenerationResult]:
    """Generate for several prompts at once (left-padded into one batch).

    Each row ends on its own eos/stop (later tokens of that row are discarded); the batch
    stops when every row has ended. A row's `tokens_per_sec` is its own tokens over its own
    decode time; `batch_tokens_per_sec` (batches of 2+) is the whole batch's throughput.
    """
    t_call = time.perf_counter()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    batch = _BatchRows(tokenizer, params, len(encoded), t_call)
    if params.max_new_tokens and not (cancel is not None and cancel.is_set()):
        it = generate_tokens(backend, encoded, params, use_cache=use_cache, stride=stride, timing=batch.timing)
        try:
            for column in it:
                if batch.push(column, cancel):
                    break
        finally:
            it.close()
    return batch.results([min(len(ids), backend.config.block_size) for ids in encoded])
