"""The chat transcript: turns in a scrolling history, the prompt, and reply generation.

A turn is a prompt, its reply and how the reply was made (`ReplySettings`, token count,
speed, finish reason). Sending posts `Transcript.Submitted`; the screen answers with
`start_reply()` (a model and settings) or `show_error()`. Generation runs in a thread
worker that streams text deltas back as messages, batched to at most ~30 UI updates per
second so a fast model never floods the event loop; `cancel()` sets the
`threading.Event` that `stream_generate` checks every token.

Two modes, by the loaded model's tokenizer (the line above the prompt says which): a chat
run (trained with `--sft`) is in chat mode, where the turns so far and the system field
become a prompt through the run's template (`gptbench.chat.session.ChatHistory`: oldest
turns dropped when they outgrow the context, and the reply's line says so), and the reply
stops at the end of its turn; a base model is in completion mode, continuing the text.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

from gptbench.errors import UserError
from gptbench.tui.widgets.sampling import ReplySettings

if TYPE_CHECKING:
    from gptbench.loading import LoadedModel
    from gptbench.tokenizers.base import Tokenizer

STREAM_INTERVAL_S = 1 / 30
EMPTY_HINT = ("Pick a run and a checkpoint, type a prompt and press Enter.\n"
              "The reply streams in; Esc cancels it. Sampling settings apply to the next reply.")


@dataclass
class Turn:
    prompt: str
    settings: ReplySettings
    reply: str = ""
    finish_reason: str | None = None  # None while the reply streams
    error: str = ""
    tokens: int = 0
    tokens_per_sec: float = 0.0
    time_to_first_token: float = 0.0
    gen_id: int = -1  # the generation currently writing this turn's reply
    trimmed: int = 0  # chat mode: oldest messages left out of this reply's prompt

    @property
    def meta(self) -> str:
        """The line under a finished reply: length, speed, why it ended, how it was made."""
        if self.finish_reason is None:
            return ""
        reason = "end of turn" if self.finish_reason == "eos" else self.finish_reason
        trimmed = f" · history trimmed: {self.trimmed} oldest messages left out" if self.trimmed else ""
        return (f"{self.tokens} tokens · {self.tokens_per_sec:,.1f} tok/s · finish: {reason}{trimmed}\n"
                f"{self.settings.describe()}")


class TurnView(Vertical, can_focus=True):
    """One prompt and its reply. Focus it (Tab / click) and press y to copy the reply."""

    BINDINGS = [Binding("y", "copy", "Copy reply", show=False)]

    def __init__(self, uid: int, turn: Turn) -> None:
        super().__init__(classes="turn", id=f"turn-{uid}")
        self.turn = turn
        # children exist before mounting, so a reply can stream in while the view mounts
        self.prompt_view = Static(Text.assemble(("› ", "bold"), (turn.prompt, "bold")), classes="turn-prompt")
        self.reply_view = Static(Text(turn.reply), classes="turn-reply")
        self.meta_view = Static(Text(turn.meta, style="dim"), classes="turn-meta")

    def compose(self) -> ComposeResult:
        yield self.prompt_view
        yield self.reply_view
        yield self.meta_view

    def refresh_turn(self) -> None:
        reply = Text(self.turn.reply)
        if self.turn.finish_reason is None and not self.turn.error:
            reply.append("▌", style="blink")
        self.reply_view.update(reply)
        meta = Text(self.turn.error, style="red") if self.turn.error else Text(self.turn.meta, style="dim")
        self.meta_view.update(meta)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.turn.reply)
        self.notify(f"Copied reply ({len(self.turn.reply)} characters)")


class History(VerticalScroll, can_focus=False):
    """The scrolling turns. Not focusable (so Tab order never depends on whether it
    scrolls), and anchored to the end while the newest reply streams or the terminal is
    resized, until the user scrolls up."""

    def on_mount(self) -> None:
        self.anchor()


class Transcript(Vertical):
    class Submitted(Message):
        """The user sent `prompt` (or asked to regenerate the last reply)."""

        def __init__(self, prompt: str, regenerate: bool = False) -> None:
            super().__init__()
            self.prompt, self.regenerate = prompt, regenerate

    class ReplyDelta(Message):
        """New reply text from generation `gen_id` (deltas are never dropped or merged)."""

        def __init__(self, gen_id: int, text: str) -> None:
            super().__init__()
            self.gen_id, self.text = gen_id, text

    class ReplyDone(Message):
        def __init__(self, gen_id: int, finish_reason: str, tokens: int = 0, tokens_per_sec: float = 0.0, ttft: float = 0.0,
                     error: str = "") -> None:
            super().__init__()
            self.gen_id, self.finish_reason, self.tokens = gen_id, finish_reason, tokens
            self.tokens_per_sec, self.ttft, self.error = tokens_per_sec, ttft, error

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.turns: list[Turn] = []
        self.views: list[TurnView] = []  # parallel to `turns`
        self.tokenizer: Tokenizer | None = None  # the loaded model's, for checking prompts as they are typed
        self.generating: int | None = None  # gen_id of the reply streaming now
        self.cancel_event = threading.Event()
        self._gen_counter = 0

    def compose(self) -> ComposeResult:
        with History(id="chat-history"):
            yield Static(EMPTY_HINT, id="chat-empty")
        yield Static("", id="prompt-error")
        yield Static("mode: completion (the model continues your text)", id="chat-mode")
        system = Input(placeholder="System prompt (chat runs)", id="system")
        system.display = False
        yield system
        yield Input(placeholder="Prompt — Enter sends, Esc cancels a reply", id="prompt")

    @property
    def chat_mode(self) -> bool:
        return self.tokenizer is not None and hasattr(self.tokenizer, "end_id")

    @property
    def prompt_input(self) -> Input:
        return self.query_one("#prompt", Input)

    # ---- the prompt ---------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: "Tokenizer | None") -> None:
        self.tokenizer = tokenizer
        chat = self.chat_mode
        self.query_one("#chat-mode", Static).update(
            "mode: chat (the run's template; Ctrl+R regenerates)" if chat else "mode: completion (the model continues your text)")
        self.query_one("#system", Input).display = chat
        self.check_prompt()

    def check_prompt(self, prompt: str | None = None) -> str:
        """Inline error for text the model's tokenizer cannot encode ('' if fine)."""
        if prompt is None:
            prompt = self.prompt_input.value
        message = ""
        if prompt and self.tokenizer is not None:
            try:
                self.tokenizer.encode(prompt)
            except UserError as exc:
                message = str(exc)
        self.show_error(message)
        return message

    def show_error(self, message: str) -> None:
        err = self.query_one("#prompt-error", Static)
        err.update(Text(f"✖ {message}", style="bold red") if message else "")
        err.set_class(bool(message), "visible")

    @on(Input.Changed, "#prompt")
    def _prompt_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.check_prompt(event.value)

    @on(Input.Submitted, "#prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value:
            self.post_message(self.Submitted(event.value))

    def regenerate(self) -> bool:
        """Ask for the last reply again (with the settings in force now)."""
        if not self.turns:
            return False
        self.post_message(self.Submitted(self.turns[-1].prompt, regenerate=True))
        return True

    def chat_context(self, prompt: str, upto: int, lm: "LoadedModel", settings: ReplySettings) -> tuple[list[int], int]:
        """Chat mode: the template's prompt ids for the turns before `upto` plus `prompt`,
        and how many old messages were left out to fit the context (UserError if none fits)."""
        from gptbench.chat.session import ChatHistory
        from gptbench.tokenizers.chat import Message

        messages = [Message(role, text) for t in self.turns[:upto] if not t.error
                    for role, text in (("user", t.prompt), ("assistant", t.reply))]
        history = ChatHistory(lm.tokenizer, lm.backend.config.block_size, self.query_one("#system", Input).value,  # type: ignore[arg-type]
                              messages + [Message("user", prompt)])
        return history.prompt(settings.params.max_new_tokens)

    def context(self, prompt: str, upto: int, continue_transcript: bool) -> str:
        """What the model continues: the prompt, or the conversation before turn `upto` plus it."""
        if not continue_transcript:
            return prompt
        return "".join(t.prompt + t.reply for t in self.turns[:upto]) + prompt

    # ---- generation ---------------------------------------------------------------------------
    def start_reply(self, prompt: str, lm: "LoadedModel", settings: ReplySettings, regenerate: bool = False) -> bool:
        if self.generating is not None:
            self.notify("A reply is still streaming; press Esc to cancel it first", severity="warning")
            return False
        index = len(self.turns) - 1 if regenerate else len(self.turns)
        if self.check_prompt(prompt if self.chat_mode else self.context(prompt, index, settings.continue_transcript)):
            return False
        context: "str | list[int]" = self.context(prompt, index, settings.continue_transcript)
        trimmed = 0
        if self.chat_mode:
            import dataclasses

            try:
                context, trimmed = self.chat_context(prompt, index, lm, settings)
            except UserError as exc:
                self.show_error(str(exc))
                return False
            stops = (*settings.params.stop_token_ids, getattr(lm.tokenizer, "end_id"))
            settings = dataclasses.replace(settings, params=dataclasses.replace(settings.params, stop_token_ids=stops))
        self.query_one("#chat-empty").display = False
        history = self.query_one(History)
        if regenerate:
            turn = self.turns[index]
            turn.settings, turn.reply, turn.finish_reason, turn.error = settings, "", None, ""
            turn.trimmed = trimmed
            view = self.views[index]
        else:
            turn = Turn(prompt, settings, trimmed=trimmed)
            self._gen_counter += 1
            view = TurnView(self._gen_counter, turn)
            self.turns.append(turn)
            self.views.append(view)
            history.mount(view)
            self.prompt_input.value = ""
        view.refresh_turn()
        history.anchor()  # follow the new reply to its end
        self._gen_counter += 1
        turn.gen_id = self.generating = self._gen_counter
        self.cancel_event = threading.Event()
        self._generate(turn.gen_id, lm, context, settings, self.cancel_event)
        return True

    @work(thread=True, exclusive=True, group="chat-gen", exit_on_error=False)
    def _generate(self, gen_id: int, lm: "LoadedModel", prompt: "str | list[int]", settings: ReplySettings, cancel: threading.Event) -> None:
        from gptbench.backends.generate import stream_generate

        pending: list[str] = []
        last_post = 0.0
        final = None
        try:
            for r in stream_generate(lm.backend, lm.tokenizer, prompt, settings.params, use_cache=settings.use_cache, cancel=cancel):
                pending.append(r.text)
                now = time.perf_counter()
                if r.finish_reason is not None or now - last_post >= STREAM_INTERVAL_S:
                    if any(pending):
                        self.post_message(self.ReplyDelta(gen_id, "".join(pending)))
                    pending.clear()
                    last_post = now
                final = r
        except Exception as exc:  # a user error (e.g. unencodable text) or a backend failure
            if any(pending):
                self.post_message(self.ReplyDelta(gen_id, "".join(pending)))
            msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.post_message(self.ReplyDone(gen_id, "error", error=msg))
            return
        if final is None:
            self.post_message(self.ReplyDone(gen_id, "length"))
            return
        self.post_message(self.ReplyDone(gen_id, final.finish_reason or "length", final.generation_tokens, final.tokens_per_sec,
                                         final.time_to_first_token))

    def _turn_of(self, gen_id: int) -> int | None:
        return next((i for i, t in enumerate(self.turns) if t.gen_id == gen_id), None)

    @on(ReplyDelta)
    def _reply_delta(self, msg: ReplyDelta) -> None:
        index = self._turn_of(msg.gen_id)
        if index is None:
            return  # the turn was cleared while streaming
        self.turns[index].reply += msg.text
        self.views[index].refresh_turn()

    @on(ReplyDone)
    def _reply_done(self, msg: ReplyDone) -> None:
        if self.generating == msg.gen_id:
            self.generating = None
        index = self._turn_of(msg.gen_id)
        if index is None:
            return
        turn = self.turns[index]
        turn.finish_reason, turn.error = msg.finish_reason, msg.error
        turn.tokens, turn.tokens_per_sec, turn.time_to_first_token = msg.tokens, msg.tokens_per_sec, msg.ttft
        self.views[index].refresh_turn()

    # ---- turn actions ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the streaming reply (it ends with finish reason `cancelled`)."""
        if self.generating is not None:
            self.cancel_event.set()

    def copy_reply(self, view: TurnView | None = None) -> bool:
        """Copy `view`'s reply, or the last one."""
        view = view or (self.views[-1] if self.views else None)
        if view is None:
            return False
        view.action_copy()
        return True

    def clear(self) -> None:
        if self.generating is not None:
            self.cancel_event.set()
            self.generating = None
        self.turns.clear()
        for view in self.views:
            view.remove()
        self.views.clear()
        self.query_one("#chat-empty").display = True
