"""OpenAI's request bodies for completions and chat completions, parsed into typed requests or refused with an `ApiError`.

Every field OpenAI defines that gptbench serves is type- and range-checked here, with the
server's limits (`Limits`); a wrong type, an out-of-range value or an unsupported option
becomes a 400 with OpenAI's error object naming the parameter. Unknown fields are ignored,
as OpenAI's API does, except options that would change the result and that gptbench does
not implement (penalties, `logit_bias`, `best_of`, `suffix`), which are refused unless they
are their neutral value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_LOGPROBS = 5  # OpenAI's legacy completions allow 0..5


class ApiError(Exception):
    """An HTTP error carrying OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context
    max_tokens: int | None = None  # None: the model's context
    max_n: int = 8
    max_prompts: int = 64  # prompts in one completions request (lm-evaluation-harness batches them)


@dataclass(frozen=True)
class CompletionRequest:
    """What `/v1/completions` (and, after its template, `/v1/chat/completions`) generates."""

    model: str | None
    prompts: list[str | list[int]]  # one or more (a completions request may batch prompts)
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    n: int
    logprobs: int | None
    echo: bool
    stream: bool
    include_usage: bool


def _typed(body: dict, name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise ApiError(400, f"'{name}' must be {what}, got {value!r}", name)
    if not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {what}, got {type(value).__name__}", name)
    return value


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = float(_typed(body, name, (int, float), default, "a number"))
    if not (lo <= value <= hi) or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be between {lo:g} and {hi:g}, got {value:g}", name)
    return value


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    value = _typed(body, name, (int,), default, "an integer")
    if value is not None and (value < lo or (hi is not None and value > hi)):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ApiError(400, f"'{name}' must be {bound}, got {value}", name)
    return value


def _neutral(body: dict) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise ApiError(400, f"'{name}' is not supported by gptbench serve (only 0)", name)
    if body.get("logit_bias"):
        raise ApiError(400, "'logit_bias' is not supported by gptbench serve", "logit_bias")
    if body.get("suffix"):
        raise ApiError(400, "'suffix' is not supported by gptbench serve", "suffix")
    if body.get("best_of") not in (None, body.get("n", 1)):
        raise ApiError(400, "'best_of' is not supported by gptbench serve (leave it out, or equal to n)", "best_of")


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings", "stop")
    return tuple(s for s in stop if s)


def _one_prompt(prompt: Any) -> str | list[int] | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    return None


def _prompts(body: dict, limits: Limits) -> list[str | list[int]]:
    """A string, a list of token ids, or a list of either (several prompts)."""
    prompt = body.get("prompt")
    one = _one_prompt(prompt)
    if one is not None:
        return [one]
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        many = [_one_prompt(p) for p in prompt]
        if all(p is not None for p in many):
            if len(many) > limits.max_prompts:
                raise ApiError(400, f"at most {limits.max_prompts} prompts per request, got {len(many)}", "prompt")
            return many  # type: ignore[return-value]
    raise ApiError(400, "'prompt' must be a string, a non-empty list of token ids, or a list of those", "prompt")


def parse_common(body: Any, limits: Limits, prompts: list[str | list[int]]) -> CompletionRequest:
    """The sampling fields both endpoints share."""
    _neutral(body)
    model = _typed(body, "model", (str,), None, "a string")
    stream_options = _typed(body, "stream_options", (dict,), {}, "an object")
    logprobs = body.get("logprobs")
    if isinstance(logprobs, bool):  # chat completions: a boolean, with top_logprobs for alternatives
        logprobs = _integer(body, "top_logprobs", 0, 0, MAX_LOGPROBS) if logprobs else None
    else:
        logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    max_tokens = body.get("max_completion_tokens", None) if "max_tokens" not in body else None
    name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    return CompletionRequest(
        model=model, prompts=prompts,
        max_tokens=_integer(body, name, 16, 0, limits.max_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-9,
        stop=_stop(body), seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        n=_integer(body, "n", 1, 1, limits.max_n),
        logprobs=logprobs,
        echo=bool(_typed(body, "echo", (bool,), False, "a boolean")),
        stream=bool(_typed(body, "stream", (bool,), False, "a boolean")),
        include_usage=bool(stream_options.get("include_usage", False)),
    )


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return parse_common(body, limits, _prompts(body, limits))


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


def parse_chat(body: Any, limits: Limits) -> tuple[list[ChatMessage], CompletionRequest]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"'messages[{i}].role' must be system, developer, user or assistant", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"'messages[{i}].content' parts must all be text", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"'messages[{i}].content' must be a string", f"messages[{i}].content")
        out.append(ChatMessage(m["role"], content))
    return out, parse_common({k: v for k, v in body.items() if k != "echo"}, limits, [""])
