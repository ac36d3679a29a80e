"""The sampling knobs are described once, on `SamplingParams`: the flags of `sample` and
`chat`, the chat's slash-commands and the TUI's sampling fields are exactly its knobs, with
its defaults, and each rejects a bad value with the rule `SamplingParams` states."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input

from gptbench.backends.sampling import DEFAULT_MAX_NEW_TOKENS, SAMPLING_KNOBS, SamplingParams, training_sample_params
from gptbench.cli import build_parser, main
from gptbench.commands.chat import HELP, SLASH_KNOBS, ChatSession
from gptbench.commands.sampling_args import params_from_args
from gptbench.errors import UserError
from gptbench.tui.widgets.sampling import SAMPLING_FIELDS, KnobValidator, SamplingForm, field_default

KNOB = {k.name: k for k in SAMPLING_KNOBS}
# Knobs a surface leaves out on purpose; a new knob appears everywhere unless added here.
NOT_IN_CHAT = {"stop_token_ids"}  # token ids are for scripts: `--stop-token-id`
NOT_IN_TUI = {"repetition_window", "stop", "stop_token_ids"}

# A valid, non-default value for every knob, as typed and as parsed.
TYPED = {"temperature": ("0.3", 0.3), "top_k": ("7", 7), "top_p": ("0.9", 0.9), "min_p": ("0.05", 0.05),
         "repetition_penalty": ("1.3", 1.3), "repetition_window": ("9", 9), "max_new_tokens": ("11", 11),
         "stop": (r"\n\n", ("\n\n",)), "stop_token_ids": ("5", (5,)), "seed": ("42", 42)}


def sampling_flags(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    group = next(g for g in sub.choices[command]._action_groups if g.title == "sampling")
    return {a.option_strings[0]: a for a in group._group_actions if a.dest != "kv_cache"}


def session() -> ChatSession:
    return ChatSession(loaded=None, params=SamplingParams())  # type: ignore[arg-type]  # knobs never touch the model


def test_every_field_is_a_knob_and_its_default_is_the_dataclass_default():
    assert [k.name for k in SAMPLING_KNOBS] == [f.name for f in dataclasses.fields(SamplingParams)]
    assert set(TYPED) == set(KNOB)
    defaults = SamplingParams()
    for k in SAMPLING_KNOBS:
        assert getattr(defaults, k.name) == k.default, k.name
    assert defaults.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 256


@pytest.mark.parametrize("command", ["sample", "chat"])
def test_cli_flags_are_exactly_the_knobs_with_their_defaults(command):
    flags = sampling_flags(command)
    assert set(flags) == {k.flag for k in SAMPLING_KNOBS}
    for k in SAMPLING_KNOBS:
        assert flags[k.flag].dest == k.name
    args = build_parser().parse_args([command])
    assert params_from_args(args) == SamplingParams()
    typed = [w for k in SAMPLING_KNOBS for w in (k.flag, TYPED[k.name][0])]
    got = params_from_args(build_parser().parse_args([command, *typed]))
    assert got == SamplingParams(**{name: parsed for name, (_, parsed) in TYPED.items()})


def test_slash_commands_are_exactly_the_knobs_and_set_them():
    assert {k.name for k in SLASH_KNOBS.values()} == set(KNOB) - NOT_IN_CHAT
    for name, k in SLASH_KNOBS.items():
        chat = session()
        word, parsed = TYPED[k.name]
        chat.command(f"/{name} {word}")
        assert getattr(chat.params, k.name) == parsed, name
        assert dataclasses.replace(chat.params, **{k.name: k.default}) == SamplingParams()  # nothing else moved
    for k in SAMPLING_KNOBS:
        if k.commands:
            assert f"/{k.commands[0]} {k.arg}" in HELP, k.name
    assert session().params == params_from_args(build_parser().parse_args(["chat"]))  # same defaults


def test_slash_params_shows_every_knob_it_can_set():
    chat = session()
    for k in {id(k): k for k in SLASH_KNOBS.values()}.values():
        chat.command(f"/{k.commands[0]} {TYPED[k.name][0]}")
    shown = chat.command("/params")
    for k in SLASH_KNOBS.values():
        value = getattr(chat.params, k.name)
        assert f"={list(value)!r}" in shown if k.repeatable else f"={value} " in shown, k.name


def test_tui_fields_are_exactly_the_knobs_with_their_defaults():
    assert [k.name for k in SAMPLING_FIELDS] == [k.name for k in SAMPLING_KNOBS if k.name not in NOT_IN_TUI]
    for k in SAMPLING_FIELDS:
        text = field_default(k)
        assert (k.parse(text) if text else None) == k.default, k.name
        assert KnobValidator(k).validate(TYPED[k.name][0]).is_valid, k.name


class FormApp(App[None]):
    def compose(self) -> ComposeResult:
        yield SamplingForm()


async def test_the_tui_form_starts_at_the_dataclass_defaults():
    async with FormApp().run_test(size=(60, 40)) as pilot:
        form = pilot.app.query_one(SamplingForm)
        assert [w.id for w in form.query(Input).results(Input)] == [k.name for k in SAMPLING_FIELDS]
        settings, problem = form.settings()
        assert problem == ""
        assert settings.params == SamplingParams()


BAD = [("top_p", "1.5"), ("top_p", "0"), ("temperature", "nan"), ("temperature", "inf"), ("temperature", "-1"),
       ("min_p", "1"), ("top_k", "-2"), ("repetition_penalty", "0"), ("max_new_tokens", "-1"),
       ("max_new_tokens", "1000000000")]


@pytest.mark.parametrize("name, word", BAD)
def test_a_bad_value_gets_the_same_message_everywhere(name, word, tmp_path, capsys):
    k = KNOB[name]
    with pytest.raises(UserError) as core:
        SamplingParams(**{name: k.parse(word)})
    message = str(core.value)
    assert message.startswith(f"{name} must ")
    assert "\n" not in message
    rule = message[len(name):]  # " must be in (0, 1] (1 = off), got 1.5"

    for command in ("sample", "chat"):
        assert main(["--runs-dir", str(tmp_path), command, k.flag, word]) == 2  # refused before any model loads
        assert capsys.readouterr().err == f"gptbench: error: {message}\n"

    with pytest.raises(UserError) as slash:
        session().command(f"/{k.commands[0]} {word}")
    assert str(slash.value) == message

    tui = KnobValidator(k).validate(word)
    assert not tui.is_valid
    assert tui.failure_descriptions == [f"{k.label.lower()}{rule}"]


def test_text_that_is_not_a_value_is_named_as_such():
    with pytest.raises(UserError, match=r"/temp needs a number, got 'warm'"):
        session().command("/temp warm")
    assert KnobValidator(KNOB["top_k"]).validate("1.5").failure_descriptions == ["top-k must be an integer, got '1.5'"]
    assert KnobValidator(KNOB["seed"]).validate("none").is_valid  # an unset seed, as in the chat


def test_stop_strings_are_added_one_at_a_time_and_cleared_alone():
    chat = session()
    assert chat.command(r"/stop \n\n") == "stop=['\\n\\n']"
    assert chat.command("/stop END") == "stop=['\\n\\n', 'END']"
    assert chat.command("/stop") == "stop=[]"
    assert chat.params == SamplingParams()


def test_training_sample_params_is_the_trainers_preview_setting():
    p = training_sample_params(max_new_tokens=50, seed=3)
    assert (p.temperature, p.top_k, p.max_new_tokens, p.seed) == (0.8, 200, 50, 3)
    assert dataclasses.replace(p, top_k=0, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, seed=None) == SamplingParams()
