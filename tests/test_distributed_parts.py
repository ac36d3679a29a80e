"""Data-parallel training, the parts that need no training run: the one-line refusals
(nothing launched), the launcher's bookkeeping, a rank's environment, and what every
backend promises on one process without a group. The runs themselves, two processes
against one, are in test_distributed.py.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest


# ---- refusals: one line, exit 2, nothing launched ----------------------------------------------------
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gptbench: error: ")
    return lines[0]


def test_more_processes_than_cpu_cores_is_refused(runs_dir, corpus_file, capsys):
    from gptbench.cli import main

    rc = main(["--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file), "--backend", "torch",
               "--device", "cpu", "--nproc", "100000"])
    assert rc == 2
    assert "--nproc 100000 is more processes than the" in _one_line_error(capsys)
    assert list(runs_dir.iterdir()) == []


def test_more_processes_than_gpus_and_missing_nccl_are_refused(runs_dir, corpus_file, capsys, monkeypatch):
    import torch
    import torch.distributed as dist

    from gptbench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    base = ["--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file), "--backend", "torch", "--device", "cuda"]
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert main([*base, "--nproc", "2"]) == 2
    assert "--nproc 2 needs 2 GPUs but this machine has 1" in _one_line_error(capsys)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert main([*base, "--nproc", "2"]) == 2
    assert "no NCCL" in _one_line_error(capsys)


def test_mlx_launch_missing_is_refused(runs_dir, corpus_file, capsys, monkeypatch, tmp_path):
    from gptbench.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no mlx.launch on PATH...
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # ...nor beside the interpreter
    rc = main(["--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file), "--backend", "mlx", "--nproc", "2"])
    assert rc == 2
    assert "starts them through mlx.launch, which is not on PATH" in _one_line_error(capsys)


@pytest.mark.parametrize("flags, message", [
    (["--backend", "mlx", "--nproc", "2", "--strategy", "fsdp"], "--strategy fsdp is torch only"),
    (["--backend", "mlx", "--nproc", "2", "--activation-checkpointing"], "the mlx backend has no activation checkpointing"),
    (["--backend", "torch", "--strategy", "fsdp"], "--strategy fsdp shards the model over several processes; add --nproc N"),
    (["--backend", "torch", "--nproc", "0"], "--nproc must be >= 1"),
    (["--backend", "torch", "--nproc", "2", "--hostfile", "hosts.json"], "--hostfile lists Macs for mlx.launch"),
])
def test_impossible_requests_are_one_line(runs_dir, corpus_file, capsys, flags, message):
    from gptbench.cli import main

    rc = main(["--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file), "--device", "cpu", *flags])
    assert rc == 2
    assert message in _one_line_error(capsys)


def test_a_bad_hostfile_is_refused(runs_dir, corpus_file, capsys, tmp_path):
    from gptbench.cli import main

    hosts = tmp_path / "hosts.json"
    hosts.write_text('[{"ssh": "mac1"}]')
    rc = main(["--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file), "--backend", "mlx", "--hostfile", str(hosts)])
    assert rc == 2
    assert "must list hosts with their IPs" in _one_line_error(capsys)


# ---- the pieces: launcher bookkeeping and the rank's environment ---------------------------------------
def test_launcher_options_are_stripped_from_the_ranks_command(tmp_path):
    """Ranks get the launcher's request whole, minus what only the launcher reads."""
    from gptbench.cli import build_parser
    from gptbench.spec.cli import request_argv, request_from_args

    hosts = tmp_path / "h.json"
    hosts.write_text("[]")
    for argv in (["train", "--no-ui", "--nproc", "2", f"--hostfile={hosts}", "--name", "x", "--lr", "1"],
                 ["train", "--no-ui", "--resume", "x", "--nproc=3", "--lr", "1"]):
        request = request_from_args(build_parser().parse_args(argv))
        rank_argv = request_argv(request, for_rank=True)
        assert not [a for a in rank_argv if a.split("=")[0] in ("--nproc", "--hostfile")]
        again = request_from_args(build_parser().parse_args(["train", "--no-ui", *rank_argv]))
        assert (again.name, "--lr" in rank_argv) == (request.name, True)


@pytest.mark.parametrize("codes, signalled, expected", [
    ({}, False, "finished"),
    ({0: 130, 1: 130}, False, "stopped"),
    ({0: 130, 1: -15}, False, "stopped"),  # torchrun terminated a rank already past its handlers
    ({}, True, "stopped"),
    ({0: 2, 1: 2}, False, "user-error"),
    ({0: 2, 1: -15}, False, "user-error"),
    ({1: -9, 0: 1}, False, "failed"),
    ({0: 1, 1: -15}, False, "failed"),
])
def test_the_launcher_reads_the_ranks_exit_codes(codes, signalled, expected):
    from gptbench.training.fates import outcome

    assert outcome(codes, signalled) == expected


