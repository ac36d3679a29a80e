"""Pilot tests of the chat screen on the session's really trained fixture model: replies
stream token by token and equal the non-streaming engine's output; Esc cancels; settings
change between turns; regenerate / copy / clear; unencodable prompts and bad settings are
refused inline."""

from __future__ import annotations

import pytest
from tui_fixtures import copy_trained_run, frozen_clock, make_fixture_runs, screen_text, settle, squash, wait_for, write_run

from gptbench.backends.generate import generate
from gptbench.backends.sampling import SamplingParams
from gptbench.loading import load_model
from gptbench.runstore import RunStore
from gptbench.tui.app import create_app
from gptbench.tui.screens.chat import ChatScreen
from gptbench.tui.widgets.transcript import Transcript, TurnView


@pytest.fixture
def chat_runs(tmp_path, trained_run):
    root = tmp_path / "runs"
    root.mkdir()
    copy_trained_run(trained_run, root)
    return root, trained_run.name


def make_app(root):
    return create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)


async def open_chat(pilot, name) -> ChatScreen:
    pilot.app.open_chat(name)
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    await wait_for(pilot, lambda: screen.picker.model is not None, timeout=60, what="model loaded")
    await settle(pilot)
    return screen


def set_fields(screen: ChatScreen, **values) -> None:
    for key, value in values.items():
        screen.query_one(f"#{key}").value = str(value)


async def send(pilot, screen: ChatScreen, prompt: str) -> None:
    prompt_input = screen.query_one("#prompt")
    prompt_input.value = prompt
    prompt_input.focus()
    await pilot.press("enter")
    await settle(pilot)
    await wait_for(pilot, lambda: screen.transcript.generating is None, timeout=60, what="reply finished")
    await settle(pilot)


async def test_reply_streams_and_equals_the_engine(chat_runs):
    root, name = chat_runs
    deltas = []
    app = make_app(root)
    async with app.run_test(size=(120, 40), message_hook=lambda m: deltas.append(m) if isinstance(m, Transcript.ReplyDelta) else None) as pilot:
        await settle(pilot)
        screen = await open_chat(pilot, name)
        assert f"{name}@step-" in screen_text(app)
        set_fields(screen, temperature=0, max_new_tokens=300)
        await send(pilot, screen, "ROMEO:")
        turn = screen.transcript.turns[0]
        assert turn.finish_reason == "length"
        assert len(deltas) >= 2  # it streamed, in more than one piece
        assert "".join(d.text for d in deltas) == turn.reply
        text = squash(screen_text(app))
        assert "300 tokens" in text
        assert "tok/s" in text
        assert "finish: length" in text
        assert "T 0 " in text

    lm = load_model(RunStore(root), run=name, checkpoint="best", backend="torch", device="cpu")
    expected = generate(lm.backend, lm.tokenizer, "ROMEO:", SamplingParams(temperature=0, max_new_tokens=300)).text
    assert turn.reply == expected


async def test_escape_cancels_a_reply(chat_runs):
    root, name = chat_runs
    app = make_app(root)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = await open_chat(pilot, name)
        set_fields(screen, temperature=0, max_new_tokens=100_000)
        screen.query_one("#prompt").value = "JULIET:"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.transcript.turns[0].reply) > 5, timeout=30, what="reply to start")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.transcript.generating is None, timeout=30, what="cancel")
        await settle(pilot)
        turn = screen.transcript.turns[0]
        assert turn.finish_reason == "cancelled"
        assert 0 < len(turn.reply) < 100_000
        assert "finish: cancelled" in screen_text(app)


async def test_settings_between_turns_regenerate_copy_clear(chat_runs):
    root, name = chat_runs
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_chat(pilot, name)
        set_fields(screen, temperature=1.0, top_k=20, top_p=0.95, min_p=0.01, repetition_penalty=1.2, max_new_tokens=60, seed=7)
        await send(pilot, screen, "the king")
        first = screen.transcript.turns[0].reply
        assert len(screen.transcript.turns[0].reply) > 0
        assert "seed 7" in screen_text(app)
        assert "top-k 20" in screen_text(app)

        await pilot.press("ctrl+r")  # same seed, same settings: the same reply
        await settle(pilot)
        await wait_for(pilot, lambda: screen.transcript.generating is None, what="regenerate")
        assert len(screen.transcript.turns) == 1
        assert screen.transcript.turns[0].reply == first

        set_fields(screen, seed=8)
        await pilot.press("ctrl+r")
        await settle(pilot)
        await wait_for(pilot, lambda: screen.transcript.generating is None, what="regenerate with seed 8")
        second = screen.transcript.turns[0].reply
        assert second != first
        assert "seed 8" in screen_text(app)

        await pilot.press("ctrl+y")
        assert app.clipboard == second

        # KV cache off gives the same greedy text, and says so
        set_fields(screen, temperature=0, seed="")
        await send(pilot, screen, "JULIET:")
        cached = screen.transcript.turns[1].reply
        screen.query_one("#kv-cache").value = False
        await send(pilot, screen, "JULIET:")
        assert screen.transcript.turns[2].reply == cached
        assert "no cache" in screen.transcript.turns[2].meta

        # copy a reply that is not the last: focus it, press y
        view = screen.transcript.views[1]
        view.focus()
        await pilot.press("y")
        assert app.clipboard == cached

        await pilot.press("ctrl+l")
        await settle(pilot)
        assert screen.transcript.turns == []
        assert not list(screen.query(TurnView))


