"""Fine-tuning in the TUI: the train form takes an init-from source and LoRA settings (the
source decides shape and tokenizer, so those fields are disabled), `gptbench train` with
the UI passes the same flags to its headless trainer, the run browser shows lineage, and
the chat pane talks to an unmerged LoRA run."""

from __future__ import annotations

import pytest
from tui_fixtures import copy_trained_run, frozen_clock, row_text, screen_text, settle, squash, wait_for

from gptbench.tui.app import create_app
from gptbench.tui.screens.train import TrainScreen


def test_finetune_flags_round_trip_through_the_cli_parser(tmp_path):
    from gptbench.cli import build_parser
    from gptbench.spec.cli import request_argv, request_from_args

    (tmp_path / "hf").mkdir()
    argv = ["train", "--init-from", str(tmp_path / "hf"), "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "attn",
            "--lora-dropout", "0.1", "--max-iters", "5"]
    spec = request_from_args(build_parser().parse_args(argv))
    assert spec.name.startswith("finetune-")  # the default preset with a source
    again = request_from_args(build_parser().parse_args(["train", "--no-ui", *request_argv(spec)]))
    assert again == spec
    assert (again.init_from, again.train.max_iters) == (str(tmp_path / "hf"), 5)
    assert (again.lora.rank, again.lora.alpha, again.lora.targets, again.lora.dropout) == (4, 8.0, ("attn",), 0.1)


async def test_train_form_fine_tunes_from_a_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    (tmp_path / "hf").mkdir()
    root = tmp_path / "runs"
    app = create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(120, 60)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        form = {w.id: w for w in screen.query("Input")}
        preset = screen.query_one("#preset")

        form["lora_rank"].value = "4"
        await settle(pilot)
        assert "add --init-from" in squash(screen_text(app))  # LoRA needs a source: the trainer's own check
        assert screen.query_one("#start").disabled

        form["init_from"].value = "gpt2"
        await settle(pilot)
        assert "gpt2 is not in the Hugging Face cache and" in screen_text(app)  # (the message wraps)
        assert screen.query_one("#start").disabled

        form["init_from"].value = str(tmp_path / "hf")
        await settle(pilot)
        assert preset.value == "finetune"  # the untouched default preset follows the source
        assert form["tokenizer"].disabled
        assert form["tokenizer"].value == ""  # "from the source", not a stale "char"
        assert form["n_layer"].disabled
        assert not form["block_size"].disabled  # a shorter context crops; allowed
        form["lora_rank"].value = "0"
        await settle(pilot)
        assert "LoRA rank must be an integer ≥ 1" in screen_text(app)
        form["lora_rank"].value = "4"
        form["lora_targets"].value = "attn"
        await settle(pilot)
        assert not screen.query_one("#start").disabled
        preview = squash(screen_text(app)).replace("\n", "")
        assert f"--init-from {tmp_path / 'hf'}" in preview
        assert "--lora-rank 4" in preview
        assert "--lora-targets attn" in preview
        assert "--preset finetune" in preview
        assert "--tokenizer" not in preview  # it follows the source

        form["init_from"].value = ""
        await settle(pilot)
        assert preset.value == "tiny"
        assert not form["tokenizer"].disabled
        assert form["tokenizer"].value == "char"
        assert not list(root.glob("*"))  # nothing launched


@pytest.fixture
def lora_runs(tmp_path, trained_run, corpus_file):
    """The session's trained char run, and a LoRA run fine-tuned from its last checkpoint."""
    from helpers import resolve_config
    from gptbench.runstore import RunStore
    from gptbench.training import Trainer

    root = tmp_path / "runs"
    root.mkdir()
    copy_trained_run(trained_run, root)
    cfg = resolve_config(None, None, {}, {"max_iters": 4, "lr": 3e-2, "batch_size": 4, "grad_accum": 1, "eval_iters": 1,
                                              "eval_interval": 2, "sample_tokens": 0},
                             {"init_from": f"{trained_run.name}:last", "data": str(corpus_file), "backend": "torch", "device": "cpu",
                              "name": "ft-lora"}, {"rank": 4})
    Trainer.new_run(RunStore(root), cfg).fit()
    return root, trained_run.name


async def test_run_browser_shows_lineage(lora_runs):
    from gptbench.runstore import Run
    from gptbench.tui.widgets.runtable import RunTable

    root, base = lora_runs
    app = create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(160, 44)) as pilot:
        await settle(pilot)
        step = Run(root / base).checkpoint("last").step
        assert f"| {base}@step-{step} +LoRA r4 |" in row_text(app, "ft-lora")
        assert "| - |" in row_text(app, base)  # trained from scratch: no lineage
        table = app.screen.query_one(RunTable)
        table.select_name("ft-lora")
        await settle(pilot)
        text = squash(screen_text(app))
        assert f"from {base}@step-{step} (run) · sha256 " in text
        assert "LoRA rank 4 · alpha 8 · attn,mlp" in text


async def test_chat_talks_to_an_unmerged_lora_run(lora_runs):
    from gptbench.backends.registry import create_backend
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.modelweights import load_checkpoint
    from gptbench.runstore import Run
    from gptbench.tui.screens.chat import ChatScreen

    root, _ = lora_runs
    app = create_app(root, "torch", device="cpu", clock=frozen_clock, poll_interval=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.open_chat("ft-lora")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.picker.model is not None, timeout=60, what="model loaded")
        assert screen.picker.model.backend.lora is not None  # base + adapters, not merged
        screen.query_one("#temperature").value = "0"
        screen.query_one("#max_new_tokens").value = "40"
        prompt = screen.query_one("#prompt")
        prompt.value = "ROMEO:"
        prompt.focus()
        await pilot.press("enter")
        await settle(pilot)
        await wait_for(pilot, lambda: screen.transcript.generating is None and screen.transcript.turns, timeout=60, what="reply")
        reply = screen.transcript.turns[0].reply
        tok = screen.picker.model.tokenizer

    ck = Run(root / "ft-lora").checkpoint("best")
    stored = load_checkpoint(ck.path)
    merged = create_backend(stored.config, "torch", device="cpu")
    merged.set_weights(stored.merged())
    assert len(set(reply)) > 1  # a real reply, so the comparison can fail
    assert reply == generate(merged, tok, "ROMEO:", SamplingParams(temperature=0, max_new_tokens=40)).text
