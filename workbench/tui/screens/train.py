"""New-run form. Every field validates as you type (messages inline, under the field), the
fields make a run specification through the same `resolve_spec` the command line uses
(each field is a setting of `gptbench.spec.settings`), and Start launches
`gptbench train --no-ui` with that spec as its own process and opens its dashboard.

Fine-tuning: a source in "Init from" (a hub name, a Hugging Face folder, a weights file or
RUN[:CHECKPOINT]) makes the model shape and the tokenizer come from it, so those fields are
disabled, and the preset switches to `finetune`; a LoRA rank trains adapters only."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, replace
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
from textual.widgets import Button, Collapsible, Footer, Header, Input, Select, Static

from gptbench.spec import FINETUNE_PRESET, PRESETS, RunSpec, default_run_name, resolve_spec
from gptbench.spec.cli import spec_to_argv
from gptbench.spec.resolve import value_at
from gptbench.spec.settings import BY_PATH
from gptbench.errors import UserError
from gptbench.runstore import validate_run_name
from gptbench.tui.widgets.form import Field, input_error

if TYPE_CHECKING:
    from gptbench.tui.host import WorkbenchHost

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


class InitFromValidator(Validator):
    """Blank (from scratch), an existing file or folder, a run in the runs directory
    (RUN[:CHECKPOINT]), or a hub name that is cached or can be downloaded. Only cheap checks
    of the file system: the trainer reads the source itself and reports anything else."""

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)

    def validate(self, value: str) -> ValidationResult:
        from gptbench.hfcache import find_cached, is_hub_name, offline_reason

        v = value.strip()
        if not v or Path(v).expanduser().exists() or (self.runs_dir / v.partition(":")[0] / "config.json").is_file():
            return self.success()
        name = v[3:] if v.startswith("hf:") else v
        if is_hub_name(name):
            if find_cached(name.partition("@")[0], name.partition("@")[2] or None) is None and offline_reason():
                return self.failure(f"{name} is not in the Hugging Face cache and downloads are off ({offline_reason()})")
            return self.success()
        return self.failure("not a folder, a weights file, a run or a Hugging Face name (gpt2, …)")


class TokenizerValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        v = value.strip()
        return self.success() if not v or TOKENIZER_RE.match(v) else self.failure("char | byte | gpt2[:RANKS] | bpe:PATH | bpe:VOCAB_SIZE")


@dataclass(frozen=True)
class NumberField:
    path: str  # a setting of the run spec (gptbench.spec.settings), e.g. train.lr
    label: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def section(self) -> str:
        return self.path.partition(".")[0]

    @property
    def kind(self) -> type:
        return BY_PATH[self.path].kind


NUMBER_FIELDS = [
    NumberField("train.max_iters", "Max iters", 1),
    NumberField("train.batch_size", "Batch size", 1),
    NumberField("train.lr", "Learning rate", 0.0),
    NumberField("train.eval_interval", "Eval every", 1),
    NumberField("train.sample_tokens", "Sample length", 0),
    NumberField("model.block_size", "Context", 1),
    NumberField("model.n_layer", "Layers", 1),
    NumberField("model.n_head", "Heads", 1),
    NumberField("model.n_embd", "Width", 1),
    NumberField("model.dropout", "Dropout", 0.0, 1.0),
    NumberField("train.seed", "Seed", 0),
]


SOURCE_SHAPE = ("n_layer", "n_head", "n_embd")  # fixed by an init-from source (context may shrink, dropout is free)


@dataclass(frozen=True)
class LoraField:
    key: str  # lora_rank: the setting lora.rank (--lora-rank)
    label: str
    placeholder: str
    validators: tuple[Validator, ...] = ()

    @property
    def path(self) -> str:
        return "lora." + self.key.removeprefix("lora_")


LORA_FIELDS = [
    LoraField("lora_rank", "LoRA rank", "off", (Integer(minimum=1, failure_description="LoRA rank must be an integer ≥ 1"),)),
    LoraField("lora_alpha", "LoRA alpha", "2 × rank", (Number(minimum=0.0, failure_description="LoRA alpha must be a positive number"),)),
    LoraField("lora_targets", "LoRA targets", "attn,mlp"),
    LoraField("lora_dropout", "LoRA dropout", "0", (Number(minimum=0.0, maximum=0.999, failure_description="LoRA dropout must be in [0, 1)"),)),
]


def _validators(f: NumberField) -> list[Validator]:
    if f.kind is int:
        return [Integer(minimum=f.minimum, maximum=f.maximum, failure_description=f"{f.label.lower()} must be an integer ≥ {f.minimum:g}")]
    return [Number(minimum=f.minimum, maximum=f.maximum, failure_description=f"{f.label.lower()} must be a number ≥ {f.minimum:g}")]


def _preset_value(preset: str, f: NumberField) -> Any:
    return value_at(PRESETS[preset], f.path)


def _absolute(value: str) -> str:
    """A path (or glob) absolute, for a trainer whose working directory may differ."""
    p = Path(value).expanduser()
    if p.exists():
        return str(p.resolve())
    return str(Path.cwd() / p) if any(c in value for c in "*?[") else value


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
            # after the hyperparameters, so the keyboard order of the fields before it never
            # changes; folded until used, so the form (and its command line) still fits a screen
            with Collapsible(title="Fine-tuning: start from pretrained weights, LoRA (blank = train from scratch)",
                             collapsed=True, id="finetune", classes="form-section"), Grid(classes="form-grid"):
                yield Field(
                    "Init from",
                    Input(placeholder="gpt2 · HF folder · RUN[:best]", id="init_from", compact=True,
                          validators=[InitFromValidator(self.gapp.runs_dir)], suggester=SuggestFromList(["gpt2", "gpt2-medium"])),
                    "init_from",
                )
                for lf in LORA_FIELDS:
                    yield Field(lf.label, Input(placeholder=lf.placeholder, id=lf.key, compact=True, validators=list(lf.validators), valid_empty=True), lf.key)
            yield Static("", id="form-error")
            yield Static("", id="command-preview")
            with Horizontal(id="form-buttons"):
                yield Button("Start training", id="start", variant="primary")
                yield Button("Reset", id="reset")
        yield Footer()

    @property
    def gapp(self) -> "WorkbenchHost":
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
        fine_tuning = bool(self.query_one("#init_from", Input).value.strip())
        for f in NUMBER_FIELDS:
            w = self.query_one(f"#{f.key}", Input)
            if fine_tuning and f.section == "model":
                w.placeholder = "0" if f.key == "dropout" else "source"  # the shape comes from the source
            else:
                w.placeholder = f"{_preset_value(preset, f):g}" if f.kind is float else str(_preset_value(preset, f))
            w.disabled = fine_tuning and f.key in SOURCE_SHAPE
        tok = self.query_one("#tokenizer", Input)
        tok.disabled = fine_tuning  # it follows the source
        tok.placeholder = "from the source" if fine_tuning else ""

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "init_from":
            self._follow_source(bool(event.value.strip()))
        self.validate_form()

    def _follow_source(self, fine_tuning: bool) -> None:
        """A source switches the untouched default preset to `finetune` (and back when the
        source is cleared), and disables what the source decides."""
        if fine_tuning:
            self.query_one("#finetune", Collapsible).collapsed = False  # e.g. filled in from `gptbench train --init-from`
        preset = self.query_one("#preset", Select)
        tok = self.query_one("#tokenizer", Input)
        if fine_tuning and not tok.disabled:  # shown empty ("from the source"), restored after
            self._tokenizer_value, tok.value = tok.value, ""
        elif not fine_tuning and tok.disabled:
            tok.value = getattr(self, "_tokenizer_value", "char")
        if fine_tuning and preset.value == "tiny":
            preset.value = FINETUNE_PRESET
        elif not fine_tuning and preset.value == FINETUNE_PRESET:
            preset.value = "tiny"
        self._update_placeholders()

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

    def validate_form(self) -> RunSpec | None:
        """Show every problem inline; return the run's spec if the form is valid."""
        problems = 0
        for field in self.query(Field).results():
            w = field.input_widget
            message = input_error(w) if isinstance(w, Input) else ""
            field.set_error(message)
            problems += bool(message)
        form_error = self.query_one("#form-error", Static)
        start = self.query_one("#start", Button)
        spec = None
        if not problems:
            try:
                v = self._values()
                spec = resolve_spec(v["preset"], None, self._overrides(v))
            except UserError as exc:
                form_error.update(Text(f"✖ {exc}", style="bold red"))
        if spec is None:
            if problems:
                form_error.update("")
            start.disabled = True
            self.query_one("#command-preview", Static).update("")
            return None
        form_error.update("")
        start.disabled = False
        shown = " ".join(spec_to_argv(spec) if spec.name else ["--name", "(auto)", *spec_to_argv(spec)])
        self.query_one("#command-preview", Static).update(Text(f"$ gptbench train --no-ui {shown}", style="dim"))
        return spec

    def _overrides(self, v: dict[str, Any]) -> dict[str, Any]:
        """The settings the form gives, by setting path (blank fields: the preset's)."""
        source = v.get("init_from") or None
        out: dict[str, Any] = {"name": v.get("name") or None, "init_from": _absolute(source) if source else None,
                               "tokenizer": None if source else v["tokenizer"] or "char",
                               "runtime.backend": v["backend"], "runtime.device": v["device"]}
        if v.get("data"):
            data = v["data"]
            glob_or_file = data not in NAMED_CORPORA and not data.startswith("hf:")
            out["data"] = _absolute(data) if glob_or_file else data  # the trainer's cwd may differ
        nproc = int(v.get("nproc") or 1)
        if nproc > 1:  # several processes: torchrun, or mlx.launch for mlx
            out.update({"parallel.nproc": nproc, "parallel.strategy": v.get("strategy") or "ddp"})
        for f in NUMBER_FIELDS:
            if v.get(f.key) and not (source and f.key in SOURCE_SHAPE):
                out[f.path] = f.kind(v[f.key])
        for lf in LORA_FIELDS:  # without a source: refused by the spec, with its message
            if v.get(lf.key):
                out[lf.path] = BY_PATH[lf.path].kind(v[lf.key])
        return out

    # ---- actions ------------------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        spec = self.validate_form()
        if spec is None:
            self.notify("Fix the highlighted fields first", severity="error")
            return
        name = spec.name or default_run_name(spec.preset, self.gapp.clock())
        if (self.gapp.runs_dir / name).exists():
            self.query_one("#field-name", Field).set_error(f"a run named {name!r} already exists")
            self.notify(f"A run named {name} already exists; choose another name", severity="error")
            return
        self.gapp.start_training(replace(spec, name=name))
        self.query_one("#name", Input).value = ""

    @on(Button.Pressed, "#reset")
    def action_reset(self) -> None:
        for key in [f.key for f in NUMBER_FIELDS] + [lf.key for lf in LORA_FIELDS] + ["init_from"]:
            self.query_one(f"#{key}", Input).value = ""
        self.query_one("#name", Input).value = ""
        self.query_one("#data", Input).value = ""
        self.query_one("#tokenizer", Input).value = "char"
        self.query_one("#nproc", Input).value = "1"
        for sid, default in (("preset", "tiny"), ("backend", "auto"), ("device", "auto"), ("strategy", "ddp")):
            self.query_one(f"#{sid}", Select).value = default
        self.validate_form()

    async def action_runs(self) -> None:
        await self.app.run_action("go('runs')")
