"""The chat's sampling form: every control of the next reply, validated as you type.

Its fields are the sampling knobs that carry a TUI label (`SAMPLING_KNOBS`): label,
default and validation come from `SamplingParams`, so the form, the CLI and the chat offer
the same defaults and say the same thing about a bad value. The form owns its fields and answers `settings()` with the `ReplySettings` a reply is
generated (and later described) with. Enter in a valid field posts `SamplingForm.Applied`,
so the screen can send focus back to the prompt; the switches say "on"/"off" in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Switch

from gptbench.backends.knobs import Knob
from gptbench.backends.sampling import SAMPLING_KNOBS, SamplingParams
from gptbench.errors import UserError
from gptbench.tui.widgets.form import Field, input_error

# The form's fields: the sampling knobs that have a TUI label, in `SamplingParams` order.
SAMPLING_FIELDS: tuple[Knob, ...] = tuple(k for k in SAMPLING_KNOBS if k.label)


def field_default(k: Knob) -> str:
    """The text a field starts with: the knob's default (blank for an unset one)."""
    return "" if k.default is None else str(k.default)


class KnobValidator(Validator):
    """Checks a field as `SamplingParams` will, with its words: the knob's rules, the
    subject named by the field's label ("top-p must be in (0, 1] (1 = off), got 2")."""

    def __init__(self, knob: Knob) -> None:
        self.knob, self.subject = knob, (knob.label or knob.name).lower()
        super().__init__(failure_description=f"{self.subject} must be {knob.kind}")

    def validate(self, value: str) -> ValidationResult:
        try:
            parsed = self.knob.parse(value)
        except ValueError:
            return self.failure(f"{self.subject} must be {self.knob.kind}, got {value!r}")
        problem = self.knob.problem(parsed, self.subject)
        return self.failure(problem) if problem else self.success()


@dataclass(frozen=True)
class ReplySettings:
    """How one reply is generated; its turn keeps them to say so under the reply."""

    params: SamplingParams
    use_cache: bool
    continue_transcript: bool

    def describe(self) -> str:
        p = self.params
        seed = f" · seed {p.seed}" if p.seed is not None else ""
        return (f"T {p.temperature:g} · top-k {p.top_k} · top-p {p.top_p:g} · min-p {p.min_p:g} · "
                f"rep {p.repetition_penalty:g}{seed} · {'kv-cache' if self.use_cache else 'no cache'}")


class LabeledSwitch(Horizontal):
    """A switch whose label says its state in words ("KV cache: on"), not only by colour."""

    def __init__(self, label: str, value: bool, *, switch_id: str, on_text: str = "on", off_text: str = "off") -> None:
        super().__init__(classes="switch-row")
        self.label, self.on_text, self.off_text = label, on_text, off_text
        self.switch = Switch(value, id=switch_id)
        self.state_label = Label(self._text(value), classes="switch-label")

    def compose(self) -> ComposeResult:
        yield self.switch
        yield self.state_label

    @property
    def value(self) -> bool:
        return self.switch.value

    @on(Switch.Changed)
    def _changed(self, event: Switch.Changed) -> None:
        self.state_label.update(self._text(event.value))

    def _text(self, value: bool) -> Text:
        return Text.assemble(f"{self.label}: ", (self.on_text, "bold") if value else (self.off_text, ""))


class SamplingForm(Vertical):
    """Temperature, top-k/p, min-p, repetition penalty, length, seed, KV cache and
    transcript mode of the next reply; each field's problem shows under it."""

    class Applied(Message):
        """A valid field was confirmed with Enter."""

        def __init__(self, field_id: str) -> None:
            super().__init__()
            self.field_id = field_id

    def compose(self) -> ComposeResult:
        yield Label("Sampling", classes="side-label")
        for k in SAMPLING_FIELDS:
            field = Input(field_default(k), id=k.name, compact=True, validators=[KnobValidator(k)], valid_empty=k.optional,
                          placeholder="random" if k.optional else "")
            yield Field(k.label or k.name, field, k.name)
        yield LabeledSwitch("KV cache", True, switch_id="kv-cache")
        # on: the model continues the whole conversation so far, not just the new prompt
        yield LabeledSwitch("Context", False, switch_id="transcript", on_text="whole chat", off_text="prompt only")

    def _field(self, input_id: str | None) -> Field | None:
        return next((f for f in self.query(Field).results(Field) if f.input_widget.id == input_id), None)

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        field = self._field(event.input.id)
        if field is not None:
            field.set_error(input_error(event.input))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        field = self._field(event.input.id)
        problem = input_error(event.input)
        if field is not None:
            field.set_error(problem)
        if not problem:
            self.post_message(self.Applied(event.input.id or ""))

    def settings(self) -> tuple[ReplySettings | None, str]:
        """The settings of the next reply, or None and what to fix (every bad field also
        shows its own message)."""
        values: dict[str, Any] = {}
        bad = []
        for k in SAMPLING_FIELDS:
            w = self.query_one(f"#{k.name}", Input)
            problem = input_error(w)
            self.query_one(f"#field-{k.name}", Field).set_error(problem)
            if problem:
                bad.append(k.label)
            elif w.value.strip():
                values[k.name] = k.parse(w.value.strip())
        if bad:
            return None, f"fix the sampling settings first: {', '.join(bad)}"
        try:
            params = SamplingParams(**values)
        except UserError as exc:
            return None, str(exc)
        use_cache = self.query_one("#kv-cache", Switch).value
        return ReplySettings(params, use_cache, self.query_one("#transcript", Switch).value), ""