def test_the_root_cause_is_the_killed_rank_not_the_ones_it_broke():
    from gptbench.training.fates import root_cause

    assert root_cause({0: 1, 1: -9}) == (1, -9)  # rank 0 failed because rank 1 was killed
    assert root_cause({0: -15, 1: 1}) == (1, 1)  # rank 1 failed; the launcher then terminated rank 0
    assert root_cause({0: 1, 1: 1}) == (0, 1)


def test_a_rank_knows_its_place_from_torchrun_and_mlx_launch(monkeypatch, tmp_path):
    from gptbench.training.ranks import worker_parallel

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MLX_RANK", "MLX_HOSTFILE"):
        monkeypatch.delenv(key, raising=False)
    assert worker_parallel() == (None, worker_parallel()[1])
    assert worker_parallel()[1].world_size == 1
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    framework, par = worker_parallel("fsdp", True)
    assert framework == "torch"
    assert (par.rank, par.world_size, par.local_rank, par.local_world_size, par.strategy, par.activation_checkpointing) == (3, 4, 1, 2, "fsdp", True)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key)
    hosts = tmp_path / "ring.json"
    hosts.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.1:5001"], ["10.0.0.2:5000"]]))
    monkeypatch.setenv("MLX_HOSTFILE", str(hosts))
    monkeypatch.setenv("MLX_RANK", "1")
    framework, par = worker_parallel()
    assert framework == "mlx"
    assert (par.rank, par.world_size, par.local_rank, par.local_world_size) == (1, 3, 1, 2)
    hosts.write_text("\n")  # mlx.launch -n 1 writes an empty hostfile: one process
    assert worker_parallel()[1].world_size == 1


def test_skipping_a_batch_moves_the_stream_as_drawing_it_does():
    from gptbench.data import get_batch, skip_batch

    data = np.arange(1000, dtype=np.uint16)
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    get_batch(data, 4, 16, a)
    skip_batch(data, 4, 16, b)
    xa, ya = get_batch(data, 4, 16, a)
    xb, yb = get_batch(data, 4, 16, b)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)


# ---- the contract's one-process side: what every backend promises without a group ------------------
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_one_process_collectives_are_the_identity(backend):
    from gptbench.backends.parallel import Collectives, Parallel
    from gptbench.backends.registry import backend_class

    comm = backend_class(backend).connect(Parallel(), "cpu")
    assert type(comm) is Collectives
    assert (comm.rank, comm.world_size, comm.name) == (0, 1, "local")
    assert comm.sum([1.5, -2.0]) == [1.5, -2.0]
    assert comm.any(True) is True
    assert comm.any(False) is False
    assert comm.broadcast({"a": [1, 2]}) == {"a": [1, 2]}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_backend_refuses_a_group_it_was_not_started_in(backend, monkeypatch):
    """connect() with a world of 2 but no launcher environment: torch cannot rendezvous
    (no MASTER_ADDR), MLX's ring has no hostfile; both fail instead of training alone."""
    from gptbench.backends.parallel import Parallel
    from gptbench.backends.registry import backend_class

    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "MLX_RANK", "MLX_HOSTFILE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises((RuntimeError, ValueError)):
        backend_class(backend).connect(Parallel(world_size=2, rank=1), "cpu")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_peak_memory_and_memory_shared_by_processes(backend):
    from gptbench.backends.registry import backend_class, create_backend
    from helpers import tiny_model_config

    b = create_backend(tiny_model_config(), backend, device="cpu")
    assert b.peak_memory() > 10 * 2**20  # at least the interpreter and the framework
    cls = backend_class(backend)
    one, two = cls.available_memory("cpu"), cls.available_memory("cpu", processes=2)
    assert one is not None
    assert two is not None
    assert abs(two - one / 2) < one * 0.1  # CPU ranks on one machine share its memory


def test_memory_estimate_shrinks_with_shards_and_checkpointing():
    from helpers import tiny_model_config

    cfg = tiny_model_config(n_layer=8, n_embd=64, block_size=64)
    full = cfg.training_bytes(8)
    assert cfg.training_bytes(8, shards=4) == pytest.approx(full - 16 * cfg.num_params() * 3 / 4, abs=1)
    B, T, C, L = 8, 64, 64, 8
    assert full - cfg.training_bytes(8, checkpointed=True) == 34 * 2 * L * B * T * C - (4 * L * B * T * C + 34 * 2 * B * T * C)


def test_fsdp_on_a_torch_older_than_2_6_is_refused(runs_dir, corpus_file, capsys, monkeypatch):
    import torch

    from gptbench.cli import main

    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    rc = main(["--runs-dir", str(runs_dir), "train", "--no-ui", "--data", str(corpus_file), "--backend", "torch", "--device", "cpu",
               "--nproc", "2", "--strategy", "fsdp"])
    assert rc == 2
    assert "--strategy fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); this is torch 2.5.1+cpu" in _one_line_error(capsys)
    assert list(runs_dir.iterdir()) == []
