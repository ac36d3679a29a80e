"""Data-parallel helpers of the trainer: rank 0 decides, the other ranks receive.

Rank 0 alone claims or opens the run, prepares the data and writes the run directory; it
then broadcasts the resolved spec (or its error), and the other ranks take the same corpus
from the token cache. Conversations (`--sft`) are not cached: every rank reads them, with
the tokenizer rank 0 built sent along in the plan (its files), so a vocabulary trained on
the corpus (`bpe:N`) or taken from an `--init-from` source is the same on every rank and
machine without being trained again. A step's `grad_accum` micro-batches (the spec's
count is global) must split evenly over the ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from gptbench.backends.parallel import Collectives
from gptbench.errors import UserError
from gptbench.spec.run import RunSpec
from gptbench.spec.train import TrainConfig


class PeerFailed(UserError):
    """Rank 0 could not start or resume the run: it reports why, so the other ranks exit
    without a word (status 2 after a user error, else 1)."""

    quiet = True

    def __init__(self, user_error: bool) -> None:
        super().__init__("")
        self.exit_code = 2 if user_error else 1


def from_rank0(comm: Collectives, produce: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """Run `produce` on rank 0 alone and send the JSON half of its result to the others.

    `produce` returns (what rank 0 keeps, what every rank gets); the other ranks receive
    (None, the JSON half). An exception on rank 0 is re-raised there and becomes a quiet
    `PeerFailed` on the others, so no rank waits for a plan that will never come."""
    if comm.world_size == 1:
        return produce()
    if comm.rank == 0:
        try:
            kept, shared = produce()
        except BaseException as exc:
            comm.broadcast({"error": type(exc).__name__, "user": isinstance(exc, UserError)})
            raise
        comm.broadcast({"ok": shared})
        return kept, shared
    message = comm.broadcast(None)
    if "error" in message:
        raise PeerFailed(bool(message.get("user")))
    return None, message["ok"]


def data_plan(data: Any) -> dict[str, Any]:
    """What the other ranks need to load the corpus rank 0 prepared, and to check it (with
    conversations, the tokenizer's files themselves)."""
    plan = {"cache": data.info.get("cache"), "sha256": data.info.get("sha256"), "fingerprint": data.tokenizer.fingerprint()}
    if data.info.get("format") == "chat":
        plan["tokenizer_files"] = tokenizer_files(data.tokenizer)
    return plan


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """A tokenizer's saved files (tokenizer.json and any side file), base64, by name."""
    import base64
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gptbench-tok-") as tmp:
        tokenizer.save(Path(tmp))
        return {f.name: base64.b64encode(f.read_bytes()).decode("ascii") for f in sorted(Path(tmp).iterdir()) if f.is_file()}


def tokenizer_from_files(files: dict[str, str]) -> Any:
    """The tokenizer `tokenizer_files` described, rebuilt from its files."""
    import base64
    import tempfile

    from gptbench.tokenizers.registry import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="gptbench-tok-") as tmp:
        for name, blob in files.items():
            (Path(tmp) / Path(name).name).write_bytes(base64.b64decode(blob))
        return load_tokenizer(Path(tmp))


def shared_data(comm: Collectives, spec: RunSpec, block_size: int, data: Any, plan: dict[str, Any]) -> Any:
    """Rank 0's prepared corpus on every rank. The others read it from the token cache
    rank 0 filled (read-only), the first rank of every other machine before the rest (it
    may have to tokenize into its own cache), each checking the corpus hash and the
    tokenizer fingerprint against rank 0's. Collective."""
    if comm.world_size == 1:
        return data
    for first in (True, False):
        if comm.rank != 0 and (comm.parallel.local_rank == 0) == first:
            data = peer_data(spec, block_size, plan)
        comm.barrier()
    return data


def peer_data(spec: RunSpec, block_size: int, plan: dict[str, Any]) -> Any:
    from gptbench.chat.sft import prepare_run_data
    from gptbench.tokenizers.registry import load_tokenizer

    tokenizer = None
    cache = Path(plan["cache"]) if plan.get("cache") else None
    if cache is not None and (cache / "index.json").is_file():  # rank 0's machine: its very entry
        try:
            tokenizer = load_tokenizer(cache)
        except UserError:
            tokenizer = None
        if tokenizer is not None and tokenizer.fingerprint() != plan["fingerprint"]:
            tokenizer = None
    if plan.get("tokenizer_files"):  # conversations are not cached: every rank reads them with rank 0's tokenizer
        tokenizer = tokenizer_from_files(plan["tokenizer_files"])
    data = prepare_run_data(spec, block_size=block_size, tokenizer=tokenizer)
    if data.tokenizer.fingerprint() != plan["fingerprint"]:
        raise UserError(f"this rank built a different {spec.tokenizer} tokenizer than rank 0 from {spec.data or 'the default corpus'}; give every machine the same corpus and tokenizer files")
    if plan.get("sha256") and data.info.get("sha256") != plan["sha256"]:
        raise UserError(f"the corpus {spec.data or 'default'} differs between this machine and rank 0's (sha256); give every machine the same data")
    return data


def check_world(t: TrainConfig, comm: Collectives, name: str) -> None:
    """The step's micro-batches must split evenly over the ranks."""
    world = comm.world_size
    if t.grad_accum % world:
        raise UserError(
            f"run {name!r} takes {t.grad_accum} micro-batches per step, which {world} processes cannot share evenly; "
            f"use a number of processes that divides {t.grad_accum}, or pass --grad-accum to set each process's count (that changes the batch)"
        )
