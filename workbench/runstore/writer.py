"""`RunWriter`: the only code that writes a run directory.

Claim, then check. A trainer first claims its run (an exclusive `mkdir`, then an flock on
`.lock` held for its whole life), and only then loads data or builds a model, so two
trainers can never both own a name. A claim left by a process killed before it wrote its
config can be taken over; anything with a config is a run, resumed with `open`.

Every file but the append-only ones is written to a temporary file, fsynced and renamed
(`fsutil.atomic_path`); an append-only file has a torn last line (a crash mid-append)
cut back before this writer's first append to it (`appendonly.repair_tail`). A checkpoint writes its state file first and its weights
file last, so a complete weights file marks a complete checkpoint. Retention lists the
directory, which also removes what killed writes left behind. Nothing is written or
deleted outside the runs directory: a run that is a symbolic link, or holds one where a
run file belongs, is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from gptbench.errors import UserError
from gptbench.fsutil import atomic_write_json, atomic_write_text, fsync_dir
from gptbench.runstore.appendonly import TORN_SUFFIX, TornTail, iter_jsonl, repair_tail
from gptbench.runstore.checkpoints import CheckpointInfo, find_checkpoints, retain_checkpoints
from gptbench.runstore.format import (
    CHECKPOINTS,
    CONFIG,
    LOCK,
    LOG,
    METRICS,
    STATUS,
    TMP_SUFFIX,
    TOKENIZER,
    MetricRecord,
    RunState,
    check_config,
    record_dict,
    state_file,
    validate_run_name,
    weights_file,
)
from gptbench.runstore.lock import RunLock, is_locked
from gptbench.runstore.reader import Run

if TYPE_CHECKING:
    from gptbench.backends.lora import LoRAConfig
    from gptbench.backends.spec import GPTConfig
    from gptbench.tokenizers.base import Tokenizer

# What a claim that never got a config may hold; a folder with anything else is not ours.
STAGING_SUFFIX = ".staging"
CLAIM_LEFTOVERS = frozenset({LOCK, STATUS, LOG, METRICS, CHECKPOINTS, TOKENIZER, "tokenizer.tiktoken"})
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _owner(run: Run) -> str:
    try:
        st = run.status()
    except UserError:
        st = {}
    return f"pid {st.get('pid')}" if st.get("pid") else "another process"


def _inside(root: Path, path: Path) -> None:
    """Refuse a run path that is a link or leads outside the runs directory."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; gptbench never writes through links in the runs directory (move the run there instead)")
    if path.exists() and path.resolve().parent != root.resolve():
        raise UserError(f"refusing to write {path}: it is not a run inside {root}")


