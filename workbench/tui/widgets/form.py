"""Form building blocks shared by the Train form and the chat settings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Input, Label, Static


class Field(Vertical):
    """A label, a compact input and its inline validation message."""

    def __init__(self, label: str, widget: Widget, field_id: str) -> None:
        super().__init__(classes="field", id=f"field-{field_id}")
        self.label_text, self.input_widget = label, widget

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(self.label_text, classes="field-label")
            yield self.input_widget
        yield Static("", classes="field-error")

    def set_error(self, message: str) -> None:
        err = self.query_one(".field-error", Static)
        err.update(message)
        err.set_class(bool(message), "visible")
        self.set_class(bool(message), "-invalid")


def input_error(widget: Input) -> str:
    """The validation message of an Input's current value ('' when valid)."""
    if not widget.validators:
        return ""
    result = widget.validate(widget.value.strip())
    return "" if result is None or result.is_valid else "; ".join(result.failure_descriptions)
