"""trackio: the run logged to trackio's local store (project `gptbench`; `$TRACKIO_DIR`, by default
under the Hugging Face cache), where `trackio show` finds it. Online only when the user's
own trackio settings (`TRACKIO_SPACE_ID`, `TRACKIO_SERVER_URL`) say so."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

PROJECT = "gptbench"


class TrackioTracker:
    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        try:
            import trackio
        except ImportError:
            from gptbench.trackers.base import missing

            raise missing("trackio", "trackio") from None
        project = os.environ.get("GPTBENCH_TRACKIO_PROJECT", PROJECT)
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would break the progress display
            self.run = trackio.init(project=project, name=run_name, config=_flat(config), resume="allow",
                                    auto_log_gpu=False, auto_log_cpu=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics=metrics, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-3}}` -> `{"train.lr": 1e-3}`: trackio's config table is flat."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