class RunWriter:
    """Owns one run directory while it is open: holds its lock, writes its files."""

    def __init__(self, run: Run, lock: RunLock) -> None:
        self.run = run
        self.lock = lock
        self._started = time.time()
        self._final_name: str | None = None  # set for a staged run until it is committed
        self._tails_checked: set[str] = set()  # append-only files whose tail this writer repaired

    @property
    def path(self) -> Path:
        return self.run.path

    # ---- claiming ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, name: str) -> "RunWriter":
        """Claim a new run `name` under `root` and mark it `starting`.

        Raises UserError if a run of that name exists (resume it instead) or another
        process is creating or training it."""
        validate_run_name(name)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / name
        _inside(root, path)
        lock = RunLock(path)
        try:
            os.mkdir(path)
            fresh = True
        except FileExistsError:
            fresh = False
        if not path.is_dir():
            raise UserError(f"{path} exists and is not a folder; choose another --name")
        if not lock.try_acquire():
            raise UserError(f"run {name!r} is being created or trained by {_owner(Run(path))}; choose another --name")
        writer = cls(Run(path), lock)
        if not fresh:
            if (path / CONFIG).exists():
                lock.release()
                raise UserError(f"run {name!r} already exists in {root}; continue it with --resume {name}, or choose another --name")
            foreign = [e for e in os.listdir(path) if e not in CLAIM_LEFTOVERS and not e.endswith((TMP_SUFFIX, TORN_SUFFIX))]
            if foreign:
                lock.release()
                raise UserError(f"{path} exists and is not a gptbench run (it holds {foreign[0]!r}); choose another --name")
            writer._clear_claim()  # a claim abandoned before its config was written
        writer._check_no_links()
        writer.set_status(RunState.STARTING, step=0)
        return writer

    @classmethod
    def open(cls, root: Path, name: str) -> "RunWriter":
        """Open an existing run for writing (resume, rename, delete): take its lock and
        clear what killed writes left behind. Raises UserError if another process holds it."""
        validate_run_name(name)
        root = Path(root)
        path = root / name
        _inside(root, path)
        if not path.is_dir():
            raise UserError(f"no run named {name!r} in {root}")
        lock = RunLock(path)
        if not lock.try_acquire():
            raise UserError(f"run {name!r} is locked by another trainer or tool ({_owner(Run(path))}); stop it first")
        writer = cls(Run(path), lock)
        try:
            writer._check_no_links()
            writer._remove_temporaries()
        except BaseException:
            lock.release()
            raise
        return writer

    @classmethod
    def stage(cls, root: Path, name: str) -> "RunWriter":
        """A new run written out of sight (a hidden folder in `root`, skipped by listings)
        for `commit` to move into place whole: `convert` writes runs this way, so a failed
        conversion leaves nothing and never touches an existing run. Staging folders left
        by killed conversions of the same name are removed first."""
        validate_run_name(name)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        prefix = f".{name}."
        for old in root.glob(f"{prefix}*{STAGING_SUFFIX}"):
            if old.is_dir() and not old.is_symlink() and not is_locked(old):
                shutil.rmtree(old, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=STAGING_SUFFIX, dir=root))
        os.chmod(path, 0o755 & ~_umask())
        lock = RunLock(path)
        lock.try_acquire()
        writer = cls(Run(path), lock)
        writer._final_name = name
        return writer

    def commit(self, *, replace: bool = False) -> Run:
        """Move a staged run into place (an existing run there is replaced only with
        `replace`, and never while in use); returns the run."""
        name = self._final_name
        if name is None:
            raise RuntimeError("commit() is for runs made with RunWriter.stage()")
        root = self.path.parent
        target = root / name
        _inside(root, target)
        if target.exists():
            if not replace:
                raise UserError(f"run {name!r} already exists in {root}; pass --force to overwrite it or choose another name")
            old = RunWriter.open(root, name)  # refuses a run in use
            trash = root / f".{name}.old-{os.getpid()}"
            os.rename(target, trash)
            try:
                os.rename(self.path, target)
            except BaseException:
                os.rename(trash, target)
                old.close()
                raise
            old.close()
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.path, target)
        fsync_dir(root)
        self.run = Run(target)
        self._final_name = None
        self.close()
        return self.run

    def discard(self) -> None:
        """Remove a staged run that will not be committed."""
        if self._final_name is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        self.close()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def abandon(self) -> None:
        """Remove a claim that never became a run (no config written): the name is free
        again. Does nothing to a run that has a config."""
        if not (self.path / CONFIG).exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.close()

    # ---- files -----------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """config.json, checked against the schema first: the writer never writes a run
        that its own readers would call corrupt."""
        check_config(json.loads(json.dumps(config)), str(self.run.config_path))
        atomic_write_json(self.run.config_path, dict(config))

    def save_tokenizer(self, tokenizer: "Tokenizer") -> None:
        tokenizer.save(self.path)

    def set_status(self, state: RunState, **fields: Any) -> None:
        """status.json with the state, this process and a fresh heartbeat (`fields` add to
        or override them). On a full disk it falls back to rewriting the small file in
        place, so a final status still lands when a temporary file cannot be made."""
        status = {"state": RunState(state).value, "pid": os.getpid(), "host": socket.gethostname(),
                  "heartbeat": time.time(), "started": self._started, **fields}
        try:
            atomic_write_json(self.run.status_path, status)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            data = (json.dumps(status, indent=2, sort_keys=True) + "\n").encode()
            fd = os.open(self.run.status_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, data)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)

    def append_metric(self, record: MetricRecord) -> None:
        self._append(self.run.metrics_path, json.dumps(record_dict(record)) + "\n")

    def log(self, message: str, at: float | None = None) -> None:
        """Append a line to log.txt, stamped with local time (now, or `at`)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        self._append(self.run.log_path, f"{stamp} {message}\n")

    def _append(self, path: Path, text: str) -> None:
        self._repair_tail_once(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)

    def _repair_tail_once(self, path: Path) -> TornTail | None:
        """Before this writer's first append to `path`, cut a torn last line left by a
        crash (kept in `<file>.torn`) and say so in log.txt, so the next record starts on
        its own line. Every append-only file goes through here, whatever its name."""
        if path.name in self._tails_checked:
            return None
        self._tails_checked.add(path.name)
        torn = repair_tail(path)
        if torn is not None:
            self.log(torn.describe())
        return torn

    def rewind(self, step: int) -> int:
        """Drop metric records after `step` (a resume re-logs them), atomically; returns
        how many were dropped. log.txt keeps its history: it is the human record."""
        self._repair_tail_once(self.run.metrics_path)
        records = list(iter_jsonl(self.run.metrics_path))
        keep = [r for r in records if not (isinstance(r.get("step"), int) and r["step"] > step)]
        if len(keep) != len(records):
            atomic_write_text(self.run.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
        return len(records) - len(keep)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(
        self,
        step: int,
        config: "GPTConfig",
        weights: Mapping[str, np.ndarray],
        state: Mapping[str, np.ndarray] | None,
        trainer_state: Mapping[str, Any] | None,
        *,
        val_loss: float | None,
        keep_last: int,
        dtype: str = "float32",
        lora: "LoRAConfig | None" = None,
        base: Mapping[str, Any] | None = None,
        **weights_meta: str,
    ) -> CheckpointInfo:
        """Write `step-N.state.safetensors` (if `state`) then `step-N.safetensors`, then
        apply retention. With `lora`, `weights` are the adapters and `base` the reference
        to the frozen weights under them (`backends/weights.save_adapters`). On a full
        disk, the partial files are removed, the earlier checkpoints are intact, and a
        UserError says so."""
        from gptbench.backends.weights import save_adapters, save_tensors, save_weights

        ckdir = self.run.checkpoints_dir
        ckdir.mkdir(exist_ok=True)
        meta = {"step": str(step), **({"val_loss": repr(float(val_loss))} if val_loss is not None else {}), **weights_meta}
        try:
            if state is not None:
                save_tensors(ckdir / state_file(step), state, {"trainer": json.dumps(dict(trainer_state or {}))})
            if lora is not None:
                save_adapters(ckdir / weights_file(step), config, lora, weights, dict(base or {}), **meta)
            else:
                save_weights(ckdir / weights_file(step), config, weights, dtype=dtype, **meta)
        except OSError as exc:
            for name in (weights_file(step), state_file(step)):
                (ckdir / name).unlink(missing_ok=True)
            if exc.errno in DISK_FULL:
                have = find_checkpoints(ckdir)
                kept = f"the last checkpoint (step {have[-1].step}) is intact" if have else "no earlier checkpoint exists"
                raise UserError(
                    f"cannot save checkpoint step-{step} in {ckdir}: {os.strerror(exc.errno)}; {kept}; "
                    f"free some space and continue with --resume {self.run.name}"
                ) from None
            raise
        self.retain(keep_last)
        return CheckpointInfo(step, val_loss, ckdir / weights_file(step))

    def retain(self, keep_last: int) -> None:
        """Keep the last `keep_last` checkpoints and the best (lowest val loss); delete
        every other checkpoint file, orphaned state file and temporary file."""
        retain_checkpoints(self.run.checkpoints_dir, keep_last)

    # ---- whole-run operations ------------------------------------------------------------------
    def delete(self) -> None:
        """Remove the run directory (links inside it are removed, never followed)."""
        shutil.rmtree(self.path)
        self.close()

    def rename(self, new_name: str) -> Run:
        """Rename the run (its lock held throughout) and record the new name in config.json."""
        validate_run_name(new_name)
        dst = self.path.parent / new_name
        if dst.exists() or dst.is_symlink():
            raise UserError(f"a run named {new_name!r} already exists; pick another name")
        cfg = self.run.config()
        os.rename(self.path, dst)
        self.run = Run(dst)
        self.lock.path = dst
        cfg["name"] = new_name
        self.write_config(cfg)
        return self.run

    # ---- housekeeping --------------------------------------------------------------------------
    def _check_no_links(self) -> None:
        for name in (CONFIG, STATUS, METRICS, LOG, TOKENIZER, CHECKPOINTS, "tokenizer.tiktoken"):
            p = self.path / name
            if p.is_symlink():
                raise UserError(f"{p} is a symbolic link; gptbench never writes through links in a run (replace it with the file it points to)")

    def _remove_temporaries(self) -> None:
        for directory in (self.path, self.run.checkpoints_dir):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(TMP_SUFFIX):
                    (directory / name).unlink(missing_ok=True)

    def _clear_claim(self) -> None:
        for name in os.listdir(self.path):
            if name == LOCK:
                continue
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
