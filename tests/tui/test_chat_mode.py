"""Pilot tests of the chat pane's chat mode: a chat run (trained with --sft) is answered
through its template with the system field, stops at the end of its turn, regenerates on
Ctrl+R and says which mode it is in; a base run stays in completion mode."""

from __future__ import annotations

import json

import pytest
from tui_fixtures import copy_trained_run, frozen_clock, screen_text, settle, squash, wait_for

from gptbench.backends.sampling import SamplingParams
from gptbench.chat.session import ChatHistory
from gptbench.loading import load_model
from gptbench.runstore import RunStore
from gptbench.tui.app import create_app
from gptbench.tui.screens.chat import ChatScreen
from helpers import train_fixture_run

WORDS = ["king", "queen", "cat", "dog", "sun", "moon"]


@pytest.fixture
def runs(tmp_path, trained_run):
    root = tmp_path / "runs"
    root.mkdir()
    copy_trained_run(trained_run, root)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "one word"},
                                                      {"role": "user", "content": f"the {WORDS[i % 6]}"},
                                                      {"role": "assistant", "content": WORDS[(i + 1) % 6]}]}) + "\n"
                             for i in range(24)))
    train_fixture_run(root, chats, name="chatty", max_iters=30, sft=True, batch_size=4)
    return root, trained_run.name


async def _open(pilot, name) -> ChatScreen:
    pilot.app.open_chat(name)
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    await wait_for(pilot, lambda: screen.picker.model is not None and getattr(screen.picker.model, "source", "").startswith(name),
                   timeout=60, what="model loaded")
    await settle(pilot)
    return screen


async def _send(pilot, screen, prompt):
    box = screen.query_one("#prompt")
    box.value = prompt
    box.focus()
    await pilot.press("enter")
    await settle(pilot)
    await wait_for(pilot, lambda: screen.transcript.generating is None, timeout=60, what="reply finished")
    await settle(pilot)


async def test_a_chat_run_is_answered_through_its_template_and_a_base_run_is_completed(runs):
    root, base = runs
    app = create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await _open(pilot, "chatty")
        assert "mode: chat" in squash(screen_text(app))
        assert screen.query_one("#system").display
        screen.query_one("#system").value = "one word"
        for key, value in (("temperature", 0), ("max_new_tokens", 12)):
            screen.query_one(f"#{key}").value = str(value)
        await _send(pilot, screen, "the cat")
        turn = screen.transcript.turns[0]
        first = turn.reply
        await pilot.press("ctrl+r")
        await settle(pilot)
        await wait_for(pilot, lambda: screen.transcript.generating is None, timeout=60, what="regenerated")
        assert len(screen.transcript.turns) == 1 and turn.reply == first  # greedy: the same answer again
        reason = turn.finish_reason

        screen = await _open(pilot, base)
        assert "mode: completion" in squash(screen_text(app))
        assert not screen.query_one("#system").display

    lm = load_model(RunStore(root), run="chatty", backend="torch", device="cpu")
    want = ChatHistory(lm.tokenizer, lm.backend.config.block_size, "one word").ask(
        lm.backend, "the cat", SamplingParams(temperature=0, max_new_tokens=12))
    assert first == want.text
    assert reason == ("eos" if want.finish_reason == "stop" else want.finish_reason)
