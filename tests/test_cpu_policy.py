"""The CPU thread policy (`gptbench.backends.cpu`): how many threads training uses beside other
processes, when it switches, and when it leaves the user's choice alone."""

from __future__ import annotations

import io
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


def _cpu_ticks(pid: int | str) -> int:
    """utime + stime of a process, in clock ticks (what the meter reads for itself)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_the_meter_sees_a_busy_process():
    """The meter counts a busy process it does not own: over the meter's window it reports
    at least the CPU the hog itself used (its own /proc counters say how much), however
    busy the rest of the machine is. The window closes once the hog has used 0.3 s of
    CPU, so a loaded machine makes it longer, never wrong."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        tick = os.sysconf("SC_CLK_TCK")
        meter = cpu.CpuMeter()
        window_start = meter._last[2]
        h0 = _cpu_ticks(hog.pid)
        deadline = time.monotonic() + 120  # only a hog that never runs gets here
        while _cpu_ticks(hog.pid) - h0 < 0.3 * tick:
            assert time.monotonic() < deadline, "the hog never got a core"
            time.sleep(0.1)
        hog_ticks = _cpu_ticks(hog.pid) - h0
        others = meter.others()
        seen_ticks = others * tick * (meter._last[2] - window_start)
    finally:
        hog.kill()
        hog.wait()
    assert seen_ticks >= 0.9 * hog_ticks - 2, (seen_ticks, hog_ticks)  # accounting granularity aside


def _fake_proc(monkeypatch, readings) -> None:
    """/proc/stat and /proc/self/stat as scripted: (machine busy ticks, own ticks, time)."""
    script = list(readings)
    pending: list = []

    def fake_open(path, encoding=None):
        if path == "/proc/stat":
            busy, own, now = script.pop(0)
            pending[:] = [own]
            clock[0] = now
            return io.StringIO(f"cpu  {busy} 0 0 5000 7 0 0 0 0 0\ncpu0 1 2 3\n")
        assert path == "/proc/self/stat", path
        fields = ["S"] + ["0"] * 10 + [str(pending[0]), "0"] + ["0"] * 30
        return io.StringIO("4242 (python3) " + " ".join(fields) + "\n")

    clock = [0.0]
    monkeypatch.setattr(cpu, "open", fake_open, raising=False)
    monkeypatch.setattr(cpu.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(cpu.os, "sysconf", lambda name: 100)


def test_the_meter_subtracts_its_own_process(monkeypatch):
    """others = (machine busy - this process), in cores over the elapsed time; never negative."""
    _fake_proc(monkeypatch, [(1000, 200, 10.0), (1000 + 300, 200 + 100, 12.0), (1300 + 50, 300 + 80, 13.0)])
    meter = cpu.CpuMeter()
    assert meter.others() == 1.0  # 300 busy ticks, 100 of them ours, over 2 s at 100 ticks/s
    assert meter.others() == 0.0  # we used more than the machine's delta: clamped


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
