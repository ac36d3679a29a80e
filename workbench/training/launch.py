"""Several processes for one run: start them through torchrun or mlx.launch, and, inside
one, tell which rank it is.

`gptbench train --nproc N ...` (or `--hostfile FILE` with MLX) does not train: it is the
launcher. It checks what it can in one process (the flags, the devices, the launcher
program), then runs the same request (`gptbench.spec.cli.request_argv`, without
`--nproc`/`--hostfile`) on N ranks:

- torch: `torch.distributed.run` (torchrun's own code) in this process, `--standalone`
  (a free port, one machine). Why in-process rather than a `torchrun` child: its
  `ChildFailedError` names every failed rank with its exit code, which a child's exit
  status (always 1) loses, and the signal handlers it installs matter only to this
  short-lived process. torchrun gives each worker its own session and forwards SIGINT,
  SIGTERM and SIGHUP to them; when one worker fails it terminates the others.
- MLX: `mlx.launch --backend ring -n N -p PORT -- python -m gptbench ...` as a child in
  its own session (a free port range is picked, since two jobs cannot share one). mlx.launch
  exits 0 whatever its ranks did, so their fates are read from its warnings
  ("Node with rank R exited with code C") on the stderr it relays; a signal to this
  launcher is passed to the ranks (its children) as SIGINT, the graceful stop.

Ranks find their place from the launcher's environment (`worker_parallel`): RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from torchrun; MLX_RANK and MLX_HOSTFILE from
mlx.launch. Started by hand (`torchrun ... -m gptbench train ...`, `mlx.launch ...`), a
command behaves the same, only without this launcher's summary.

The launcher writes nothing while the ranks live: rank 0 owns the run directory. After
they have all exited it may write one thing, through `RunWriter` (whose lock proves rank 0
is gone): a final `failed` status naming the rank that failed first and how, when rank 0
was killed before it could say so, or said only that a collective broke.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gptbench.backends.parallel import FSDP_TORCH_ONLY
from gptbench.errors import UserError
from gptbench.training.fates import finish
from gptbench.training.ranks import rank_environment, usable_cpus

SHUTDOWN_TIMEOUT_S = 120  # torchrun's wait for ranks to save their checkpoint after Ctrl-C
# After an MLX rank dies, how long the others get to notice before they are stopped: the
# ring backend has no timeout, and a rank blocked in a collective whose peer vanished can
# wait in native code forever (seen about 1 run in 4 here), deaf to SIGINT and SIGTERM.
MLX_PEER_GRACE_S = 5.0
FSDP_MIN_TORCH = (2, 6)  # fully_shard (FSDP2) became public API in torch 2.6
MLX_NODE_RE = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")


def check_torch_request(nproc: int, device: str, strategy: str) -> bool:
    """One-line errors for what torch cannot do; returns whether the ranks use GPUs."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; install a standard torch wheel to train on several processes")
    if strategy == "fsdp" and tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < FSDP_MIN_TORCH:
        raise UserError(f"--strategy fsdp needs torch >= {'.'.join(map(str, FSDP_MIN_TORCH))} (torch.distributed.fsdp.fully_shard); "
                        f"this is torch {torch.__version__}: upgrade it, or use --strategy ddp")
    kind = device.split(":")[0]
    if kind == "mps":
        raise UserError("several processes cannot share --device mps; use --device cpu, or one process")
    if ":" in device and nproc > 1:
        raise UserError(f"with --nproc each rank uses cuda:LOCAL_RANK; pass --device cuda instead of {device}")
    gpus = kind == "cuda" or (device == "auto" and torch.cuda.is_available())
    if gpus:
        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available; use --device auto or cpu")
        if not dist.is_nccl_available():
            raise UserError("this torch build has no NCCL, which several GPU processes need; install a CUDA torch wheel, or pass --device cpu")
        have = torch.cuda.device_count()
        if nproc > have:
            raise UserError(f"--nproc {nproc} needs {nproc} GPUs but this machine has {have}; use --nproc {have} or fewer")
    else:
        cpus = usable_cpus()
        if nproc > cpus:
            raise UserError(f"--nproc {nproc} is more processes than the {cpus} CPU cores this machine gives us; use --nproc {cpus} or fewer")
    return gpus


def find_mlx_launch() -> str:
    found = shutil.which("mlx.launch", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if found is None:
        raise UserError("--backend mlx with several processes starts them through mlx.launch, which is not on PATH; "
                        "install mlx (pip install mlx) in this environment, or train on one process")
    return found


def check_mlx_request(nproc: int, hostfile: str | None, strategy: str, activation_checkpointing: bool) -> int:
    """One-line errors for what MLX cannot do; returns the number of ranks."""
    if strategy != "ddp":
        raise UserError(FSDP_TORCH_ONLY)
    if activation_checkpointing:
        raise UserError("the mlx backend has no activation checkpointing; drop --activation-checkpointing (or use --backend torch)")
    if hostfile is not None:
        try:
            data = json.loads(Path(hostfile).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot read --hostfile {hostfile}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"--hostfile {hostfile} is not JSON ({exc.msg} at line {exc.lineno}); see mlx.launch's hostfile format") from None
        hosts = data.get("hosts") if isinstance(data, dict) else data
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) and h.get("ips") for h in hosts):
            raise UserError(f'--hostfile {hostfile} must list hosts with their IPs: [{{"ssh": "mac1", "ips": ["10.0.0.1"]}}, ...]')
        if nproc not in (0, len(hosts)):
            raise UserError(f"--nproc {nproc} but --hostfile {hostfile} lists {len(hosts)} hosts (one rank each); drop --nproc")
        nproc = len(hosts)
    else:
        cpus = usable_cpus()
        if nproc > cpus:
            raise UserError(f"--nproc {nproc} is more processes than the {cpus} CPU cores this machine gives us; use --nproc {cpus} or fewer")
    find_mlx_launch()
    return nproc


