"""Run and checkpoint choice for chat, and the model loaded from them.

Listing a run's checkpoints and loading a model run in thread workers; the widget posts
`ModelPicker.Loaded` when a model is ready and `ModelPicker.Unloaded` when there is none
(no checkpoint, or loading failed: the reason shows under the selects).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Select, Static

from gptbench.errors import UserError
from gptbench.runstore import Run, RunStore, RunSummary

if TYPE_CHECKING:
    from gptbench.loading import LoadedModel

NO_STATUS = "no model loaded"


def can_chat(s: RunSummary) -> bool:
    """Runs that may have a checkpoint: trained for a step at least, or converted."""
    return s.state not in ("corrupt", "starting", "new") and (s.step > 0 or s.converted)


class ModelPicker(Vertical):
    class Loaded(Message):
        def __init__(self, model: "LoadedModel") -> None:
            super().__init__()
            self.model = model

    class Unloaded(Message):
        pass

    def __init__(self, store: RunStore, backend: str, device: str, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.store, self.backend, self.device = store, backend, device
        self.model: LoadedModel | None = None
        self.model_key: tuple[str, str] | None = None  # (run, checkpoint) of `model`
        self.loading_key: tuple[str, str] | None = None
        self._run_names: list[str] = []
        self._ckpt_steps: dict[str, list[int]] = {}

    @property
    def runs_dir(self) -> Path:
        return self.store.root

    def compose(self) -> ComposeResult:
        yield Label("Run", classes="side-label")
        yield Select([], prompt="choose a run", id="chat-run", compact=True)
        yield Label("Checkpoint", classes="side-label")
        yield Select([], prompt="—", id="chat-ckpt", compact=True)
        yield Static(NO_STATUS, id="chat-model")

    # ---- runs ------------------------------------------------------------------------------------
    def set_runs(self, summaries: list[RunSummary]) -> None:
        names = sorted(s.name for s in summaries if can_chat(s))
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
        event.stop()
        if event.value is Select.NULL:
            return
        self._set_status(Text(f"reading {event.value}…", style="dim"))
        self.list_checkpoints(str(event.value))

    @work(thread=True, exclusive=True, group="chat-ckpts", exit_on_error=False)
    def list_checkpoints(self, name: str) -> None:
        try:
            ckpts = Run(self.runs_dir / name).checkpoints()
        except OSError as exc:
            self.app.call_from_thread(self._set_status, Text(f"cannot read {name}: {exc}", style="red"))
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
            self._unload(Text(f"{name} has no checkpoint yet", style="red"))
            return
        self.load(name, "best")

    @on(Select.Changed, "#chat-ckpt")
    def _ckpt_selected(self, event: Select.Changed) -> None:
        event.stop()
        run = self.query_one("#chat-run", Select).value
        if event.value is Select.NULL or run is Select.NULL:
            return
        self.load(str(run), str(event.value))

    # ---- loading -----------------------------------------------------------------------------------
    def load(self, run: str, ckpt: str) -> None:
        key = (run, ckpt)
        if key in (self.model_key, self.loading_key):
            return
        self.loading_key = key
        self._set_status(Text(f"loading {run} ({ckpt})…", style="dim"))
        self._load_worker(run, ckpt)

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def _load_worker(self, run: str, ckpt: str) -> None:
        from gptbench.loading import load_model

        try:
            lm = load_model(self.store, run=run, checkpoint=ckpt, backend=self.backend, device=self.device)
        except Exception as exc:  # a user error or a broken checkpoint: show it, never crash
            msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.app.call_from_thread(self._load_failed, (run, ckpt), msg)
            return
        self.app.call_from_thread(self._loaded, (run, ckpt), lm)

    def _loaded(self, key: tuple[str, str], lm: "LoadedModel") -> None:
        if key != self.loading_key:
            return  # superseded by a later choice
        from gptbench.backends.spec import format_params

        self.loading_key = None
        self.model, self.model_key = lm, key
        be = lm.backend
        status = Text.assemble(("● ", "green"), (lm.source, "bold"), f"\n{be.name} · {be.device} · {format_params(be.config.num_params())} params · "
                               f"vocab {lm.tokenizer.vocab_size} · ctx {be.config.block_size}")
        if lm.notice:  # a damaged newest checkpoint was passed over (gptbench.sources): say which and why
            status.append(f"\n⚠ {lm.notice}", style="yellow")
            self.notify(lm.notice, title="Damaged checkpoint", severity="warning")
        self._set_status(status)
        self.post_message(self.Loaded(lm))

    def _load_failed(self, key: tuple[str, str], msg: str) -> None:
        if key != self.loading_key:
            return
        self._unload(Text(f"✖ {msg}", style="red"))

    def _unload(self, status: Text) -> None:
        self.loading_key = None
        self.model, self.model_key = None, None
        self._set_status(status)
        self.post_message(self.Unloaded())

    def _set_status(self, text: Text) -> None:
        self.query_one("#chat-model", Static).update(text)

    def missing_model_reason(self) -> str:
        """What to tell someone who sends a prompt with no model loaded."""
        if self.loading_key is not None:
            return "the model is still loading…"
        return f"{NO_STATUS}: pick a run and a checkpoint first"
