"""New-run form. Every field validates as you type (messages inline, under the field), the
fields make a run specification through the same `resolve_spec` the command line uses
(each field is a setting of `gptbench.spec.settings`), and Start launches
`gptbench train --no-ui` with that spec as its own process and opens its dashboard.

Fine-tuning: a source in "Init from" (a hub name, a Hugging Face folder, a weights file or
RUN[:CHECKPOINT]) makes the model shape and the tokenizer come from it, so those fields are
disabled, and the preset switches to `finetune`; a LoRA rank trains adapters only.

Chat SFT (in the same folded section) trains on conversations (`--sft`: the corpus is a .jsonl/.json/.parquet
file of `messages` or `prompt`/`completion` records, or hf:NAME), with the loss on the
assistant's tokens or, `--train-on-prompt`, on every token; the untouched default preset
follows it to `sft`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.validation import Integer
from textual.widgets import Button, Collapsible, Footer, Header, Input, Select, Static

from gptbench.errors import UserError
from gptbench.spec import FINETUNE_PRESET, PRESETS, RunSpec, default_run_name, resolve_spec
from gptbench.spec.cli import spec_to_argv
from gptbench.spec.presets import DEFAULT_PRESET, SFT_PRESET
from gptbench.spec.settings import BY_PATH
from gptbench.tui.screens.train_fields import (LORA_FIELDS, NAMED_CORPORA, NUMBER_FIELDS, SFT_CHOICES, SFT_SETTINGS, SOURCE_SHAPE,
                                               CorpusValidator, InitFromValidator, RunNameValidator, TokenizerValidator,
                                               preset_value, validators)
from gptbench.tui.widgets.form import Field, input_error

if TYPE_CHECKING:
    from gptbench.tui.host import WorkbenchHost

__all__ = ["LORA_FIELDS", "NUMBER_FIELDS", "TrainScreen"]


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
                    yield Field(f.label, Input(id=f.key, compact=True, validators=validators(f), valid_empty=True), f.key)
            yield Static("Processes (more than 1: torchrun, or mlx.launch for mlx)", classes="section-title")
            with Grid(classes="form-grid"):
                yield Field("Processes", Input("1", id="nproc", compact=True, validators=[Integer(minimum=1, failure_description="processes must be an integer ≥ 1")]), "nproc")
                yield Field("Strategy", Select([("ddp", "ddp"), ("fsdp (torch)", "fsdp")], value="ddp", allow_blank=False, id="strategy", compact=True), "strategy")
            # after the hyperparameters, so the keyboard order of the fields before it never
            # changes; folded until used, so the form (and its command line) still fits a screen
            with Collapsible(title="Fine-tuning: pretrained weights, LoRA, chat SFT (blank = from scratch, plain text)",
                             collapsed=True, id="finetune", classes="form-section"), Grid(classes="form-grid"):
                yield Field(
                    "Init from",
                    Input(placeholder="gpt2 · HF folder · RUN[:best]", id="init_from", compact=True,
                          validators=[InitFromValidator(self.gapp.runs_dir)], suggester=SuggestFromList(["gpt2", "gpt2-medium"])),
                    "init_from",
                )
                for lf in LORA_FIELDS:
                    yield Field(lf.label, Input(placeholder=lf.placeholder, id=lf.key, compact=True, validators=list(lf.validators), valid_empty=True), lf.key)
                yield Field("Chat SFT", Select(SFT_CHOICES, value="off", allow_blank=False, id="sft", compact=True), "sft")
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
                w.placeholder = f"{preset_value(preset, f):g}" if f.kind is float else str(preset_value(preset, f))
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
        self._follow_defaults()

    def _follow_defaults(self) -> None:
        """An untouched default preset follows the form as the command line's would: `sft`
        with chat SFT, else `finetune` with a source, else `tiny`."""
        preset = self.query_one("#preset", Select)
        if preset.value in (DEFAULT_PRESET, FINETUNE_PRESET, SFT_PRESET):
            sft = self.query_one("#sft", Select).value != "off"
            fine_tuning = bool(self.query_one("#init_from", Input).value.strip())
            preset.value = SFT_PRESET if sft else FINETUNE_PRESET if fine_tuning else DEFAULT_PRESET
        self._update_placeholders()

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset":
            sft = self.query_one("#sft", Select)
            if event.value == SFT_PRESET and sft.value == "off":
                sft.value = "on"  # the preset trains on conversations
            self._update_placeholders()
        elif event.select.id == "sft":
            if event.value != "off":
                self.query_one("#finetune", Collapsible).collapsed = False  # e.g. filled in from `--sft`
            self._follow_defaults()
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
        sft = SFT_SETTINGS[v.get("sft") or "off"]
        if sft and (not v.get("data") or v["data"] in NAMED_CORPORA):
            raise UserError("chat SFT trains on conversations: set Corpus to a .jsonl/.json/.parquet file of messages, or hf:NAME")
        out.update(sft)
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
        for sid, default in (("preset", "tiny"), ("backend", "auto"), ("device", "auto"), ("strategy", "ddp"), ("sft", "off")):
            self.query_one(f"#{sid}", Select).value = default
        self.validate_form()

    async def action_runs(self) -> None:
        await self.app.run_action("go('runs')")
