"""What became of a launched job's ranks: the root cause, the outcome, the run's final status.

The launcher writes nothing while the ranks live: rank 0 owns the run directory. After
they have all exited it may write one thing, through `RunWriter` (whose lock proves rank 0
is gone): a final `failed` status naming the rank that failed first and how, when rank 0
was killed before it could say so, or said only that a collective broke.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from gptbench.errors import UserError

STOPPED = 130  # a rank's exit status after a graceful stop (as the one-process CLI)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def root_cause(codes: dict[int, int]) -> tuple[int, int]:
    """The rank that failed first, from every failed rank's exit code: one killed by a
    signal other than the launchers' own SIGTERM/SIGINT caused it, else one that exited
    with an error, else the lowest rank."""
    def order(item: tuple[int, int]) -> tuple[int, int]:
        rank, code = item
        if code < 0 and -code not in (signal.SIGTERM, signal.SIGINT):
            return (0, rank)
        if code > 0 and code not in (STOPPED,):
            return (1, rank)
        return (2, rank)
    return min(codes.items(), key=order)


def outcome(codes: dict[int, int], signalled: bool) -> str:
    """finished | stopped | user-error | failed, from the failed ranks' exit codes."""
    if not codes:
        return "stopped" if signalled else "finished"
    values = set(codes.values())
    # a rank that stopped gracefully makes torchrun terminate the others, which may be
    # past their handlers already: their SIGTERM is the launcher's, not a failure
    if (signalled or STOPPED in values) and values <= {STOPPED, 0, -signal.SIGINT, -signal.SIGTERM}:
        return "stopped"
    rank, code = root_cause(codes)
    if code == 2 and values <= {2, 1, 0, -signal.SIGTERM}:
        return "user-error"
    return "failed"


def settle_run(runs_root: Path, name: str, rank: int, code: int) -> str | None:
    """After every rank exited: make the run's final status say which rank failed and how,
    unless rank 0 already recorded a final state that is the whole story. Returns the
    message written, or None."""
    from gptbench.runstore import CorruptRunError, Run, RunState, RunWriter

    run = Run(Path(runs_root) / name)
    if not run.exists():
        return None
    try:
        st = run.status()
    except CorruptRunError:
        return None
    state = st.get("state")
    if state in (RunState.FINISHED.value, RunState.STOPPED.value):
        return None
    if state == RunState.FAILED.value and rank == 0:
        return None  # rank 0 failed and said why itself
    if st.get("host") not in (None, socket.gethostname()):
        return None  # rank 0 ran elsewhere: its status is not ours to settle
    try:
        writer = RunWriter.open(Path(runs_root), name)
    except UserError:
        return None  # still held: a rank outlived its launcher
    with writer:
        last = run.checkpoints()
        where = f"the last checkpoint is step {last[-1].step}" if last else "no checkpoint was saved"
        what = f"rank {rank} {describe_exit(code)}"
        if state == RunState.FAILED.value and st.get("error"):
            message = f"{what}; {st['error']}"
        else:
            message = f"{what} at step {st.get('step', 0)} ({where}); continue with --resume {name}"
        fields = {k: v for k, v in st.items() if k not in ("state", "pid", "host", "heartbeat", "error")}
        writer.set_status(RunState.FAILED, **fields, error=message)
        writer.log(message)
    return message


def finish(runs_root: Path, name: str, codes: dict[int, int], signalled: bool) -> int:
    """The launcher's exit status (as one process's: 0, 130 stopped, 2 user error, 1
    failed), after settling the run's status; one line on stderr for a failure."""
    result = outcome(codes, signalled)
    if result == "finished":
        return 0
    if result == "stopped":
        return STOPPED
    if result == "user-error":
        return 2  # the rank that refused said why, in one line
    rank, code = root_cause(codes)
    settle_run(runs_root, name, rank, code)
    print(f"gptbench: error: rank {rank} {describe_exit(code)}; continue from the last checkpoint with "
          f"gptbench train --no-ui --resume {name}", file=sys.stderr)
    return 1
