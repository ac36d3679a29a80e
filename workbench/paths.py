"""Every `GPTBENCH_*` environment variable and default directory, in one place.

Modules read these names from here rather than spelling the strings themselves, so the
README's table (section "Environment") and the code cannot drift apart. Nothing here
imports a framework; reading a variable is always done at call time, never at import.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR = "GPTBENCH_RUNS_DIR"  # where runs live (default ./runs)
CACHE_DIR = "GPTBENCH_CACHE_DIR"  # token cache, downloads, GPT-2 ranks (default ~/.cache/gptbench)
GPT2_RANKS = "GPTBENCH_GPT2_RANKS"  # a local GPT-2 .tiktoken ranks file, for offline use
TORCH_THREADS = "GPTBENCH_TORCH_THREADS"  # torch CPU threads (what --threads sets)
MLX_BLAS = "GPTBENCH_MLX_BLAS"  # a CBLAS for mlx[cpu] on Linux: auto (default), off, or a path
TINYSHAKESPEARE_URL = "GPTBENCH_TINYSHAKESPEARE_URL"  # where `--data tinyshakespeare` downloads from
HF_TIMEOUT = "GPTBENCH_HF_TIMEOUT"  # seconds to wait for the Hugging Face hub's first answer
DIST_TIMEOUT = "GPTBENCH_DIST_TIMEOUT"  # seconds a torch rank waits in a collective before failing (default 1800)

ALL = (RUNS_DIR, CACHE_DIR, GPT2_RANKS, TORCH_THREADS, MLX_BLAS, TINYSHAKESPEARE_URL, HF_TIMEOUT, DIST_TIMEOUT)


def env(name: str) -> str | None:
    """The variable's value with surrounding spaces removed, None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def default_runs_dir() -> Path:
    """`$GPTBENCH_RUNS_DIR`, else `./runs` (the repo's top-level runs/ when run from there)."""
    value = env(RUNS_DIR)
    return Path(value).expanduser() if value else Path.cwd() / "runs"


def default_cache_dir() -> Path:
    """`$GPTBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/gptbench`, else `~/.cache/gptbench`."""
    value = env(CACHE_DIR)
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "gptbench"
    return Path.home() / ".cache" / "gptbench"