def free_port_range(count: int) -> int:
    """A base port with `count` consecutive ports free on this machine (mlx.launch's ring
    listens on base, base+1, ...; its default 32323 collides between jobs)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise UserError("found no free range of ports for the MLX ring; close other jobs and try again")


def run_torch(nproc: int, worker_argv: list[str], env: dict[str, str]) -> tuple[dict[int, int], bool]:
    """Run the ranks under torchrun's agent in this process: (failed ranks' exit codes, signalled)."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args([
        "--standalone", "--nproc-per-node", str(nproc), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S),
        "--module", "gptbench", *worker_argv,
    ])
    # The agent's log lines (rendezvous, "closing signal", "failed (exitcode...)") are
    # replaced by this launcher's one-line summary; the ranks' own output is untouched.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    saved_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the agent hands its environment to the ranks
    try:
        torchrun.run(args)
        return {}, False
    except ChildFailedError as exc:
        return {int(rank): int(f.exitcode) for rank, f in exc.failures.items()}, False
    except SignalException:
        # The agent passed the first signal on and waited for the ranks' graceful stop; a
        # second one interrupts that wait: pass it on too (the ranks abort), then reap them.
        _interrupt_and_reap(child_pids(os.getpid()))
        return {}, True
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _interrupt_and_reap(pids: list[int], timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
    """SIGINT to ranks still alive (this process's children), then wait for them; SIGKILL
    whatever outlives `timeout`."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the ranks are stopping: nothing more to pass on
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGINT)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                alive.remove(pid)
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_mlx(nproc: int, hostfile: str | None, worker_argv: list[str], env: dict[str, str]) -> tuple[dict[int, int], bool]:
    """Run the ranks under mlx.launch (a child): (failed ranks' exit codes, signalled)."""
    cmd = [find_mlx_launch(), "--backend", "ring"]
    cmd += ["--hostfile", hostfile] if hostfile else ["-n", str(nproc)]
    cmd += ["-p", str(free_port_range(nproc)), "--", sys.executable, "-m", "gptbench", *worker_argv]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    codes: dict[int, int] = {}
    signalled = threading.Event()
    peer_died: list[float] = []  # when a rank first exited abnormally

    def relay() -> None:  # mlx.launch's stderr (the ranks' and its own) to ours, read for fates
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, b""):
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
            m = MLX_NODE_RE.search(line.decode("utf-8", "replace"))
            if m:
                code = int(m.group(2)) if m.group(2) is not None else -signal.SIGTERM
                codes.setdefault(int(m.group(1)), code)
                if code != 0 and not peer_died:
                    peer_died.append(time.monotonic())

    def forward(signum: int, frame: Any) -> None:  # the graceful stop, to the ranks themselves
        signalled.set()
        for pid in child_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    stopped_by_launcher: set[int] = set()  # ranks stopped because a peer died first
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if peer_died and not stopped_by_launcher and time.monotonic() - peer_died[0] > MLX_PEER_GRACE_S:
                # They have not noticed (blocked in native code: SIGINT/SIGTERM would wait
                # for Python, and a graceful stop would need the dead peer): SIGKILL. The
                # run's status is settled below, naming the rank that died first.
                for pid in child_pids(proc.pid):
                    stopped_by_launcher.add(_mlx_rank_of(pid))
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    reader.join(timeout=5)
    return {r: c for r, c in codes.items() if c != 0 and r not in stopped_by_launcher}, signalled.is_set()


def _mlx_rank_of(pid: int) -> int:
    """The MLX_RANK a rank process was started with (-1 if unreadable)."""
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"MLX_RANK="):
                return int(item[len(b"MLX_RANK="):])
    except (OSError, ValueError):
        pass
    return -1


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (mlx.launch's ranks: it execs each through bash)."""
    tasks = Path(f"/proc/{pid}/task")
    if tasks.is_dir():  # Linux: children are listed per thread (mlx.launch starts them from threads)
        found: list[int] = []
        for task in tasks.iterdir():
            try:
                found += [int(p) for p in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
        return found
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=5).stdout
        return [int(p) for p in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def launch(framework: str, nproc: int, hostfile: str | None, argv: list[str], runs_root: Path, name: str,
           threads: int | None, on_cpu: bool) -> int:
    """Start `argv` (a `gptbench` command line without the launcher options) on the ranks,
    wait for all of them, settle the run and return the launcher's exit status."""
    env = rank_environment(nproc, threads, on_cpu)
    if framework == "torch":
        codes, signalled = run_torch(nproc, argv, env)
    else:
        codes, signalled = run_mlx(nproc, hostfile, argv, env)
    return finish(runs_root, name, codes, signalled)
