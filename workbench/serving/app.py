"""The OpenAI-compatible HTTP API (a Starlette app): models, completions and chat completions over the scheduler.

Handlers only parse, check and wait: every forward pass runs on the scheduler's thread,
and each job's events come back to the event loop through `call_soon_threadsafe`. Every
refusal is OpenAI's error object (`ApiError`): 400 bad request, 401 wrong key, 404 unknown
model or route, 413 body too large, 429 queue full (with `Retry-After`). A client that goes
away (a closed stream or an abandoned request) cancels its rows at once.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gptbench.backends.sampling import SamplingParams
from gptbench.errors import UserError
from gptbench.serving.protocol import ApiError, ChatMessage, CompletionRequest, Limits, parse_chat, parse_completion
from gptbench.serving.responses import (
    Choice, Envelope, chat_choice, completion_choice, stream_choice, usage,
)
from gptbench.serving.scheduler import Event, Job, Scheduler

if TYPE_CHECKING:
    from gptbench.tokenizers.base import Tokenizer

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ChatFormat:
    """A chat run's template as the server applies it: messages -> prompt ids ending with the
    assistant's turn (`ChatTokenizer.prompt_ids`, as `gptbench chat` builds them), and the
    end-of-turn token ids where an answer stops."""

    prompt_ids: Callable[[list[ChatMessage]], list[int]]
    end_ids: tuple[int, ...]


def chat_format(tokenizer: "Tokenizer") -> ChatFormat | None:
    """The run's chat format, or None for a base run (a tokenizer without turn tokens).
    OpenAI's `developer` role is the template's `system`."""
    from gptbench.tokenizers.chat import Message, is_chat

    if not is_chat(tokenizer):
        return None

    def prompt_ids(messages: list[ChatMessage]) -> list[int]:
        return tokenizer.prompt_ids([Message("system" if m.role == "developer" else m.role, m.content) for m in messages])

    return ChatFormat(prompt_ids, (tokenizer.end_id,))


@dataclass
class ServeState:
    """What the handlers share: the scheduler, the model's name and limits, counters."""

    scheduler: Scheduler
    tokenizer: "Tokenizer"
    model: str
    block_size: int
    vocab_size: int
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    chat: ChatFormat | None = None  # the run's chat template (chat_format), when it has one
    requests: int = 0  # completions accepted


def _check_key(request: Request, state: ServeState) -> None:
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode("utf-8"), state.api_key.encode("utf-8")):
        raise ApiError(401, "invalid API key: send it as 'Authorization: Bearer KEY' (gptbench serve --api-key)",
                       code="invalid_api_key")


