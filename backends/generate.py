"""The generation engine: one token loop for every backend, streamed.

The backend provides `new_cache`, `forward_last` (prefill or one cached step) and `sample`
(the filters of `sampling.py` on its own tensors): the `GenerationBackend` contract. This
module owns everything else: prompt cropping, left padding, the sliding window, the
KV-cache life cycle, repetition history, stop strings, end-of-text, cancellation, timing
and incremental UTF-8 decoding.

KV cache. `backend.new_cache(pad)` returns one cache object per layer, preallocated and
grown in chunks (never concatenated per token). The prompt is prefilled in one forward pass; after
that each step feeds one token per row and appends its keys and values in place.

Context window. Positions run from 0 at the window's start (a learned table, or rotary
angles, of `block_size` positions), so a KV cache cannot simply roll past `block_size`:
every cached key was computed at a position that changes when the window moves. So when a sequence would exceed `block_size` tokens of context, its window slides:
it keeps the last `block_size - stride + 1` tokens and (with a cache) re-prefills them into
a fresh cache, then decodes `stride - 1` more tokens incrementally before the next slide.
Without a cache the model re-reads exactly the same window every token, so both paths see
identical contexts and give identical greedy output. `stride=1` is nanoGPT's "crop to the
last block_size tokens every step" (at the cost of a full prefill per token); the default
`block_size // 4` keeps at least three quarters of the window as context and amortises the
re-prefill over many tokens. Prompts longer than `block_size` are cropped from the left.

Batches. Prompts of different lengths are left-padded into one [B, T] array; each row keeps
its own window start, and tokens before it (padding, or tokens that slid out) are given to
the backend as that row's `pad` when the cache is made: masked keys, positions restarting at
0 after them (without a KV cache, a throwaway cache carries the padding for one forward).
Every row therefore sees exactly the context it would see generated alone, slides included.

Stop strings. The returned text never contains a stop string and is cut where the
earliest-*starting* match begins, as OpenAI's and Hugging Face's APIs do: when one stop
completes while a longer one that starts earlier may still complete, the text is held back
until that is decided.
"""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from gptbench.backends.sampling import SamplingParams
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.backends.base import GenerationBackend as Backend
    from gptbench.tokenizers.base import Tokenizer

MAX_PENDING_TOKENS = 4096  # the token buffer grows in chunks of this many positions


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


class StreamDecoder:
    """Turns a stream of token bytes into text without splitting UTF-8 characters:
    an incomplete trailing sequence is held until the bytes that finish it arrive."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def default_stride(block_size: int) -> int:
    return max(1, block_size // 4)


def generate_tokens(
    backend: "Backend",
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    stride: int | None = None,
    timing: dict | None = None,
) -> Iterator[np.ndarray]:
    """Yield one array of sampled ids ([B]) per step for a batch of prompts.

    Runs until `max_new_tokens` or until the consumer stops iterating (so stop conditions
    and cancellation live with the consumer). `timing`, if given, receives `prompt_tokens`
    (real prompt tokens of all rows) and `prefill_seconds` once the first token is sampled.
    """
    T = backend.config.block_size
    stride = default_stride(T) if stride is None else int(stride)
    if not 1 <= stride <= T:
        raise UserError(f"window stride must be in [1, block_size={T}], got {stride}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("empty prompt: give at least one token of prompt text")
    if params.max_new_tokens == 0:
        return
    vocab = backend.config.vocab_size
    rows = [np.asarray(list(p)[-T:], dtype=np.int64) for p in prompts]  # crop from the left
    for r in rows:
        if r.min() < 0 or r.max() >= vocab:
            raise UserError(f"prompt token ids must be in [0, {vocab}); this model has {vocab} tokens")
    B = len(rows)
    longest = max(len(r) for r in rows)
    pad = np.array([longest - len(r) for r in rows], dtype=np.int64)
    seq = np.zeros((B, longest + min(params.max_new_tokens, MAX_PENDING_TOKENS)), dtype=np.int64)
    for b, r in enumerate(rows):
        seq[b, pad[b] : longest] = r
    L = longest
    start = pad.copy()  # per row: index in `seq` of the first token of its window
    gen = backend.make_generator(params.seed)
    W = params.repetition_window if params.repetition_penalty != 1.0 else 0
    keep = T - stride + 1  # window length right after a slide

    def prefill() -> tuple[Any, Any]:
        """Forward every row's window; returns (the cache, now holding it, or None; logits)."""
        lo = int(start.min())
        row_pad = start - lo
        cache = None
        if use_cache or row_pad.any():  # without a KV cache, a throwaway one carries the padding
            cache = backend.new_cache(row_pad if row_pad.any() else None)
        return cache, backend.forward_last(seq[:, lo:L], cache)

    t0 = time.perf_counter()
    cache, logits = prefill()
    for step in range(params.max_new_tokens):
        history = None
        if W:
            lo = max(0, L - W)
            history = seq[:, lo:L].copy()
            history[np.arange(lo, L)[None, :] < pad[:, None]] = -1
        tok = backend.sample(logits, params, history, gen)
        if step == 0 and timing is not None:
            timing["prompt_tokens"] = int(sum(len(r) for r in rows))
            timing["prefill_seconds"] = time.perf_counter() - t0
        if L == seq.shape[1]:  # grow the token buffer (never all of max_new_tokens up front)
            seq = np.concatenate([seq, np.zeros((B, MAX_PENDING_TOKENS), dtype=np.int64)], axis=1)
        seq[:, L] = tok
        L += 1
        yield tok
        if step + 1 == params.max_new_tokens:
            return
        full = L - start > T
        if full.any():  # some row's window is full: slide it and re-prefill every row
            start[full] = L - keep
            cache, logits = prefill()
        elif use_cache:
            logits = backend.forward_last(seq[:, L - 1 : L], cache)
        else:
            _, logits = prefill()


