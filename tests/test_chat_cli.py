"""`gptbench chat` driven through stdin: replies, the running transcript, /commands, errors,
Ctrl-C cancelling a reply (a real SIGINT to a subprocess) and Ctrl-D exiting."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from gptbench.backends.generate import generate
from gptbench.backends.sampling import SamplingParams
from gptbench.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def chat(trained_run, monkeypatch, capsys, lines: list[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", "--runs-dir", str(trained_run.path.parent), "--run", trained_run.name, "--device", "cpu", *args])
    out, err = capsys.readouterr()
    return code, out, err


def expected_reply(trained_model, context: list[int], n: int) -> tuple[str, list[int]]:
    r = generate(trained_model.backend, trained_model.tokenizer, context, SamplingParams(temperature=0, max_new_tokens=n))
    return r.text, r.tokens


def test_replies_continue_one_running_transcript(trained_run, trained_model, monkeypatch, capsys):
    tok = trained_model.tokenizer
    code, out, err = chat(trained_run, monkeypatch, capsys, ["ROMEO: line 4", "JULIET: and", "/history"], "--temperature", "0", "--max-new-tokens", "12")
    assert code == 0
    context = tok.encode("ROMEO: line 4\n")
    first, toks = expected_reply(trained_model, context, 12)
    context += toks + ([] if first.endswith("\n") else tok.encode("\n"))
    context += tok.encode("JULIET: and\n")
    second, toks2 = expected_reply(trained_model, context, 12)
    transcript = "ROMEO: line 4\n" + first + ("" if first.endswith("\n") else "\n") + "JULIET: and\n" + second
    assert out.startswith("chatting with fixture@step-150")
    body = out.split("\n", 1)[1]
    assert body.startswith("> " + first)
    assert "> " + second in body
    assert transcript.rstrip("\n") in body  # /history prints the whole transcript
    assert err.count("12 tokens") == 2


def test_commands_change_every_sampling_param(trained_run, monkeypatch, capsys):
    lines = ["/temp 0.7", "/top_k 5", "/top_p 0.9", "/min_p 0.05", "/rep 1.2", "/window 16", "/max 7", "/seed 3", r"/stop \n\n", "/cache off", "/params"]
    code, out, _ = chat(trained_run, monkeypatch, capsys, lines)
    assert code == 0
    assert (
        "temperature=0.7 top_k=5 top_p=0.9 min_p=0.05 repetition_penalty=1.2 window=16 "
        "max_new_tokens=7 seed=3 stop=['\\n\\n'] cache=off" in out
    )


def test_bad_commands_and_lines_are_one_line_errors_and_the_chat_goes_on(trained_run, monkeypatch, capsys):
    lines = ["/temp -1", "/top_p 2", "/top_k -1", "/min_p 1", "/rep 0", "/temp warm", "/bogus", "ROMEO ☃", "/params", "/quit", "never read"]
    code, out, _ = chat(trained_run, monkeypatch, capsys, lines, "--temperature", "0.5")
    assert code == 0
    errors = [line for line in out.splitlines() if "error:" in line]
    fragments = ["temperature must be >= 0", "top_p must be in (0, 1]", "top_k must be >= 0", "min_p must be in [0, 1)",
                 "repetition_penalty must be > 0", "/temp needs a number", "unknown command /bogus", "cannot encode '☃'"]
    assert len(errors) == len(fragments)
    for line, fragment in zip(errors, fragments):
        assert fragment in line
    assert "temperature=0.5 " in out  # unchanged by the rejected values


def test_reset_clears_the_transcript(trained_run, monkeypatch, capsys):
    code, out, _ = chat(trained_run, monkeypatch, capsys, ["ROMEO:", "/reset", "/history", "/help"], "--max-new-tokens", "5")
    assert code == 0
    assert "[transcript cleared]" in out
    assert "[transcript is empty]" in out
    assert "/temp X" in out


def test_bad_sampling_flag_exits_2(trained_run, monkeypatch, capsys):
    code, out, err = chat(trained_run, monkeypatch, capsys, [], "--top-p", "0")
    assert code == 2
    assert err.count("\n") == 1
    assert "top_p" in err


def test_ctrl_c_cancels_the_reply_not_the_program(trained_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptbench", "chat", "--runs-dir", str(trained_run.path.parent), "--run", trained_run.name,
         "--device", "cpu", "--max-new-tokens", "1000000", "--temperature", "1.0", "--seed", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    chunks: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [chunks.put(c) for c in iter(lambda: proc.stdout.read1(4096), b"")], daemon=True).start()
    seen = b""

    def wait_for(pred, timeout=90.0) -> bool:
        nonlocal seen
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                seen += chunks.get(timeout=0.2)
            except queue.Empty:
                pass
            if pred(seen):
                return True
        return False

    try:
        assert wait_for(lambda s: b"> " in s), seen
        proc.stdin.write(b"ROMEO: line\n")
        proc.stdin.flush()
        reply_start = len(seen)
        assert wait_for(lambda s: len(s) > reply_start + 200), seen  # the reply is streaming
        proc.send_signal(signal.SIGINT)
        # the reply stops and the prompt comes back ('>' is not in the model's vocabulary)
        assert wait_for(lambda s: b"\n> " in s[reply_start:], 30), seen[-300:]
        proc.stdin.write(b"/temp 0.3\n")
        proc.stdin.close()  # Ctrl-D
        assert proc.wait(30) == 0
        assert wait_for(lambda s: b"temperature=0.3" in s, 10), seen[-300:]
        err = proc.stderr.read().decode()
        # said once: the reply's stats line on stderr, not also a marker in the transcript
        assert err.count("cancelled") == 1, err
        assert re.search(r"^\[\d+ tokens, [\d.]+ tok/s, cancelled\]$", err, re.M), err
        assert b"cancelled" not in seen
        assert "Traceback" not in err
        assert "interrupted" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
