"""New-run form. Every field validates as you type (messages inline, under the field), the
whole config is then checked by the same `resolve_run_config` the trainer uses, and Start
launches `gptbench train --no-ui` as its own process and opens its dashboard."""

from __future__ import annotations

import glob
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.validation import Integer, Number, ValidationResult, Validator
from textual.widgets import Button, Footer, Header, Input, Select, Static

from gptbench.config import PRESETS, resolve_run_config
from gptbench.errors import UserError
from gptbench.runstore import validate_run_name
from gptbench.tui.widgets.form import Field, input_error

if TYPE_CHECKING:
    from gptbench.tui.app import GPTBenchApp

NAMED_CORPORA = ("default", "tinyshakespeare")
TOKENIZER_RE = re.compile(r"^(char|byte|gpt2(:.+)?|bpe:.+)$")


class RunNameValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        if not value:
            return self.success()  # blank = automatic name
        try:
            validate_run_name(value)
        except UserError:
            return self.failure("letters, digits, '.', '_' or '-'; starts with a letter or digit")
        return self.success()


class CorpusValidator(Validator):
    """A named corpus, `hf:...`, a glob, or an existing file or folder."""

    def validate(self, value: str) -> ValidationResult:
        v = value.strip()
        if not v or v in NAMED_CORPORA or v.startswith("hf:"):
            return self.success()
        if any(c in v for c in "*?["):
            return self.success() if glob.glob(str(Path(v).expanduser())) else self.failure(f"no file matches {v}")
        return self.success() if Path(v).expanduser().exists() else self.failure(f"no such file or folder: {v}")


class TokenizerValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        v = value.strip()
        return self.success() if not v or TOKENIZER_RE.match(v) else self.failure("char | byte | gpt2[:RANKS] | bpe:PATH | bpe:VOCAB_SIZE")


@dataclass(frozen=True)
class NumberField:
    key: str  # TrainConfig / model key
    label: str
    kind: type
    section: str  # model | train
    minimum: float | None = None
    maximum: float | None = None


NUMBER_FIELDS = [
    NumberField("max_iters", "Max iters", int, "train", 1),
    NumberField("batch_size", "Batch size", int, "train", 1),
    NumberField("lr", "Learning rate", float, "train", 0.0),
    NumberField("eval_interval", "Eval every", int, "train", 1),
    NumberField("sample_tokens", "Sample length", int, "train", 0),
    NumberField("block_size", "Context", int, "model", 1),
    NumberField("n_layer", "Layers", int, "model", 1),
    NumberField("n_head", "Heads", int, "model", 1),
    NumberField("n_embd", "Width", int, "model", 1),
    NumberField("dropout", "Dropout", float, "model", 0.0, 1.0),
    NumberField("seed", "Seed", int, "train", 0),
]


def _validators(f: NumberField) -> list[Validator]:
    if f.kind is int:
        return [Integer(minimum=f.minimum, maximum=f.maximum, failure_description=f"{f.label.lower()} must be an integer ≥ {f.minimum:g}")]
    return [Number(minimum=f.minimum, maximum=f.maximum, failure_description=f"{f.label.lower()} must be a number ≥ {f.minimum:g}")]


def _preset_value(preset: str, f: NumberField) -> Any:
    from gptbench.backends.spec import GPTConfig
    from gptbench.config import TrainConfig

    p = PRESETS.get(preset, {})
    if f.key in p.get(f.section, {}):
        return p[f.section][f.key]
    base = GPTConfig() if f.section == "model" else TrainConfig()
    return getattr(base, f.key)


