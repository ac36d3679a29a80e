"""The CPU thread policy (`gptbench.backends.cpu`): how many threads training uses beside other
processes, when it switches, and when it leaves the user's choice alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gptbench.backends import cpu
from gptbench.backends.registry import create_backend
from helpers import tiny_model_config


@pytest.mark.parametrize("cores, others, threads", [
    (2, 0.0, 2), (2, 0.3, 2), (2, 0.49, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1),
    (4, 0.2, 4), (4, 1.0, 3), (4, 1.6, 2), (4, 3.9, 1), (1, 0.0, 1),
])
def test_threads_are_the_cores_others_leave_free(cores, others, threads):
    assert cpu.threads_for(cores, others) == threads


class ScriptedMeter:
    def __init__(self, loads):
        self.loads = list(loads)

    def others(self) -> float:
        return self.loads.pop(0)


def ticking(policy, loads, monkeypatch) -> list:
    """Tick once per (faked) second through `loads`; the switches it made."""
    policy.meter = ScriptedMeter(loads)
    clock = [1000.0]
    monkeypatch.setattr(cpu.time, "monotonic", lambda: clock[0])
    policy._next = clock[0]
    out = []
    for _ in loads:
        out.append(policy.tick())
        clock[0] += cpu.INTERVAL_S
    return out


def test_the_policy_switches_after_two_agreeing_seconds_and_ignores_blips(monkeypatch):
    applied = []
    policy = cpu.ThreadPolicy(applied.append, cores=2, threads=2)
    switches = ticking(policy, [0.1, 0.9, 0.1, 0.9, 1.0, 1.0, 0.2, 0.1], monkeypatch)
    assert applied == [1, 2]  # the lone 0.9 at second 2 changed nothing
    assert switches[4] == (1, 1.0)
    assert switches[7] == (2, 0.1)
    assert [s for s in switches if s is not None] == [(1, 1.0), (2, 0.1)]
    assert policy.threads == 2


def test_the_meter_sees_a_busy_process(monkeypatch):
    meter = cpu.CpuMeter()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        meter.others()  # from here on the hog is running
        time.sleep(1.0)
        busy = meter.others()
    finally:
        hog.kill()
        hog.wait()
    assert busy > 0.6  # a whole core, less what the scheduler gave others


def test_the_users_choice_and_backends_that_cannot_adapt_are_left_alone(monkeypatch):
    torch_be = create_backend(tiny_model_config(), "torch", device="cpu")
    for name in cpu.USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert cpu.ThreadPolicy.for_backend(torch_be) is not None
    for name in cpu.USER_THREAD_VARIABLES:
        monkeypatch.setenv(name, "1")
        assert cpu.ThreadPolicy.for_backend(torch_be) is None, name
        monkeypatch.delenv(name)
    mlx_be = create_backend(tiny_model_config(), "mlx", device="cpu")
    assert mlx_be.cpu_threads() is None
    assert cpu.ThreadPolicy.for_backend(mlx_be) is None


def test_a_switch_changes_torch_threads_and_is_logged(capsys, runs_dir, corpus_file, monkeypatch):
    """Through the command: a trainer beside a busy process logs its switch to fewer threads."""
    import torch

    from helpers import run_cli_output

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: there is nothing to adapt")
    for name in cpu.USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    real = cpu.CpuMeter.others
    monkeypatch.setattr(cpu.CpuMeter, "others", lambda self: (real(self), 1.5)[1])  # as if others took 1.5 cores
    monkeypatch.setattr(cpu, "INTERVAL_S", 0.0)
    before = torch.get_num_threads()
    try:
        rc, out, _ = run_cli_output(capsys, "--runs-dir", runs_dir, "train", "--no-ui", "--data", corpus_file, "--name", "busy",
                                    "--device", "cpu", "--backend", "torch", "--max-iters", "6", "--n-layer", "1", "--n-embd", "16",
                                    "--n-head", "2", "--block-size", "16", "--sample-tokens", "0", "--eval-iters", "2")
        assert rc == 0
        assert torch.get_num_threads() == 1
        assert "other processes use 1.5 of" in out
        assert "training on 1 thread now" in (runs_dir / "busy" / "log.txt").read_text()
    finally:
        torch.set_num_threads(before)


def test_generation_adapts_its_threads_too(monkeypatch):
    """A torch backend that only generates runs the same policy, ticked once a token."""
    import torch

    from gptbench.backends.generate import generate_tokens
    from gptbench.backends.sampling import SamplingParams

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: there is nothing to adapt")
    for name in cpu.USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu.CpuMeter, "others", lambda self: 1.5)
    monkeypatch.setattr(cpu, "INTERVAL_S", 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        be = create_backend(tiny_model_config(), "torch", device="cpu")
        list(generate_tokens(be, [[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=6)))
        assert torch.get_num_threads() == 1
        assert be._decode_threads.switches[-1][1] == 1
    finally:
        torch.set_num_threads(before)