async def test_unencodable_prompt_and_bad_settings_are_refused_inline(chat_runs):
    root, name = chat_runs
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_chat(pilot, name)
        prompt = screen.query_one("#prompt")
        prompt.focus()
        prompt.value = "¿Qué"  # as if typed (the pilot cannot type non-ASCII keys)
        await settle(pilot)
        text = screen_text(app)
        assert "cannot encode" in text
        assert "'¿'" in text
        await pilot.press("enter")
        await settle(pilot)
        assert screen.transcript.turns == []  # refused

        prompt.value = "ROMEO"
        set_fields(screen, top_p=1.5, temperature="warm")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.transcript.turns == []
        text = screen_text(app)
        assert "top-p must be in (0, 1]" in text
        assert "temperature must be" in text
        assert "fix the sampling settings" in text


async def test_runs_without_checkpoints_explain_themselves(tmp_path):
    root = make_fixture_runs(tmp_path / "runs")
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.open_chat("lr-too-high")
        await settle(pilot)
        screen = app.screen
        await wait_for(pilot, lambda: "no checkpoint yet" in screen_text(app), what="no-checkpoint message")
        screen.query_one("#prompt").value = "hello"
        await pilot.press("enter")
        await settle(pilot)
        assert screen.transcript.turns == []
        assert "no model loaded" in screen_text(app)


async def test_keyboard_flow_focus_returns_to_the_prompt(tmp_path):
    """Esc and Enter in a field lead back to the prompt, entering the screen focuses it,
    switches say on/off in words, and Tab order does not depend on what scrolls."""
    from textual.widgets import Input

    from gptbench.tui.widgets.sampling import SamplingForm
    from gptbench.tui.widgets.transcript import History

    root = make_fixture_runs(tmp_path / "runs")
    app = make_app(root)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = await open_chat(pilot, "baby-char")
        prompt = screen.query_one("#prompt", Input)
        assert screen.focused is prompt

        temperature = screen.query_one("#temperature", Input)
        temperature.focus()
        await pilot.press("escape")  # nothing streaming: Esc is the way back to the prompt
        assert screen.focused is prompt

        temperature.focus()
        await pilot.press("ctrl+u", *"0.5", "enter")  # a valid value: applied, back to the prompt
        await settle(pilot)
        assert screen.focused is prompt
        settings, problem = screen.query_one(SamplingForm).settings()
        assert problem == ""
        assert settings.params.temperature == 0.5

        temperature.focus()
        await pilot.press("ctrl+u", *"hot", "enter")  # invalid: stays, says why
        await settle(pilot)
        assert screen.focused is temperature
        assert "temperature must be" in screen_text(app)
        temperature.value = "0.8"

        screen.query_one("#kv-cache").focus()  # scrolls the sidebar down to the switches
        await settle(pilot)
        text = screen_text(app)
        assert "KV cache: on" in text
        assert "Context: prompt only" in text
        await pilot.press("space")
        await settle(pilot)
        assert "KV cache: off" in screen_text(app)

        await pilot.press("f2")
        await settle(pilot)
        assert app.current_mode == "runs"
        await pilot.press("f4")
        await settle(pilot)
        assert app.screen is screen
        assert screen.focused is prompt  # typed text lands in the prompt
        await pilot.press(*"abc")
        assert prompt.value == "abc"

        # neither the sidebar nor the history is a Tab stop, scrolled or not
        sidebar, history = screen.query_one("#chat-sidebar"), screen.query_one(History)
        assert sidebar.max_scroll_y > 0  # the sidebar scrolls at 80x24
        chain = [w.id for w in screen.focus_chain]
        assert "chat-sidebar" not in chain
        assert "chat-history" not in chain
        sidebar.scroll_end(animate=False)
        history.scroll_end(animate=False)
        await settle(pilot)
        assert [w.id for w in screen.focus_chain] == chain


async def test_chat_screen_is_given_its_run_and_switches_run_on_request(tmp_path):
    from gptbench.tui.widgets.modelpicker import ModelPicker

    root = make_fixture_runs(tmp_path / "runs")
    write_run(root, "from-hf", step=0, max_iters=1, converted_from="hf:gpt2", checkpoint=True)
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert not hasattr(app, "take_chat_request")  # no mailbox: the run goes to the screen
        screen = await open_chat(pilot, "baby-char")
        assert screen is app.chat_screen
        assert screen.run_name == "baby-char"
        picker = screen.query_one(ModelPicker)
        assert picker.model_key == ("baby-char", "best")
        options = [str(o[0]) for o in picker.query_one("#chat-run")._options]
        assert "from-hf" in options  # a converted run (step 0) has a checkpoint to chat with
        assert "lr-too-high" in options

        await pilot.press("f2")
        await settle(pilot)
        app.open_chat("from-hf")  # as `c` on another run does
        await settle(pilot)
        assert app.screen is screen  # the same screen, now on the other run
        await wait_for(pilot, lambda: picker.model_key == ("from-hf", "best"), timeout=60, what="converted run loaded")
        assert "from-hf@step-0" in screen_text(app)


async def test_the_latest_turn_stays_in_view_when_the_terminal_shrinks(chat_runs):
    root, name = chat_runs
    app = make_app(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_chat(pilot, name)
        set_fields(screen, temperature=0, max_new_tokens=120)
        for prompt in ("ROMEO:", "JULIET:", "ROMEO: the"):
            await send(pilot, screen, prompt)
        assert len(screen.transcript.turns) == 3
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        text = screen_text(app)
        assert "› ROMEO: the" in text
        assert "kv-cache" in text.split("› ROMEO: the")[-1]  # down to its last line (the settings)
        await pilot.resize_terminal(100, 30)
        await settle(pilot)
        assert "kv-cache" in screen_text(app).split("› ROMEO: the")[-1]
