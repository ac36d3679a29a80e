"""Pilot tests of the chat pane's chat mode: a chat run (trained with --sft) is answered
through its template with the system field, stops at the end of its turn, regenerates on
Ctrl+R and says which mode it is in; a base run stays in completion mode."""

from __future__ import annotations

import json

import pytest
from tui_fixtures import copy_trained_run, frozen_clock, region_text, screen_text, settle, squash, wait_for

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


async def test_the_train_form_sets_chat_sft_and_it_travels_to_the_run_and_its_resume(tmp_path, capsys):
    """Form -> RunSpec -> the launcher's `gptbench train --no-ui` argv -> config.json -> a
    resume: `--sft` and `--train-on-prompt` arrive at each step (the trainer runs in-process
    on the very argv the launcher would start)."""
    from helpers import run_cli

    from gptbench.tui.launcher import resume_request, train_command
    from gptbench.tui.screens.train import TrainScreen

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"prompt": f"the {w}", "completion": w[::-1]}) + "\n" for w in WORDS * 2))
    root = tmp_path / "runs"
    app = create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(120, 60)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        assert screen.query_one("#finetune").collapsed  # folded until used
        form = {w.id: w for w in screen.query("Input")}
        sft, preset = screen.query_one("#sft"), screen.query_one("#preset")
        sft.value = "on"
        await settle(pilot)
        assert preset.value == "sft" and not screen.query_one("#finetune").collapsed  # the default preset follows, as --sft's
        assert "chat SFT trains on conversations" in squash(screen_text(app)) and screen.query_one("#start").disabled
        form["data"].value = str(chats)
        for key, value in {"name": "form-chat", "max_iters": "2", "batch_size": "2", "eval_interval": "2", "sample_tokens": "0",
                           "block_size": "32", "n_layer": "1", "n_head": "2", "n_embd": "16"}.items():
            form[key].value = value
        sft.value = "prompt"
        await settle(pilot)
        preview = region_text(app, "#command-preview")
        assert "--train-on-prompt" in preview and "--preset sft" in preview, preview  # the sft preset is --sft's
        sft.value = "off"
        await settle(pilot)
        assert preset.value == "tiny" and "sft" not in region_text(app, "#command-preview")
        preset.value = "sft"  # picking the preset turns chat SFT on
        await settle(pilot)
        assert sft.value == "on"
        sft.value = "prompt"
        screen.query_one("#backend").value = "torch"
        await settle(pilot)
        spec = screen.validate_form()
        assert spec is not None and spec.train.sft and spec.train.train_on_prompt and spec.preset == "sft"
    argv = train_command(root, spec)  # what Start launches
    rc, err = run_cli(capsys, *argv[argv.index("gptbench") + 1:], "--threads", "1")
    assert rc == 0, err
    run = RunStore(root).existing("form-chat")
    assert (run.config()["train"]["sft"], run.config()["train"]["train_on_prompt"]) == (True, True)
    argv = train_command(root, resume_request(run.path, 4))  # the run browser's resume
    rc, err = run_cli(capsys, *argv[argv.index("gptbench") + 1:], "--threads", "1")
    assert rc == 0, err
    assert (run.config()["train"]["sft"], run.config()["train"]["train_on_prompt"]) == (True, True)
    assert [c.step for c in run.checkpoints()][-1] == 4
