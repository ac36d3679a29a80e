"""Chat with a trained checkpoint: streamed replies, sampling controls, history.

The models are base language models, so a turn is a completion of the prompt (with
"continue transcript" on, of the whole conversation so far plus the prompt). The screen
only wires three widgets together: the `ModelPicker` (run, checkpoint, loaded model), the
`SamplingForm` (settings of the next reply) and the `Transcript` (turns, prompt,
streaming generation), answering the messages they post.

Keyboard flow: the prompt has focus whenever the screen is entered; Esc cancels a
streaming reply and always returns to the prompt; Enter in a sampling field applies it
and returns to the prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header

from gptbench.runstore import RunSummary
from gptbench.tui.widgets.modelpicker import ModelPicker
from gptbench.tui.widgets.sampling import SamplingForm
from gptbench.tui.widgets.transcript import Transcript, TurnView

if TYPE_CHECKING:
    from gptbench.tui.host import WorkbenchHost


class ChatScreen(Screen):
    TITLE = "gptbench"
    SUB_TITLE = "Chat"
    AUTO_FOCUS = "#prompt"
    HELP = """\\
Pick a run and a checkpoint (best = lowest val loss), type a prompt and press **Enter**: the
reply streams in, with its length, speed, finish reason and settings under it. **Esc**
cancels a streaming reply and always brings you back to the prompt. Sampling settings apply
to the next reply; **Enter** in a field applies it and returns to the prompt. Focus a reply
(Tab or click) and press **y** to copy it.
"""
    BINDINGS = [
        Binding("escape", "to_prompt", "Cancel / prompt"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+y", "copy_last", "Copy"),
        Binding("ctrl+l", "clear", "Clear", show=False),
        Binding("ctrl+b", "toggle_sidebar", "Settings"),
    ]

    def __init__(self, run: str | None = None) -> None:
        super().__init__()
        self.run_name = run  # the run to open first (the sidebar can switch to any other)

    @property
    def gapp(self) -> "WorkbenchHost":
        return self.app  # type: ignore[return-value]

    @property
    def picker(self) -> ModelPicker:
        return self.query_one(ModelPicker)

    @property
    def transcript(self) -> Transcript:
        return self.query_one(Transcript)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="chat-body"):
            with VerticalScroll(id="chat-sidebar", can_focus=False):
                yield ModelPicker(self.gapp.store, self.gapp.backend, self.gapp.device)
                yield SamplingForm()
            yield Transcript(id="chat-main")
        yield Footer()

    def on_mount(self) -> None:
        self.gapp.runs_signal.subscribe(self, self._runs_changed, immediate=True)
        self._runs_changed(self.gapp.summaries)
        if self.run_name is not None:
            self.open_run(self.run_name)

    def on_screen_resume(self) -> None:
        self.transcript.prompt_input.focus()  # typed text always lands in the prompt

    def _runs_changed(self, summaries: list[RunSummary]) -> None:
        self.picker.set_runs(summaries)

    def open_run(self, name: str) -> None:
        """Chat with `name` (re-reads its checkpoints if it is already chosen)."""
        self.run_name = name
        self.picker.choose_run(name)

    # ---- what the widgets say ----------------------------------------------------------------
    @on(ModelPicker.Loaded)
    def _model_loaded(self, event: ModelPicker.Loaded) -> None:
        self.transcript.set_tokenizer(event.model.tokenizer)

    @on(ModelPicker.Unloaded)
    def _model_unloaded(self) -> None:
        self.transcript.set_tokenizer(None)

    @on(SamplingForm.Applied)
    def _setting_applied(self) -> None:
        self.transcript.prompt_input.focus()

    @on(Transcript.Submitted)
    def _submitted(self, event: Transcript.Submitted) -> None:
        model = self.picker.model
        if model is None:
            self.transcript.show_error(self.picker.missing_model_reason())
            return
        settings, problem = self.query_one(SamplingForm).settings()
        if settings is None:
            self.transcript.show_error(problem)
            return
        self.transcript.start_reply(event.prompt, model, settings, regenerate=event.regenerate)

    # ---- actions ---------------------------------------------------------------------------------
    def action_to_prompt(self) -> None:
        self.transcript.cancel()
        self.transcript.prompt_input.focus()

    def action_regenerate(self) -> None:
        if not self.transcript.regenerate():
            self.notify("Nothing to regenerate yet", severity="warning")

    def action_copy_last(self) -> None:
        focused = self.focused
        if not self.transcript.copy_reply(focused if isinstance(focused, TurnView) else None):
            self.notify("No reply to copy yet", severity="warning")

    def action_clear(self) -> None:
        self.transcript.clear()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#chat-sidebar")
        sidebar.display = not sidebar.display