async def _read_json(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is larger than {limit} bytes (gptbench serve --max-body-bytes)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes (gptbench serve --max-body-bytes)")
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _check_model(req: CompletionRequest, state: ServeState) -> None:
    if req.model is not None and req.model != state.model:
        raise ApiError(404, f"the model '{req.model}' does not exist here; this server serves '{state.model}'", "model",
                       code="model_not_found")


def _prompt_ids(req: CompletionRequest, state: ServeState, prompt: str | list[int]) -> list[int]:
    from gptbench.backends.generate import encode_prompt

    if isinstance(prompt, list) and not all(0 <= t < state.vocab_size for t in prompt):
        raise ApiError(400, f"prompt token ids must be in [0, {state.vocab_size})", "prompt")
    try:
        ids = encode_prompt(state.tokenizer, prompt)
    except Exception as exc:  # a character outside a char vocabulary, an empty prompt without end-of-text
        raise ApiError(400, f"cannot tokenize the prompt: {exc}", "prompt") from None
    return _check_length(req, state, ids)


def _check_length(req: CompletionRequest, state: ServeState, ids: list[int]) -> list[int]:
    cap = state.limits.max_prompt_tokens or state.block_size
    if len(ids) > cap:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes at most {cap}", "prompt")
    if len(ids) + req.max_tokens > state.block_size:
        raise ApiError(400, f"this model's context is {state.block_size} tokens, but the prompt ({len(ids)}) plus "
                       f"max_tokens ({req.max_tokens}) asks for {len(ids) + req.max_tokens}; lower max_tokens", "max_tokens",
                       code="context_length_exceeded")
    return ids


def _jobs(req: CompletionRequest, prompts: list[list[int]], emit: Callable[[int, Event], None], echo: bool,
          end_ids: tuple[int, ...] = ()) -> list[Job]:
    """Choice `p * n + i` is prompt p's i-th sample (OpenAI's order); `end_ids` end a row as
    end-of-text does (a chat answer's end of turn)."""
    jobs = []
    for p, ids in enumerate(prompts):
        for i in range(req.n):
            seed = None if req.seed is None else req.seed + i  # n choices from one seed differ, reproducibly
            params = SamplingParams(temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_tokens,
                                    stop=req.stop, seed=seed, stop_token_ids=end_ids)
            k = p * req.n + i
            jobs.append(Job(ids, params, lambda ev, k=k: emit(k, ev), logprobs=req.logprobs,
                            echo_logprobs=echo and req.logprobs is not None))
    return jobs


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _generate(request: Request, state: ServeState, req: CompletionRequest, prompts: list[list[int]], kind: str,
                    end_ids: tuple[int, ...] = ()) -> Response:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    echo = kind == "text_completion" and req.echo
    jobs = _jobs(req, prompts, lambda i, ev: loop.call_soon_threadsafe(queue.put_nowait, (i, ev)), echo, end_ids)
    if not state.scheduler.submit(jobs):
        raise ApiError(429, "the server is busy (its queue is full); retry shortly", kind="rate_limit_error",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    state.requests += 1
    env = Envelope(kind, state.model)
    echo_texts = [state.tokenizer.decode(ids) for ids in prompts for _ in range(req.n)] if echo else None
    prompt_tokens = sum(len(ids) for ids in prompts)

    def cancel() -> None:
        for job in jobs:
            job.cancel.set()
        state.scheduler.wake()

    if req.stream:
        return StreamingResponse(_stream(state, req, env, queue, echo_texts, cancel, prompt_tokens), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    choices = [Choice(i) for i in range(len(jobs))]
    collect = asyncio.ensure_future(_collect(queue, choices))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collect.done():
            collect.cancel()
            cancel()
    if not collect.done() or collect.cancelled():
        return Response(status_code=499)
    if any(c.finish_reason == "error" for c in choices):
        raise ApiError(500, f"generation failed: {next(c.error for c in choices if c.error)}", kind="server_error")
    if kind == "chat.completion":
        body = [chat_choice(state.tokenizer, c, req.logprobs is not None) for c in choices]
    else:
        body = [completion_choice(state.tokenizer, c, echo_texts[c.index] if echo_texts else None, req.logprobs is not None)
                for c in choices]
    return JSONResponse(env.whole(body, usage(prompt_tokens, choices)))


async def _collect(queue: asyncio.Queue, choices: list[Choice]) -> None:
    left = len(choices)
    while left:
        i, ev = await queue.get()
        choices[i].add(ev)
        left -= ev.finish_reason is not None


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(state: ServeState, req: CompletionRequest, env: Envelope, queue: asyncio.Queue,
                  echo_texts: list[str] | None, cancel: Callable[[], None], prompt_tokens: int) -> AsyncIterator[str]:
    n = len(req.prompts) * req.n
    choices = [Choice(i) for i in range(n)]
    first = [True] * n
    left = n
    try:
        while left:
            i, ev = await queue.get()
            choices[i].add(ev)
            left -= ev.finish_reason is not None
            if ev.error is not None:
                yield _sse({"error": {"message": f"generation failed: {ev.error}", "type": "server_error", "param": None, "code": None}})
                continue
            text = echo_texts[i] + ev.text if first[i] and echo_texts is not None else ev.text
            yield _sse(env.chunk([stream_choice(state.tokenizer, env.kind, i, ev, text, req.logprobs is not None, first[i])]))
            first[i] = False
        if req.include_usage:
            yield _sse(env.chunk([], usage(prompt_tokens, choices)))
        yield "data: [DONE]\n\n"
    finally:
        if left:
            cancel()  # the client went away (or the server is stopping): free its rows now


# ---- routes ---------------------------------------------------------------------------------
async def models(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    _check_key(request, state)
    return JSONResponse({"object": "list", "data": [
        {"id": state.model, "object": "model", "created": 0, "owned_by": "gptbench"}]})


async def completions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    _check_key(request, state)
    req = parse_completion(await _read_json(request, state.limits.max_body_bytes), state.limits)
    _check_model(req, state)
    prompts = [_prompt_ids(req, state, p) for p in req.prompts]
    return await _generate(request, state, req, prompts, "text_completion")


async def chat_completions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    _check_key(request, state)
    messages, req = parse_chat(await _read_json(request, state.limits.max_body_bytes), state.limits)
    _check_model(req, state)
    if state.chat is None:
        raise ApiError(400, f"'{state.model}' has no chat template (a base model): use /v1/completions with a prompt, "
                       "or serve a run trained with --sft", "messages", code="no_chat_template")
    try:
        ids = state.chat.prompt_ids(messages)
    except UserError as exc:  # a character outside a char vocabulary, a broken stored template
        raise ApiError(400, f"cannot apply the chat template: {exc}", "messages") from None
    _check_length(req, state, ids)
    return await _generate(request, state, req, [ids], "chat.completion", state.chat.end_ids)


async def health(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    stats = state.scheduler.stats
    return JSONResponse({"status": "ok", "model": state.model, "requests": state.requests, "active": stats.active,
                         "waiting": stats.waiting})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", kind="invalid_request_error")
    return JSONResponse(err.body(), status_code=exc.status_code, headers=dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")
    return JSONResponse(err.body(), status_code=500)


def create_app(state: ServeState) -> Starlette:
    """The app; its lifespan starts the scheduler's thread and stops it (ending rows still
    going with `abort`) when the server shuts down."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, state.scheduler.stop)

    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.serve = state
    return app
