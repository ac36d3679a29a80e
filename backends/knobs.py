"""Knobs: a setting described once on its dataclass field, so every surface is generated from it.

A user-facing setting is shown in several places (a command-line flag, a chat slash-command,
a TUI field) and each used to spell its own name, default, help and range, which drifted.
Here the field itself carries a `Knob` in `dataclasses.field(metadata=...)` (`knob()` makes
the field): the flag, the slash-command spellings, the TUI label, the help text and the rules
a value must meet. The field's default is the only default; `knobs_of(cls)` hands the knobs
back with name and default filled in, in field order, for the surfaces to build themselves.

Validation is `Knob.check` / `Knob.problem`, used by the dataclass's `__post_init__`, so the
CLI, the chat and the TUI reject a value with the same rule text ("must be in (0, 1]"); only
the subject differs, named as that surface names it (`top_p` in the API and the CLI, whose
`/params` and errors use field names; the TUI's label, "top-p", in the TUI).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from gptbench.errors import UserError

_KNOB = "gptbench.knob"  # the metadata key


@dataclass(frozen=True)
class Rule:
    """A condition a valid value meets, and what to say when it does not ("must be >= 0").
    `holds` is written so that NaN, which fails every comparison, does not hold."""

    holds: Callable[[Any], bool]
    says: str


@dataclass(frozen=True)
class Knob:
    """Everything a surface needs to offer one setting; `name` and `default` come from the
    dataclass field it sits on (see `knobs_of`)."""

    flag: str  # the command-line flag, e.g. --top-k
    help: str  # what it does, without its default (each surface adds that its own way)
    parse: Callable[[str], Any]  # one typed word -> a value; ValueError when it is not one
    kind: str  # what `parse` accepts, for messages: "a number", "an integer"
    arg: str  # the value's placeholder in help texts: X, N, TEXT
    rules: tuple[Rule, ...] = ()
    normalize: Callable[[Any], Any] | None = None  # applied once the rules hold (e.g. int())
    commands: tuple[str, ...] = ()  # chat slash-command spellings, first shown in /help; () = none
    label: str | None = None  # the TUI field's label; None = not in the TUI form
    noun: str = ""  # how errors name it, when not by its field name
    name: str = ""
    default: Any = None

    @property
    def repeatable(self) -> bool:
        """A tuple-valued knob takes one value per use (`--stop A --stop B`, `/stop A`)."""
        return isinstance(self.default, tuple)

    @property
    def optional(self) -> bool:
        """Its default is None (unset, e.g. a random seed): a blank TUI field means that."""
        return self.default is None

    def problem(self, value: Any, subject: str | None = None) -> str:
        """The one-line message for the first rule `value` breaks, or '' when it is valid."""
        for rule in self.rules:
            if not rule.holds(value):
                return f"{subject or self.noun or self.name} {rule.says}, got {_shown(value)}"
        return ""

    def check(self, value: Any) -> Any:
        """`value`, normalized; UserError (one line) when it breaks a rule."""
        message = self.problem(value)
        if message:
            raise UserError(message)
        return self.normalize(value) if self.normalize is not None else value


def knob(default: Any, **description: Any) -> Any:
    """A dataclass field with this default that carries its `Knob`."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob(**description)})


def knobs_of(cls: type) -> tuple[Knob, ...]:
    """The knobs on `cls`'s fields, in field order, with name and default filled in."""
    return tuple(
        dataclasses.replace(f.metadata[_KNOB], name=f.name, default=f.default)
        for f in dataclasses.fields(cls)
        if _KNOB in f.metadata
    )


def _shown(value: Any) -> str:
    """A value as an error message quotes it: big integers grouped, sequences as lists."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)


def int_or_none(word: str) -> int | None:
    """An integer, or none/off/random for no value (a seed left to chance)."""
    return None if word.lower() in ("none", "off", "random") else int(word)


def unescape(text: str) -> str:
    r"""`\n`, `\t` and `\\` typed on a command line become the characters they name."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
