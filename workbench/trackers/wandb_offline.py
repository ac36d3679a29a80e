"""Weights & Biases: the run logged by `wandb` itself, offline by default, under `RUN/wandb/`.

The mode is `offline` unless the user's own W&B settings say otherwise (`WANDB_MODE`, or
`mode` in the settings files `wandb online` / `wandb offline` write); an offline run is
uploaded later with `wandb sync RUN/wandb/offline-run-*`, and `wandb leet RUN/wandb` shows
it in the terminal. The W&B run id is kept in `RUN/wandb/gptbench-run-id`, so a resumed run
continues the same W&B run. Console capture, system metrics, git and code saving are off:
the mirror holds the metrics, the config and the run name, nothing else. wandb's own
debug logs and caches go under `RUN/wandb/cache` unless the user set `WANDB_CACHE_DIR` or
`WANDB_DATA_DIR`: nothing is written outside the run directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

FOLDER = "wandb"
PROJECT = "gptbench"
ID_FILE = "gptbench-run-id"


def user_mode(wandb: Any) -> str:
    """`WANDB_MODE` when set, else the mode in the user's W&B settings files, else offline."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()  # where wandb keeps it
    try:
        files = wandb.Settings(settings_system=str(config_dir / "settings")).read_system_settings()
        mode = files.all().get("mode", "").strip()
    except Exception:  # an unreadable settings file: wandb itself treats it as empty
        mode = ""
    return mode or "offline"


def run_id(folder: Path, run_name: str) -> str:
    """The W&B id of this gptbench run: made once, kept beside its W&B files."""
    path = folder / ID_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    folder.mkdir(parents=True, exist_ok=True)
    made = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:48] + "-" + os.urandom(4).hex()
    path.write_text(made + "\n", encoding="utf-8")
    return made


class WandbTracker:
    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any], root: Path | None = None) -> None:
        """Files under `root/wandb` (wandb's own layout: `root` is its `dir`), `root` being
        the run's folder unless given (export-logs writes a staging folder)."""
        try:
            import wandb
        except ImportError:
            from gptbench.trackers.base import missing

            raise missing("wandb", "wandb") from None
        root = Path(root) if root is not None else Path(run_dir)
        self.folder = root / FOLDER
        self.mode = user_mode(wandb)
        for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # its own logs and caches: in the run, not ~/.cache
            os.environ.setdefault(variable, str(self.folder / "cache"))
        settings = wandb.Settings(console="off", silent=True, quiet=True, x_disable_stats=True, x_disable_meta=True,
                                  disable_git=True, save_code=False, x_save_requirements=False)
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would break the progress display
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=run_name,
                                  id=run_id(self.folder, run_name), dir=str(root), config=config, mode=self.mode,
                                  resume="allow", reinit="create_new", settings=settings)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()
