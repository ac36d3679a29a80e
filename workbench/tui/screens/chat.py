"""Chat with a trained checkpoint: streamed replies, sampling controls, history.

The models are base language models, so a turn is a completion of the prompt (with
"continue transcript" on, of the whole conversation so far plus the prompt). Loading and
generation run in thread workers; the generation worker streams text deltas back as
messages, batched to at most ~30 UI updates per second so a fast model never floods the
event loop. Esc sets the `threading.Event` that `stream_generate` checks every token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.validation import Integer, Number
from textual.widgets import Footer, Header, Input, Label, Select, Static, Switch

from gptbench.errors import UserError
from gptbench.runstore import Run, RunSummary
from gptbench.tui.widgets.form import Field, input_error

if TYPE_CHECKING:
    from gptbench.backends.sampling import SamplingParams
    from gptbench.loading import LoadedModel
    from gptbench.tui.app import GPTBenchApp

STREAM_INTERVAL_S = 1 / 30

# (id, label, default, validator, converter)
SAMPLING_FIELDS: list[tuple[str, str, str, Any, Any]] = [
    ("temperature", "Temperature", "0.8", Number(minimum=0, failure_description="temperature must be ≥ 0 (0 = greedy)"), float),
    ("top_k", "Top-k", "0", Integer(minimum=0, failure_description="top-k must be an integer ≥ 0 (0 = off)"), int),
    ("top_p", "Top-p", "1.0", Number(minimum=0, maximum=1, failure_description="top-p must be in (0, 1] (1 = off)"), float),
    ("min_p", "Min-p", "0.0", Number(minimum=0, maximum=0.999, failure_description="min-p must be in [0, 1) (0 = off)"), float),
    ("repetition_penalty", "Rep. penalty", "1.0", Number(minimum=0.01, failure_description="repetition penalty must be > 0 (1 = off)"), float),
    ("max_new_tokens", "Max tokens", "200", Integer(minimum=1, maximum=100_000, failure_description="max tokens must be an integer ≥ 1"), int),
    ("seed", "Seed", "", Integer(failure_description="seed must be an integer (blank = random)"), int),
]


@dataclass
class Turn:
    prompt: str
    reply: str = ""
    meta: str = ""
    finish_reason: str | None = None
    error: str = ""
    gen_id: int = -1  # the generation currently writing this turn's reply
    extra: dict = field(default_factory=dict)


class ReplyDelta(Message):
    """New reply text from generation `gen_id` (deltas are never dropped or merged)."""

    def __init__(self, gen_id: int, text: str) -> None:
        super().__init__()
        self.gen_id, self.text = gen_id, text


class ReplyDone(Message):
    def __init__(self, gen_id: int, finish_reason: str, tokens: int, tokens_per_sec: float, ttft: float, error: str = "") -> None:
        super().__init__()
        self.gen_id, self.finish_reason, self.tokens = gen_id, finish_reason, tokens
        self.tokens_per_sec, self.ttft, self.error = tokens_per_sec, ttft, error


class TurnView(Vertical, can_focus=True):
    """One prompt and its reply. Focus it (Tab / click) and press y to copy the reply."""

    BINDINGS = [Binding("y", "copy", "Copy reply")]

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


class ChatScreen(Screen):
    TITLE = "gptbench"
    SUB_TITLE = "Chat"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel reply"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+y", "copy_last", "Copy reply"),
        Binding("ctrl+l", "clear", "Clear"),
        Binding("ctrl+b", "toggle_sidebar", "Settings"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[Turn] = []
        self.views: list[TurnView] = []  # parallel to `turns`
        self.model: LoadedModel | None = None
        self.model_key: tuple[str, str] | None = None
        self._loading_key: tuple[str, str] | None = None
        self.generating: int | None = None  # gen_id of the reply streaming now
        self.cancel_event = threading.Event()
        self._gen_counter = 0
        self._run_names: list[str] = []
        self._ckpt_steps: dict[str, list[int]] = {}

    @property
    def gapp(self) -> "GPTBenchApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="chat-body"):
            with VerticalScroll(id="chat-sidebar"):
                yield Label("Run", classes="side-label")
                yield Select([], prompt="choose a run", id="chat-run", compact=True)
                yield Label("Checkpoint", classes="side-label")
                yield Select([], prompt="—", id="chat-ckpt", compact=True)
                yield Static("no model loaded", id="chat-model")
                yield Label("Sampling", classes="side-label")
                for fid, label, default, validator, _ in SAMPLING_FIELDS:
                    yield Field(label, Input(default, id=fid, compact=True, validators=[validator], valid_empty=fid == "seed",
                                             placeholder="random" if fid == "seed" else ""), fid)
                with Horizontal(classes="switch-row"):
                    yield Switch(True, id="kv-cache")
                    yield Label("KV cache")
                with Horizontal(classes="switch-row"):
                    yield Switch(False, id="transcript")
                    yield Label("Continue transcript")
            with Vertical(id="chat-main"):
                with VerticalScroll(id="chat-history"):
                    yield Static(
                        "Pick a run and a checkpoint, type a prompt and press Enter.\n"
                        "The reply streams in; Esc cancels it. Sampling settings apply to the next reply.",
                        id="chat-empty",
                    )
                yield Static("", id="prompt-error")
                yield Input(placeholder="Prompt — Enter sends, Esc cancels a reply", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.gapp.runs_signal.subscribe(self, self._runs_changed, immediate=True)
        self._runs_changed(self.gapp.summaries)
        self.query_one("#prompt", Input).focus()
        self._take_request()

    def on_screen_resume(self) -> None:
        self._take_request()

    def _take_request(self) -> None:
        name = self.gapp.take_chat_request()
        if name is not None:
            self.choose_run(name)

    # ---- run / checkpoint / model ---------------------------------------------------------------
    @staticmethod
    def _eligible(s: RunSummary) -> bool:
        return s.state not in ("corrupt", "starting", "new") and s.step > 0

    def _runs_changed(self, summaries: list[RunSummary]) -> None:
        names = sorted(s.name for s in summaries if self._eligible(s))
        if names == self._run_names:
            return
        self._run_names = names
        select = self.query_one("#chat-run", Select)
        current = select.value
        with self.prevent(Select.Changed):
            select.set_options([(n, n) for n in names])
            if current in names:
                select.value = current

    def choose_run(self, name: str) -> None:
        select = self.query_one("#chat-run", Select)
        if select.value == name:  # already chosen: re-read its checkpoints (a live run makes new ones)
            self.list_checkpoints(name)
            return
        if name not in self._run_names:
            self._run_names.append(name)
            with self.prevent(Select.Changed):
                select.set_options([(n, n) for n in sorted(self._run_names)])
        select.value = name  # posts Select.Changed -> checkpoints + model load

    @on(Select.Changed, "#chat-run")
    def _run_selected(self, event: Select.Changed) -> None:
        if event.value is Select.NULL:
            return
        self._set_model_status(Text(f"reading {event.value}…", style="dim"))
        self.list_checkpoints(str(event.value))

    @work(thread=True, exclusive=True, group="chat-ckpts", exit_on_error=False)
    def list_checkpoints(self, name: str) -> None:
        run = Run(self.gapp.runs_dir / name)
        try:
            ckpts = run.checkpoints()
        except OSError as exc:
            self.app.call_from_thread(self._set_model_status, Text(f"cannot read {name}: {exc}", style="red"))
            return
        self.app.call_from_thread(self._set_checkpoints, name, [c.step for c in ckpts])

    def _set_checkpoints(self, name: str, steps: list[int]) -> None:
        if self._ckpt_steps.get(name) != steps and self.model_key and self.model_key[0] == name:
            self.model_key = None  # new checkpoints: "best" / "last" may mean another file now
        self._ckpt_steps[name] = steps
        select = self.query_one("#chat-ckpt", Select)
        with self.prevent(Select.Changed):
            select.set_options([("best", "best"), ("last", "last")] + [(f"step-{s}", f"step-{s}") for s in reversed(steps)] if steps else [])
            if steps:
                select.value = "best"
        if not steps:
            self.model, self.model_key = None, None
            self._set_model_status(Text(f"{name} has no checkpoint yet", style="red"))
            return
        self.load(name, "best")

    @on(Select.Changed, "#chat-ckpt")
    def _ckpt_selected(self, event: Select.Changed) -> None:
        run = self.query_one("#chat-run", Select).value
        if event.value is Select.NULL or run is Select.NULL:
            return
        self.load(str(run), str(event.value))

    def load(self, run: str, ckpt: str) -> None:
        key = (run, ckpt)
        if key in (self.model_key, self._loading_key):
            return
        self._loading_key = key
        self._set_model_status(Text(f"loading {run} ({ckpt})…", style="dim"))
        self._load_worker(run, ckpt)

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def _load_worker(self, run: str, ckpt: str) -> None:
        from gptbench.loading import load_model

        try:
            lm = load_model(self.gapp.store, run=run, checkpoint=ckpt, backend=self.gapp.backend, device=self.gapp.device)
        except Exception as exc:  # a user error or a broken checkpoint: show it, never crash
            msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.app.call_from_thread(self._load_failed, (run, ckpt), msg)
            return
        self.app.call_from_thread(self._loaded, (run, ckpt), lm)

    def _loaded(self, key: tuple[str, str], lm: "LoadedModel") -> None:
        if key != self._loading_key:
            return  # superseded by a later choice
        self._loading_key = None
        self.model, self.model_key = lm, key
        be = lm.backend
        from gptbench.backends.spec import format_params

        self._set_model_status(
            Text.assemble(("● ", "green"), (lm.source, "bold"), f"\n{be.name} · {be.device} · {format_params(be.config.num_params())} params · "
                          f"vocab {lm.tokenizer.vocab_size} · ctx {be.config.block_size}")
        )
        self._check_prompt()

    def _load_failed(self, key: tuple[str, str], msg: str) -> None:
        if key != self._loading_key:
            return
        self._loading_key = None
        self.model, self.model_key = None, None
        self._set_model_status(Text(f"✖ {msg}", style="red"))

    def _set_model_status(self, text: Text) -> None:
        self.query_one("#chat-model", Static).update(text)

    # ---- prompt validation ----------------------------------------------------------------------
    def _prompt_context(self, prompt: str, upto: int | None = None) -> str:
        if not self.query_one("#transcript", Switch).value:
            return prompt
        turns = self.turns[:upto] if upto is not None else self.turns
        return "".join(t.prompt + t.reply for t in turns) + prompt

    def _check_prompt(self, prompt: str | None = None) -> str:
        """Inline error for text the model's tokenizer cannot encode ('' if fine)."""
        if prompt is None:
            prompt = self.query_one("#prompt", Input).value
        message = ""
        if prompt and self.model is not None:
            try:
                self.model.tokenizer.encode(prompt)
            except UserError as exc:
                message = str(exc)
        self._set_prompt_error(message)
        return message

    def _set_prompt_error(self, message: str) -> None:
        err = self.query_one("#prompt-error", Static)
        err.update(Text(f"✖ {message}", style="bold red") if message else "")
        err.set_class(bool(message), "visible")

    @on(Input.Changed, "#prompt")
    def _prompt_changed(self, event: Input.Changed) -> None:
        self._check_prompt(event.value)

    @on(Input.Changed, "#chat-sidebar Input")
    def _setting_changed(self, event: Input.Changed) -> None:
        for f in self.query("#chat-sidebar Field").results(Field):
            w = f.input_widget
            if w is event.input:
                f.set_error(input_error(w))

    def sampling_params(self) -> "SamplingParams | None":
        from gptbench.backends.sampling import SamplingParams

        values: dict[str, Any] = {}
        bad = []
        for fid, label, _, _, convert in SAMPLING_FIELDS:
            w = self.query_one(f"#{fid}", Input)
            msg = input_error(w)
            self.query_one(f"#field-{fid}", Field).set_error(msg)
            if msg:
                bad.append(label)
            elif w.value.strip():
                values[fid] = convert(w.value.strip())
        if bad:
            self._set_prompt_error(f"fix the sampling settings first: {', '.join(bad)}")
            return None
        try:
            return SamplingParams(**values)
        except UserError as exc:
            self._set_prompt_error(str(exc))
            return None

    # ---- generation -----------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    def _submit(self, event: Input.Submitted) -> None:
        prompt = event.value
        if not prompt:
            return
        if self.start_turn(prompt):
            event.input.value = ""

    def start_turn(self, prompt: str, regenerate: bool = False) -> bool:
        if self.generating is not None:
            self.notify("A reply is still streaming; press Esc to cancel it first", severity="warning")
            return False
        if self.model is None:
            self._set_prompt_error("no model loaded: pick a run and a checkpoint first" if self._loading_key is None else "the model is still loading…")
            return False
        params = self.sampling_params()
        if params is None:
            return False
        index = len(self.turns) - 1 if regenerate else len(self.turns)
        context = self._prompt_context(prompt, upto=index)
        if self._check_prompt(context):
            return False
        history = self.query_one("#chat-history", VerticalScroll)
        self.query_one("#chat-empty").display = False
        if regenerate:
            turn = self.turns[index]
            turn.reply, turn.meta, turn.finish_reason, turn.error = "", "", None, ""
            view = self.views[index]
        else:
            turn = Turn(prompt)
            self._gen_counter += 1
            view = TurnView(self._gen_counter, turn)
            self.turns.append(turn)
            self.views.append(view)
            history.mount(view)
        view.refresh_turn()
        history.scroll_end(animate=False)
        self._gen_counter += 1
        turn.gen_id = self.generating = self._gen_counter
        self.cancel_event = threading.Event()
        use_cache = self.query_one("#kv-cache", Switch).value
        turn.extra = {"params": params, "use_cache": use_cache}
        self._generate(turn.gen_id, self.model, context, params, use_cache, self.cancel_event)
        return True

    @work(thread=True, exclusive=True, group="chat-gen", exit_on_error=False)
    def _generate(self, gen_id: int, lm: "LoadedModel", prompt: str, params: "SamplingParams", use_cache: bool, cancel: threading.Event) -> None:
        from gptbench.backends.generate import stream_generate

        pending: list[str] = []
        last_post = 0.0
        final = None
        try:
            for r in stream_generate(lm.backend, lm.tokenizer, prompt, params, use_cache=use_cache, cancel=cancel):
                pending.append(r.text)
                now = time.perf_counter()
                if r.finish_reason is not None or now - last_post >= STREAM_INTERVAL_S:
                    if any(pending):
                        self.post_message(ReplyDelta(gen_id, "".join(pending)))
                    pending.clear()
                    last_post = now
                final = r
        except Exception as exc:  # a user error (e.g. unencodable text) or a backend failure
            if any(pending):
                self.post_message(ReplyDelta(gen_id, "".join(pending)))
            msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.post_message(ReplyDone(gen_id, "error", 0, 0.0, 0.0, error=msg))
            return
        if final is None:
            self.post_message(ReplyDone(gen_id, "length", 0, 0.0, 0.0))
            return
        self.post_message(ReplyDone(gen_id, final.finish_reason or "length", final.generation_tokens, final.tokens_per_sec, final.time_to_first_token))

    def _turn_of(self, gen_id: int) -> int | None:
        return next((i for i, t in enumerate(self.turns) if t.gen_id == gen_id), None)

    def on_reply_delta(self, msg: ReplyDelta) -> None:
        index = self._turn_of(msg.gen_id)
        if index is None:
            return  # the turn was cleared while streaming
        self.turns[index].reply += msg.text
        self._refresh_turn(index)

    def on_reply_done(self, msg: ReplyDone) -> None:
        if self.generating == msg.gen_id:
            self.generating = None
        index = self._turn_of(msg.gen_id)
        if index is not None:
            turn = self.turns[index]
            turn.finish_reason = msg.finish_reason
            turn.error = msg.error
            p = turn.extra.get("params")
            settings = (
                f"T {p.temperature:g} · top-k {p.top_k} · top-p {p.top_p:g} · min-p {p.min_p:g} · rep {p.repetition_penalty:g}"
                f"{f' · seed {p.seed}' if p.seed is not None else ''} · {'kv-cache' if turn.extra.get('use_cache') else 'no cache'}"
                if p is not None else ""
            )
            turn.meta = f"{msg.tokens} tokens · {msg.tokens_per_sec:,.1f} tok/s · finish: {msg.finish_reason}\n{settings}"
            self._refresh_turn(index)

    def _refresh_turn(self, index: int) -> None:
        if index < len(self.views):
            self.views[index].refresh_turn()
            history = self.query_one("#chat-history", VerticalScroll)
            if history.max_scroll_y - history.scroll_y < 3:
                history.scroll_end(animate=False)

    # ---- actions ---------------------------------------------------------------------------------
    def action_cancel(self) -> None:
        if self.generating is not None:
            self.cancel_event.set()
        else:
            self.query_one("#prompt", Input).focus()

    def action_regenerate(self) -> None:
        if not self.turns:
            self.notify("Nothing to regenerate yet", severity="warning")
            return
        self.start_turn(self.turns[-1].prompt, regenerate=True)

    def action_copy_last(self) -> None:
        focused = self.focused
        view = focused if isinstance(focused, TurnView) else None
        if view is None:
            view = self.views[-1] if self.views else None
        if view is None:
            self.notify("No reply to copy yet", severity="warning")
            return
        view.action_copy()

    def action_clear(self) -> None:
        if self.generating is not None:
            self.cancel_event.set()
            self.generating = None
        self.turns.clear()
        for view in self.views:
            view.remove()
        self.views.clear()
        self.query_one("#chat-empty").display = True

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#chat-sidebar")
        sidebar.display = not sidebar.display
