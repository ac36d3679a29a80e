"""Small modal dialogs: confirm, rename, resume. Each dismisses with its answer (or None)."""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Integer
from textual.widgets import Button, Input, Label, Static

from gptbench.errors import UserError
from gptbench.runstore import validate_run_name


def _name_ok(name: str) -> bool:
    try:
        validate_run_name(name)
    except UserError:
        return False
    return True


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; `y`/Enter on Yes confirms, `n`/Esc cancels."""

    BINDINGS = [
        Binding("escape,n", "dismiss(False)", "Cancel"),
        Binding("y", "dismiss(True)", "Yes"),
    ]

    def __init__(self, title: str, message: str, yes: str = "Yes", *, danger: bool = False) -> None:
        super().__init__()
        self.title_text, self.message, self.yes, self.danger = title, message, yes, danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.message, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="no")
                yield Button(self.yes, id="yes", variant="error" if self.danger else "primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


class InputScreen(ModalScreen[str | None]):
    """One validated text field; Enter submits, Esc cancels. The validation message shows
    inline under the field and submit is refused while it fails."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, label: str, value: str, check: Callable[[str], str | None], ok: str = "OK") -> None:
        super().__init__()
        self.title_text, self.label, self.value, self.check, self.ok = title, label, value, check, ok

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Label(self.label)
            yield Input(self.value, id="value", select_on_focus=True)
            yield Static("", id="error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.ok, id="ok", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#value", Input).focus()

    def _validate(self) -> str | None:
        value = self.query_one("#value", Input).value.strip()
        problem = self.check(value)
        err = self.query_one("#error", Static)
        err.update(problem or "")
        err.set_class(bool(problem), "visible")
        return None if problem else value

    def on_input_changed(self, event: Input.Changed) -> None:
        self._validate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = self._validate()
        if value is not None:
            self.dismiss(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        value = self._validate()
        if value is not None:
            self.dismiss(value)


def rename_screen(old: str, taken: set[str]) -> InputScreen:
    def check(new: str) -> str | None:
        if not new:
            return "enter a name"
        if not _name_ok(new):
            return "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        if new != old and new in taken:
            return f"a run named {new!r} already exists"
        return None

    return InputScreen(f"Rename {old}", "New name", old, check, ok="Rename")


def resume_screen(name: str, step: int, max_iters: int, state: str) -> InputScreen:
    """Ask for the (possibly extended) step budget; a finished run must get a larger one."""
    default = max_iters if step < max_iters else max(max_iters * 2, step + 1)

    def check(value: str) -> str | None:
        if not Integer(minimum=1).validate(value).is_valid:
            return "max iters must be a positive integer"
        if int(value) <= step:
            return f"the run is at step {step}; give more than {step}"
        return None

    body = f"{name} is {state} at step {step:,} of {max_iters:,}. Train until step:"
    return InputScreen(f"Resume {name}", body, str(default), check, ok="Resume")

