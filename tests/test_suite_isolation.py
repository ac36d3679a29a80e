"""The suite keeps to itself: library caches live in a temporary folder for the session,
so no test reads a cache an earlier run or the user filled, and none is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import settings

from conftest import CACHE_VARIABLES, SESSION_CACHES


def test_library_caches_point_into_the_sessions_temporary_folder():
    assert SESSION_CACHES.is_relative_to(Path(tempfile.gettempdir()))
    assert not SESSION_CACHES.is_relative_to(Path.home())
    for name in CACHE_VARIABLES:
        assert Path(os.environ[name]).parent == SESSION_CACHES, name
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        assert name not in os.environ, name
    database = settings().database
    assert database is None or Path(database.path).parent == SESSION_CACHES


def test_subprocesses_and_libraries_see_the_same_folders():
    """A trainer started as a subprocess inherits them, and the libraries resolve their
    caches from them (huggingface_hub's model cache, gptbench's own hub lookup)."""
    code = ("import huggingface_hub.constants as c; from gptbench.hfcache import cache_dir; "
            "print(c.HF_HUB_CACHE); print(cache_dir())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(SESSION_CACHES / "huggingface" / "hub")] * 2
