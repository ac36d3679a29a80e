"""Pilot tests of the chat screen on the session's really trained fixture model: replies
stream token by token and equal the non-streaming engine's output; Esc cancels; settings
change between turns; regenerate / copy / clear; unencodable prompts and bad settings are
refused inline."""

from __future__ import annotations

import pytest
from tui_fixtures import copy_trained_run, frozen_clock, make_fixture_runs, screen_text, settle, squash, wait_for

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
        assert "300 tokens" in text and "tok/s" in text and "finish: length" in text and "T 0 " in text

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
        assert turn.finish_reason == "cancelled" and 0 < len(turn.reply) < 100_000
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
        assert len(screen.transcript.turns[0].reply) > 0 and "seed 7" in screen_text(app) and "top-k 20" in screen_text(app)

        await pilot.press("ctrl+r")  # same seed, same settings: the same reply
        await settle(pilot)
        await wait_for(pilot, lambda: screen.transcript.generating is None, what="regenerate")
        assert len(screen.transcript.turns) == 1 and screen.transcript.turns[0].reply == first

        set_fields(screen, seed=8)
        await pilot.press("ctrl+r")
        await settle(pilot)
        await wait_for(pilot, lambda: screen.transcript.generating is None, what="regenerate with seed 8")
        second = screen.transcript.turns[0].reply
        assert second != first and "seed 8" in screen_text(app)

        await pilot.press("ctrl+y")
        assert app.clipboard == second

        # KV cache off gives the same greedy text, and says so
        set_fields(screen, temperature=0, seed="")
        await send(pilot, screen, "JULIET:")
        cached = screen.transcript.turns[1].reply
        screen.query_one("#kv-cache").value = False
        await send(pilot, screen, "JULIET:")
        assert screen.transcript.turns[2].reply == cached and "no cache" in screen.transcript.turns[2].meta

        # copy a reply that is not the last: focus it, press y
        view = screen.transcript.views[1]
        view.focus()
        await pilot.press("y")
        assert app.clipboard == cached

        await pilot.press("ctrl+l")
        await settle(pilot)
        assert screen.transcript.turns == [] and not list(screen.query(TurnView))


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
        assert "cannot encode" in text and "'¿'" in text
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
        assert "top-p must be in (0, 1]" in text and "temperature must be" in text and "fix the sampling settings" in text


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
        assert screen.transcript.turns == [] and "no model loaded" in screen_text(app)
