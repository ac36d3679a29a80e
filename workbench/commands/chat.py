"""`gptbench chat`: talk to a model in the terminal, without the TUI.

Two modes, by the run's tokenizer. A chat run (trained with `--sft`) is in chat mode: each
line is a user turn, the prompt is the run's template over the history and an optional
system prompt (`/system`, `--system`), answers stop at the end-of-turn token and the oldest
turns are dropped when the history outgrows the context (`gptbench.chat.session`). A base
model is in completion mode: one running transcript that each line is appended to and the
model continues; the engine crops it from the left to the context window. `/reset` clears
either. `--message` (repeatable) answers each message in turn and exits; `--json` prints
each answer as `{"text", "tokens", "finish_reason"}`.

Replies are generated on a worker thread and streamed; the main thread only waits, so
Ctrl-C during a reply sets the cancel event (the reply stops within one token) instead of
killing the program, and the reply's closing stats line on stderr says `cancelled`, once.
Ctrl-C at the prompt is ignored; Ctrl-D (end of input) exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import queue
import sys
import threading
from typing import TYPE_CHECKING, Callable

from gptbench.backends.knobs import Knob
from gptbench.backends.sampling import SAMPLING_KNOBS, SamplingParams
from gptbench.commands.sampling_args import add_model_args, add_sampling_args, params_from_args
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.loading import LoadedModel

PROMPT = "> "

# /command -> the knob it sets; each knob has several spellings (/temp, /temperature, /t).
SLASH_KNOBS: dict[str, Knob] = {name: k for k in SAMPLING_KNOBS for name in k.commands}


def _help_line(usage: str, text: str) -> str:
    return f"  {usage:<17}{text}"


def _knob_help(k: Knob) -> str:
    """`/temp X  temperature: 0 = greedy` (the knob named where the command abbreviates it)."""
    text = k.help if k.commands[0] == k.name else f"{k.name.replace('_', ' ')}: {k.help}"
    if k.repeatable:
        text += f"; adds one, /{k.commands[0]} alone clears them"
    return _help_line(f"/{k.commands[0]} {k.arg}", text)


HELP = "\n".join([
    "commands:",
    *(_knob_help(k) for k in SAMPLING_KNOBS if k.commands),
    _help_line("/cache on|off", "KV cache (off recomputes the whole context every token)"),
    _help_line("/params", "show the sampling parameters"),
    _help_line("/history", "show the transcript"),
    _help_line("/system TEXT", "chat runs: set the system prompt (alone: clear it)"),
    _help_line("/retry", "chat runs: regenerate the last answer"),
    _help_line("/reset", "clear the transcript"),
    _help_line("/help", "this help"),
    _help_line("/quit", "exit (or Ctrl-D); Ctrl-C stops a reply"),
])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Interactive generation: each line continues one running transcript. Type /help for commands.",
    )
    add_model_args(p)
    add_sampling_args(p)
    g = p.add_argument_group("chat")
    g.add_argument("--system", default="", help="system prompt (chat runs)")
    g.add_argument("--message", action="append", default=[], help="answer this message and exit (repeatable: turns in order)")
    g.add_argument("--json", action="store_true", help="with --message: print each answer as {\"text\", \"tokens\", \"finish_reason\"}")
    p.set_defaults(func=run_chat)


@dataclasses.dataclass
class ChatSession:
    """Transcript and settings; `command()` and `reply()` are the two things a line does."""

    loaded: "LoadedModel"
    params: SamplingParams
    use_cache: bool = True
    transcript: list[int] = dataclasses.field(default_factory=list)
    history: "ChatHistory | None" = None  # chat mode (a chat run's tokenizer); None: completion mode

    @classmethod
    def open(cls, loaded: "LoadedModel", params: SamplingParams, use_cache: bool = True, system: str = "") -> "ChatSession":
        from gptbench.chat.session import ChatHistory
        from gptbench.tokenizers.chat import is_chat

        session = cls(loaded, params, use_cache)
        if is_chat(loaded.tokenizer):
            session.history = ChatHistory(loaded.tokenizer, loaded.backend.config.block_size, system)  # type: ignore[arg-type]
        elif system:
            raise UserError(f"--system needs a chat run (trained with --sft); {loaded.source} is a base model in completion mode")
        return session

    @property
    def mode(self) -> str:
        return "chat" if self.history is not None else "completion"

    def describe(self) -> str:
        p = self.params
        return (
            f"temperature={p.temperature} top_k={p.top_k} top_p={p.top_p} min_p={p.min_p} "
            f"repetition_penalty={p.repetition_penalty} window={p.repetition_window} "
            f"max_new_tokens={p.max_new_tokens} seed={p.seed} stop={list(p.stop)!r} cache={'on' if self.use_cache else 'off'}"
        )

    def command(self, line: str) -> str | None:
        """Run a /command; return the text to print, or None to quit. UserError on bad input."""
        name, _, value = line[1:].strip().partition(" ")
        name, value = name.lower(), value.strip()
        if name in ("quit", "exit", "q"):
            return None
        if name in ("help", "h", "?"):
            return HELP
        if name == "reset":
            self.transcript = []
            if self.history is not None:
                self.history.messages = []
            return "[transcript cleared]"
        if name in ("system", "retry") and self.history is None:
            raise UserError(f"/{name} needs a chat run (trained with --sft); this one is in completion mode")
        if name == "system":
            self.history.system = value  # type: ignore[union-attr]
            return f"[system prompt: {value}]" if value else "[system prompt cleared]"
        if name == "params":
            return self.describe()
        if name == "history" and self.history is not None:
            conv = self.history.conversation()
            return "\n".join(f"{m.role}: {m.content}" for m in conv) if conv else "[transcript is empty]"
        if name == "history":
            return self.loaded.tokenizer.decode(self.transcript) if self.transcript else "[transcript is empty]"
        if name == "cache":
            if value.lower() not in ("on", "off"):
                raise UserError(f"/cache takes on or off, got {value!r}")
            self.use_cache = value.lower() == "on"
            return f"cache={value.lower()}"
        if name not in SLASH_KNOBS:
            raise UserError(f"unknown command /{name}; type /help for the list")
        return self.set_knob(name, SLASH_KNOBS[name], value)

    def set_knob(self, command: str, k: Knob, value: str) -> str:
        """`/name value` sets a knob (a repeatable one gains a value; alone, it is cleared);
        `/name` alone shows it. SamplingParams validates, so a bad value changes nothing."""
        if not value and not k.repeatable:
            return f"{k.name}={getattr(self.params, k.name)}"
        try:
            parsed = k.parse(value) if value else None
        except ValueError:
            raise UserError(f"/{command} needs {k.kind}, got {value!r}") from None
        if k.repeatable:
            parsed = (*getattr(self.params, k.name), parsed) if value else ()
        self.params = dataclasses.replace(self.params, **{k.name: parsed})  # validates
        shown = getattr(self.params, k.name)
        return f"{k.name}={list(shown)!r}" if k.repeatable else f"{k.name}={shown}"

    def reply(self, line: str, write: Callable[[str], None], cancel: threading.Event):
        """Append `line` to the transcript, stream the continuation through `write`, append it."""
        from gptbench.backends.generate import stream_generate

        if self.history is not None:
            if line.strip().lower() == "/retry":
                answer = self.history.regenerate(self.loaded.backend, self.params, use_cache=self.use_cache, cancel=cancel, write=write)
            else:
                answer = self.history.ask(self.loaded.backend, line, self.params, use_cache=self.use_cache, cancel=cancel, write=write)
            write("\n")
            return answer
        tok = self.loaded.tokenizer
        user = tok.encode(line + "\n")  # UserError (unknown characters) leaves the transcript as it was
        context = self.transcript + user  # the engine crops it to the last block_size tokens
        if not context:
            raise UserError("empty prompt: type some text")
        parts: list[str] = []
        tokens: list[int] = []
        last = None
        for r in stream_generate(self.loaded.backend, tok, context, self.params, use_cache=self.use_cache, cancel=cancel):
            if r.text:
                write(r.text)
                parts.append(r.text)
            if r.token is not None and r.finish_reason != "eos":
                tokens.append(r.token)
            last = r
        text = "".join(parts)
        if last is not None and last.finish_reason == "stop":
            tokens = _encode_or(tok, text, tokens)  # drop the stop string's tokens
        if not text.endswith("\n"):
            write("\n")
            tokens = tokens + _encode_or(tok, "\n", [])
        # Keep a few windows of history: the engine only ever reads the last block_size.
        self.transcript = (context + tokens)[-4 * self.loaded.backend.config.block_size :]
        return last


def _encode_or(tok, text: str, fallback: list[int]) -> list[int]:
    try:
        return tok.encode(text)
    except UserError:
        return fallback


def _reply_in_worker(session: ChatSession, line: str, out) -> None:
    """Generate on a worker thread; Ctrl-C here cancels the reply, not the program."""
    q: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            last = session.reply(line, lambda s: q.put(("text", s)), cancel)
            q.put(("done", last))
        except BaseException as exc:  # handed to the main thread
            q.put(("error", exc))

    worker = threading.Thread(target=work, name="gptbench-chat-reply", daemon=True)
    worker.start()
    last = None
    while True:
        try:
            try:
                kind, item = q.get(timeout=0.1)
            except queue.Empty:
                if not worker.is_alive() and q.empty():  # only if "done" was lost to a Ctrl-C
                    break
                continue
            if kind == "text":
                out.write(item)
                out.flush()
            elif kind == "error":
                raise item
            else:
                last = item
                break
        except KeyboardInterrupt:
            cancel.set()
    worker.join()
    # one line on stderr says how the reply ended (stdout keeps only the transcript)
    if last is not None:
        note = ", cancelled" if last.finish_reason == "cancelled" else ""
        if getattr(last, "trimmed", 0):
            note += f", history trimmed: the {last.trimmed} oldest messages no longer fit the context"
        print(f"[{last.generation_tokens} tokens, {last.tokens_per_sec:.1f} tok/s{note}]", file=sys.stderr, flush=True)
    elif cancel.is_set():
        print("[cancelled]", file=sys.stderr, flush=True)


def _answer_messages(session: ChatSession, messages: list[str], as_json: bool) -> int:
    """`--message`: answer each message in turn (chat mode: as turns of one conversation;
    completion mode: each continued on its own), print the answers, exit."""
    import json

    from gptbench.backends.generate import generate
    from gptbench.chat.session import Answer

    for text in messages:
        if session.history is not None:
            answer = session.history.ask(session.loaded.backend, text, session.params, use_cache=session.use_cache)
        else:
            if not text:
                raise UserError("empty --message: give it some text")
            r = generate(session.loaded.backend, session.loaded.tokenizer, text, session.params, use_cache=session.use_cache)
            answer = Answer(r.text, r.tokens, "stop" if r.finish_reason == "eos" else r.finish_reason)
        print(json.dumps(answer.to_json(), ensure_ascii=False) if as_json else answer.text, flush=True)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    params = params_from_args(args)
    loaded = load_model(
        RunStore(args.runs_dir), run=args.run, checkpoint=args.checkpoint, weights=args.weights,
        tokenizer=args.tokenizer, backend=args.backend, device=args.device, strict=args.strict,
    )
    if loaded.notice:  # a damaged newest checkpoint was passed over: say so, once
        print(f"gptbench: warning: {loaded.notice}", file=sys.stderr, flush=True)
    session = ChatSession.open(loaded, params, use_cache=args.kv_cache, system=args.system)
    if args.message:
        return _answer_messages(session, args.message, args.json)
    out = sys.stdout
    print(f"chatting with {loaded.source} in {session.mode} mode ({loaded.backend.describe()}, context "
          f"{loaded.backend.config.block_size} tokens); /help for commands, Ctrl-D to exit", flush=True)
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D or /quit to exit)\n")
            continue
        if not line.strip():
            continue
        try:
            if line.startswith("/") and not (line.strip().lower() == "/retry" and session.history is not None):
                text = session.command(line)
                if text is None:
                    return 0
                print(text, flush=True)
            else:
                _reply_in_worker(session, line, out)
        except UserError as exc:
            print(f"error: {exc}", flush=True)