class _StopMatcher:
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


class _Row:
    """One sequence being generated: its tokens, its text (UTF-8 assembly, then stop
    strings) and why it ended. `stream_generate` and `generate_batch` share it, so a row
    ends the same way alone or in a batch."""

    def __init__(self, tokenizer: "Tokenizer", params: SamplingParams, eos: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos = eos
        self.decoder = StreamDecoder()
        self.stops = _StopMatcher(params.stop)
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


def _eos_ids(tokenizer: "Tokenizer", params: SamplingParams) -> set[int]:
    eos = set(params.stop_token_ids)
    if tokenizer.eot_id is not None:
        eos.add(tokenizer.eot_id)
    return eos


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
    eos = _eos_ids(tokenizer, params)
    row = _Row(tokenizer, params, eos)
    timing: dict = {}
    t_first = 0.0
    n = 0
    prompt_tokens = min(len(ids), backend.config.block_size)

    def response(text: str, token: int | None, reason: str | None) -> GenerationResponse:
        now = time.perf_counter()
        prefill = timing.get("prefill_seconds", 0.0)
        return GenerationResponse(
            text=text,
            token=token,
            generation_tokens=n,
            prompt_tokens=prompt_tokens,
            tokens_per_sec=(n - 1) / (now - t_first) if n > 1 and now > t_first else 0.0,
            prompt_tokens_per_sec=prompt_tokens / prefill if prefill > 0 else 0.0,
            time_to_first_token=t_first - t_call if n else 0.0,
            finish_reason=reason,
        )

    if params.max_new_tokens == 0:
        yield response("", None, "length")
        return
    if cancel is not None and cancel.is_set():
        yield response("", None, "cancelled")
        return
    tokens = generate_tokens(backend, [ids], params, use_cache=use_cache, stride=stride, timing=timing)
    try:
        for arr in tokens:
            token = int(arr[0])
            n += 1
            if n == 1:
                t_first = time.perf_counter()
            text = row.push(token)
            if row.finish_reason is None and cancel is not None and cancel.is_set():
                text += row.end("cancelled")
            elif row.finish_reason is None and n == params.max_new_tokens:
                text += row.end("length")
            yield response(text, token, row.finish_reason)
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
    eos = _eos_ids(tokenizer, params)
    B = len(encoded)
    rows = [_Row(tokenizer, params, eos) for _ in range(B)]
    texts: list[list[str]] = [[] for _ in range(B)]
    ended_at = [0.0] * B
    timing: dict = {}
    t_first = t_call
    n = 0
    if params.max_new_tokens and not (cancel is not None and cancel.is_set()):
        it = generate_tokens(backend, encoded, params, use_cache=use_cache, stride=stride, timing=timing)
        try:
            for arr in it:
                n += 1
                now = time.perf_counter()
                if n == 1:
                    t_first = now
                for b, row in enumerate(rows):
                    if row.finish_reason is None:
                        texts[b].append(row.push(int(arr[b])))
                        if row.finish_reason is not None:
                            ended_at[b] = now
                if cancel is not None and cancel.is_set():
                    for b, row in enumerate(rows):
                        if row.finish_reason is None:
                            texts[b].append(row.end("cancelled"))
                            ended_at[b] = now
                if all(row.finish_reason is not None for row in rows):
                    break
        finally:
            it.close()
    now = time.perf_counter()
    prefill = timing.get("prefill_seconds", 0.0)
    total = sum(len(row.tokens) for row in rows)
    batch_tps = (total - B) / (now - t_first) if n > 1 and now > t_first else 0.0
    results = []
    for b, row in enumerate(rows):
        texts[b].append(row.end("length"))
        end = ended_at[b] or now
        k = len(row.tokens)
        results.append(
            GenerationResult(
                text="".join(texts[b]),
                tokens=row.tokens,
                prompt_tokens=min(len(encoded[b]), backend.config.block_size),
                tokens_per_sec=(k - 1) / (end - t_first) if k > 1 and end > t_first else 0.0,
                prompt_tokens_per_sec=timing.get("prompt_tokens", 0) / prefill if prefill else 0.0,
                time_to_first_token=t_first - t_call if n else 0.0,
                finish_reason=row.finish_reason or "length",
                batch_tokens_per_sec=batch_tps if B > 1 else None,
            )
        )
    return results
