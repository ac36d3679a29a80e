"""A chat with a chat run: system prompt, multi-turn history trimmed to the context, one answer.

The prompt is the run's template applied to the history (`ChatTokenizer.prompt_ids`,
ending with `<|assistant|>`); generation stops at `<|end|>`. When the prompt and room for
the answer (`max_new_tokens`, at most half the context) outgrow the context, whole turns
are dropped from the oldest (the system prompt stays), and `trimmed` says how many
messages went, so the terminal chat and the TUI pane can say so. Used by `gptbench chat`
and the TUI's chat pane alike; it never reaches into a backend.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from gptbench.backends.sampling import SamplingParams
from gptbench.errors import UserError
from gptbench.tokenizers.chat import ChatTokenizer, Message


@dataclass
class Answer:
    """One reply: its text, generated token ids (`<|end|>` excluded) and why it ended:
    `stop` (end of turn), `length`, or `cancelled`."""

    text: str
    tokens: list[int]
    finish_reason: str
    trimmed: int = 0  # history messages dropped to fit this prompt
    tokens_per_sec: float = 0.0

    @property
    def generation_tokens(self) -> int:
        return len(self.tokens)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "finish_reason": self.finish_reason}


@dataclass
class ChatHistory:
    """The conversation so far (without the system prompt, which is kept apart)."""

    tokenizer: ChatTokenizer
    block_size: int
    system: str = ""
    messages: list[Message] = field(default_factory=list)

    def conversation(self) -> list[Message]:
        return ([Message("system", self.system)] if self.system.strip() else []) + self.messages

    def prompt(self, reserve: int) -> tuple[list[int], int]:
        """The prompt ids with `reserve` tokens of room left in the context, dropping whole
        turns from the oldest; returns (ids, messages dropped). UserError if the newest
        message alone (with the system prompt) does not fit."""
        budget = self.block_size - min(reserve, self.block_size // 2)
        dropped = 0
        while True:
            ids = self.tokenizer.prompt_ids(self.conversation())
            if len(ids) <= budget:
                return ids, dropped
            if len(self.messages) <= 1:
                raise UserError(f"the message and system prompt take {len(ids)} tokens, more than the {budget} the "
                                f"{self.block_size}-token context leaves for them; shorten them or lower --max-new-tokens")
            self.messages.pop(0)  # the oldest turn: a user message, then its answer
            dropped += 1
            while self.messages and self.messages[0].role != "user" and len(self.messages) > 1:
                self.messages.pop(0)
                dropped += 1

    def ask(self, backend: Any, text: str, params: SamplingParams, *, use_cache: bool = True,
            cancel: threading.Event | None = None, write: Callable[[str], None] | None = None) -> Answer:
        """Add the user's `text`, stream the model's answer (through `write`), keep it."""
        from gptbench.backends.generate import stream_generate

        if not text.strip():
            raise UserError("empty message: type some text")
        self.tokenizer.encode(text)  # UserError (a char vocabulary's unknown characters) before the history changes
        saved = list(self.messages)
        self.messages.append(Message("user", text))
        try:
            ids, trimmed = self.prompt(params.max_new_tokens)
        except UserError:
            self.messages = saved
            raise
        params = dataclasses.replace(params, stop_token_ids=(*params.stop_token_ids, self.tokenizer.end_id))
        parts, tokens, last = [], [], None
        for r in stream_generate(backend, self.tokenizer, ids, params, use_cache=use_cache, cancel=cancel):
            if r.text:
                parts.append(r.text)
                if write:
                    write(r.text)
            if r.token is not None and r.token != self.tokenizer.end_id and r.finish_reason != "eos":
                tokens.append(r.token)
            last = r
        reason = "stop" if last is None or last.finish_reason in ("eos", "stop") else last.finish_reason
        answer = Answer("".join(parts), tokens, reason, trimmed, last.tokens_per_sec if last else 0.0)
        self.messages.append(Message("assistant", answer.text))
        return answer

    def regenerate(self, backend: Any, params: SamplingParams, **kw: Any) -> Answer:
        """Drop the last answer and ask its question again."""
        if len(self.messages) < 2 or self.messages[-1].role != "assistant":
            raise UserError("nothing to regenerate yet: ask something first")
        self.messages.pop()
        question = self.messages.pop().content
        return self.ask(backend, question, params, **kw)