class TrainScreen(Screen):
    TITLE = "gptbench"
    SUB_TITLE = "New run"
    BINDINGS = [
        Binding("ctrl+s", "start", "Start training"),
        Binding("ctrl+r", "reset", "Reset form"),
        Binding("escape", "runs", "Runs"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="train-form"):
            yield Static("New training run", classes="section-title")
            yield Static(
                "Start runs `gptbench train --no-ui` in its own process: closing this app never stops it.",
                classes="form-hint",
            )
            with Grid(classes="form-grid"):
                yield Field("Name", Input(placeholder="auto: preset-date-time", id="name", compact=True, validators=[RunNameValidator()]), "name")
                yield Field(
                    "Corpus",
                    Input(placeholder="text file / folder / glob, tinyshakespeare, hf:…", id="data", compact=True,
                          validators=[CorpusValidator()], suggester=SuggestFromList(NAMED_CORPORA)),
                    "data",
                )
                yield Field(
                    "Tokenizer",
                    Input("char", id="tokenizer", compact=True, validators=[TokenizerValidator()],
                          suggester=SuggestFromList(["char", "byte", "gpt2", "bpe:512"])),
                    "tokenizer",
                )
                yield Field("Preset", Select([(p, p) for p in PRESETS], value="tiny", allow_blank=False, id="preset", compact=True), "preset")
                yield Field("Backend", Select([(b, b) for b in ("auto", "torch", "mlx")], value="auto", allow_blank=False, id="backend", compact=True), "backend")
                yield Field("Device", Select([(d, d) for d in ("auto", "cpu", "cuda", "mps")], value="auto", allow_blank=False, id="device", compact=True), "device")
            yield Static("Hyperparameters (blank = preset default)", classes="section-title")
            with Grid(classes="form-grid"):
                for f in NUMBER_FIELDS:
                    yield Field(f.label, Input(id=f.key, compact=True, validators=_validators(f), valid_empty=True), f.key)
            yield Static("Processes (more than 1: torchrun, or mlx.launch for mlx)", classes="section-title")
            with Grid(classes="form-grid"):
                yield Field("Processes", Input("1", id="nproc", compact=True, validators=[Integer(minimum=1, failure_description="processes must be an integer ≥ 1")]), "nproc")
                yield Field("Strategy", Select([("ddp", "ddp"), ("fsdp (torch)", "fsdp")], value="ddp", allow_blank=False, id="strategy", compact=True), "strategy")
            yield Static("", id="form-error")
            yield Static("", id="command-preview")
            with Horizontal(id="form-buttons"):
                yield Button("Start training", id="start", variant="primary")
                yield Button("Reset", id="reset")
        yield Footer()

    @property
    def gapp(self) -> "GPTBenchApp":
        return self.app  # type: ignore[return-value]

    def on_mount(self) -> None:
        self._update_placeholders()
        self.validate_form()
        self.query_one("#data", Input).focus()

    def prefill(self, values: dict[str, Any]) -> None:
        """Fill fields from a mapping of field id -> value (e.g. from `gptbench train` flags)."""
        for key, value in values.items():
            if value is None:
                continue
            widgets = self.query(f"#{key}")
            if not widgets:
                continue
            w = widgets.first()
            if isinstance(w, Select):
                w.value = str(value)
            elif isinstance(w, Input):
                w.value = str(value)
        self._update_placeholders()
        self.validate_form()

    # ---- validation --------------------------------------------------------------------------
    def _update_placeholders(self) -> None:
        preset = str(self.query_one("#preset", Select).value)
        for f in NUMBER_FIELDS:
            self.query_one(f"#{f.key}", Input).placeholder = f"{_preset_value(preset, f):g}" if f.kind is float else str(_preset_value(preset, f))

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        self.validate_form()

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset":
            self._update_placeholders()
        self.validate_form()

    def _values(self) -> dict[str, Any]:
        return {
            w.id: (str(w.value) if isinstance(w, Select) else w.value.strip())
            for w in self.query("#train-form Input, #train-form Select").results()
            if w.id
        }

    def validate_form(self) -> list[str] | None:
        """Show every problem inline; return the command-line flags if the form is valid."""
        problems = 0
        for field in self.query(Field).results():
            w = field.input_widget
            message = input_error(w) if isinstance(w, Input) else ""
            field.set_error(message)
            problems += bool(message)
        form_error = self.query_one("#form-error", Static)
        start = self.query_one("#start", Button)
        if problems:
            form_error.update("")
            start.disabled = True
            self.query_one("#command-preview", Static).update("")
            return None
        v = self._values()
        model = {f.key: f.kind(v[f.key]) for f in NUMBER_FIELDS if f.section == "model" and v.get(f.key)}
        train = {f.key: f.kind(v[f.key]) for f in NUMBER_FIELDS if f.section == "train" and v.get(f.key)}
        try:
            resolve_run_config(v["preset"], None, model, train, {"tokenizer": v["tokenizer"] or None})
            if int(v.get("nproc") or 1) > 1 and v.get("strategy") == "fsdp" and v["backend"] == "mlx":
                raise UserError("--strategy fsdp is torch only; the mlx backend trains data-parallel (ddp)")
        except UserError as exc:
            form_error.update(Text(f"✖ {exc}", style="bold red"))
            start.disabled = True
            self.query_one("#command-preview", Static).update("")
            return None
        form_error.update("")
        start.disabled = False
        flags = self._flags(v)
        shown = " ".join(flags if v.get("name") else ["--name", "(auto)", *flags])
        self.query_one("#command-preview", Static).update(Text(f"$ gptbench train --no-ui {shown}", style="dim"))
        return flags

    def _flags(self, v: dict[str, Any]) -> list[str]:
        flags: list[str] = []
        if v.get("name"):
            flags += ["--name", v["name"]]
        if v.get("data"):
            data = v["data"]
            p = Path(data).expanduser()
            if data not in NAMED_CORPORA and not data.startswith("hf:") and (p.exists() or any(c in data for c in "*?[")):
                data = str(p.resolve()) if p.exists() else str(Path.cwd() / p)  # the trainer's cwd may differ
            flags += ["--data", data]
        flags += ["--preset", v["preset"], "--tokenizer", v["tokenizer"] or "char", "--backend", v["backend"], "--device", v["device"]]
        if int(v.get("nproc") or 1) > 1:  # several processes: torchrun, or mlx.launch for mlx
            flags += ["--nproc", str(int(v["nproc"]))]
            if v.get("strategy") == "fsdp":
                flags += ["--strategy", "fsdp"]
        for f in NUMBER_FIELDS:
            if v.get(f.key):
                flags += [f"--{f.key.replace('_', '-')}", v[f.key]]
        return flags

    # ---- actions ------------------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        flags = self.validate_form()
        if flags is None:
            self.notify("Fix the highlighted fields first", severity="error")
            return
        v = self._values()
        name = v.get("name") or f"{v['preset']}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(self.gapp.clock()))}"
        if (self.gapp.runs_dir / name).exists():
            self.query_one("#field-name", Field).set_error(f"a run named {name!r} already exists")
            self.notify(f"A run named {name} already exists; choose another name", severity="error")
            return
        if not v.get("name"):
            flags = ["--name", name, *flags]
        self.gapp.start_training(name, flags)
        self.query_one("#name", Input).value = ""

    @on(Button.Pressed, "#reset")
    def action_reset(self) -> None:
        for f in NUMBER_FIELDS:
            self.query_one(f"#{f.key}", Input).value = ""
        self.query_one("#name", Input).value = ""
        self.query_one("#data", Input).value = ""
        self.query_one("#tokenizer", Input).value = "char"
        self.query_one("#nproc", Input).value = "1"
        for sid, default in (("preset", "tiny"), ("backend", "auto"), ("device", "auto"), ("strategy", "ddp")):
            self.query_one(f"#{sid}", Select).value = default
        self.validate_form()

    async def action_runs(self) -> None:
        await self.app.run_action("go('runs')")
