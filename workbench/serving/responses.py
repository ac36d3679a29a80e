"""OpenAI's response objects: a choice's events gathered into text, log-probabilities and a finish reason, as whole responses or stream chunks."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gptbench.serving.scheduler import Event, TokenLogprob, token_text

if TYPE_CHECKING:
    from gptbench.tokenizers.base import Tokenizer

# the engine's reasons -> OpenAI's (`abort`: the server stopped before the row ended, as vLLM says)
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "abort": "abort", "error": "error"}


@dataclass
class Choice:
    """One choice as its events arrive."""

    index: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    def add(self, ev: Event) -> None:
        if ev.prompt_logprobs is not None:
            self.logprobs.extend(ev.prompt_logprobs)
        if ev.token is not None:
            self.tokens += 1
            if ev.logprob is not None:
                self.logprobs.append(ev.logprob)
        self.text.append(ev.text)
        if ev.finish_reason is not None:
            self.finish_reason = FINISH[ev.finish_reason]
            self.error = ev.error


def completion_logprobs(tokenizer: "Tokenizer", items: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens = [token_text(tokenizer, t.token) for t in items]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [t.top for t in items], "text_offset": offsets}


def chat_logprobs(tokenizer: "Tokenizer", items: list[TokenLogprob]) -> dict[str, Any]:
    def entry(text: str, logprob: float | None) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(token_text(tokenizer, t.token), t.logprob),
                         "top_logprobs": [entry(k, v) for k, v in (t.top or {}).items()]} for t in items]}


@dataclass
class Envelope:
    """What every response and chunk of one request carries."""

    kind: str  # text_completion | chat.completion
    model: str
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def whole(self, choices: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else self.kind
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    done = sum(c.tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def completion_choice(tokenizer: "Tokenizer", c: Choice, echo: str | None, logprobs: bool) -> dict[str, Any]:
    text = (echo or "") + "".join(c.text)
    lp = completion_logprobs(tokenizer, c.logprobs) if logprobs else None
    return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason}


def chat_choice(tokenizer: "Tokenizer", c: Choice, logprobs: bool) -> dict[str, Any]:
    return {"index": c.index, "message": {"role": "assistant", "content": "".join(c.text)},
            "logprobs": chat_logprobs(tokenizer, c.logprobs) if logprobs else None, "finish_reason": c.finish_reason}


def stream_choice(tokenizer: "Tokenizer", kind: str, index: int, ev: Event, text: str, logprobs: bool,
                  first: bool) -> dict[str, Any]:
    """One streamed delta of choice `index` (`text` may carry the echoed prompt first)."""
    items = (ev.prompt_logprobs or []) + ([ev.logprob] if ev.logprob is not None else [])
    reason = FINISH[ev.finish_reason] if ev.finish_reason is not None else None
    if kind == "chat.completion":
        delta: dict[str, Any] = {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": index, "delta": delta, "logprobs": chat_logprobs(tokenizer, items) if logprobs else None,
                "finish_reason": reason}
    return {"index": index, "text": text, "logprobs": completion_logprobs(tokenizer, items) if logprobs else None,
            "finish_reason": reason}
