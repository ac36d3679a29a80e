"""Chat turns on any tokenizer: four special tokens after its vocabulary, and the template.

A chat run's tokenizer is its base tokenizer (char, byte, trained BPE or GPT-2) with
`<|system|>`, `<|user|>`, `<|assistant|>` and `<|end|>` appended as ids `V..V+3` (Phi-3's
names). One conversation is, token for token,

    <|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>

with each message's content encoded as plain text by the base tokenizer (so a char
vocabulary needs no role names or newlines). The same format is written once as a Jinja
string in Hugging Face's `chat_template` form (`CHAT_TEMPLATE`), stored with the run in
tokenizer.json and exported to tokenizer_config.json, so `apply_chat_template` in any
client gives exactly these ids. Special tokens are never produced from text.

Special-token text inside a message (`<|end|>`, `<|user|>`, ..., or `<|endoftext|>`) is
refused, one line naming the message, rather than encoded. The alternatives disagree:
Hugging Face's `apply_chat_template` renders the template to text and its tokenizer then
reads every added special token out of that text, so `a<|end|>b` in a message becomes a
real end of turn there (a prompt injection, and a training row whose mask no longer follows
the turns), while encoding contents as plain text, as gptbench does, gives other ids. Neither
can be made to match the other for every client (transformers, mlx_lm, llama.cpp all split
specials by default), so such content has no single meaning; refusing it keeps gptbench's
ids and the exported tokenizer's equal for everything accepted. Data files are checked
against the four turn tokens and `<|endoftext|>` whatever the tokenizer (a file means the
same to every run); a chat prompt against its own tokenizer's special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
RESERVED_TEXT = (*CHAT_TOKENS, "<|endoftext|>")  # refused inside a message of a data file
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


def refuse_special_text(message: Message, where: str, reserved: Sequence[str] = RESERVED_TEXT) -> None:
    """UserError if `message` holds the text of one of the `reserved` special tokens."""
    found = next((t for t in reserved if t in message.content), None)
    if found is not None:
        raise UserError(f"{where + ': ' if where else ''}the {message.role} message holds {found!r}, the text of a special token, "
                        f"which Hugging Face's chat template would read as that token; remove or rewrite it")


class ChatTokenizer(Tokenizer):
    """A base tokenizer plus the four turn tokens; `kind` and `spec` are the base's."""

    def __init__(self, base: Tokenizer, template: str = CHAT_TEMPLATE):
        if isinstance(base, ChatTokenizer):
            base = base.base
        self.base = base
        self.kind = base.kind
        self.template = template
        self.special = {tok: base.vocab_size + i for i, tok in enumerate(CHAT_TOKENS)}
        self._names = {i: tok for tok, i in self.special.items()}
        self._reserved: tuple[str, ...] | None = None

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(CHAT_TOKENS)

    @property
    def eot_id(self) -> int | None:
        return self.base.eot_id

    @property
    def end_id(self) -> int:
        """`<|end|>`: the end of a turn, where a chat answer stops."""
        return self.special[END]

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(self.special.values())

    @property
    def reserved_text(self) -> tuple[str, ...]:
        """The special tokens an exported tokenizer reads out of text: the turn tokens and
        the base's own (`<|endoftext|>` of GPT-2 and trained BPE)."""
        if self._reserved is None:
            base = self.base.to_json().get("special_tokens") or {}
            self._reserved = (*CHAT_TOKENS, *sorted(t for t in base if isinstance(t, str)))
        return self._reserved

    def role_id(self, role: str) -> int:
        return self.special[f"<|{role}|>"]

    @property
    def spec(self) -> str:
        return self.base.spec

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def encode_arrays(self, texts: Sequence[str], *, num_threads: int = 1) -> list[np.ndarray]:
        return self.base.encode_arrays(texts, num_threads=num_threads)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        out, run = [], []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i in self._names:
                out.append(self.base.decode_bytes(run) + self._names[i].encode())
                run = []
            else:
                run.append(i)
        out.append(self.base.decode_bytes(run))
        return b"".join(out)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- conversations ----------------------------------------------------------------
    def encode_message(self, message: Message) -> list[int]:
        return [self.role_id(message.role), *self.base.encode(message.content), self.end_id]

    def encode_conversation(self, messages: Sequence[Message], *, train_on_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Ids of a whole conversation and which of them are trained as targets: every
        assistant message's content and its `<|end|>` (all but the first token with
        `train_on_prompt`). Returns (ids int64 [N], trained bool [N])."""
        ids: list[int] = []
        trained: list[bool] = []
        for i, m in enumerate(messages):
            refuse_special_text(m, f"message {i + 1}", self.reserved_text)
            piece = self.encode_message(m)
            ids.extend(piece)
            train = train_on_prompt or m.role == "assistant"
            trained.extend([False] + [train] * (len(piece) - 1))  # the role token itself is the prompt's
        mask = np.array(trained, dtype=bool)
        if train_on_prompt:
            mask[1:] = True
        return np.array(ids, dtype=np.int64), mask

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        """The stored template applied to `messages`, as Hugging Face's `apply_chat_template`
        renders it (a sandboxed Jinja environment with trimmed blocks)."""
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            return env.from_string(self.template).render(
                messages=[{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=add_generation_prompt
            )
        except TemplateError as exc:
            raise UserError(f"the run's chat template failed: {exc}; restore the template in tokenizer.json") from None

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The ids of `messages` through the stored template, ending with `<|assistant|>`:
        the rendered text split at the special tokens, the rest encoded as plain text.
        UserError if a message holds a special token's text (see the module's docstring)."""
        import re

        for m in messages:
            refuse_special_text(m, "", self.reserved_text)
        text = self.render(messages, add_generation_prompt=True)
        ids: list[int] = []
        for part in re.split("(" + "|".join(re.escape(t) for t in CHAT_TOKENS) + ")", text):
            if part in self.special:
                ids.append(self.special[part])
            elif part:
                ids.extend(self.base.encode(part))
        return ids

    # -- persistence ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {**self.base.to_json(), "vocab_size": self.vocab_size,
                "chat": {"tokens": dict(self.special), "template": self.template}}

    def save(self, directory: Path) -> None:
        from gptbench.fsutil import atomic_write_json

        self.base.save(directory)  # side files (BPE ranks) first; tokenizer.json is rewritten whole
        atomic_write_json(Path(directory) / "tokenizer.json", self.to_json())

    @classmethod
    def from_json(cls, base: Tokenizer, chat: Any, where: Path) -> "ChatTokenizer":
        if not isinstance(chat, dict) or not isinstance(chat.get("template"), str) or not isinstance(chat.get("tokens"), dict):
            raise UserError(f"{where} has a malformed `chat` entry; re-create the run's tokenizer")
        tok = cls(base, chat["template"])
        if chat["tokens"] != tok.special:
            raise UserError(f"{where}: its chat token ids {chat['tokens']} do not follow its vocabulary; re-create the run's tokenizer")
        return tok


def with_chat_tokens(tokenizer: Tokenizer) -> ChatTokenizer:
    """`tokenizer` with the turn tokens (itself when it has them already)."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)


def is_chat(tokenizer: Any) -> bool:
    return isinstance(tokenizer, ChatTokenizer)
