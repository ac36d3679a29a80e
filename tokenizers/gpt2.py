"""GPT-2's tokenizer (50,257 ids, `<|endoftext|>` = 50256) through tiktoken.

Where the ranks come from, first found wins:
  1. `gpt2:PATH`: a local `.tiktoken` ranks file (GPT-2 / r50k_base);
  2. `$GPTBENCH_GPT2_RANKS`: the same, by environment;
  3. gptbench's cache (`<cache>/gpt2.tiktoken`, written the first time 5. succeeds);
  4. tiktoken's own download cache ($TIKTOKEN_CACHE_DIR, default <tmp>/data-gym-cache);
  5. `tiktoken.get_encoding("gpt2")`, which downloads (bounded wait).
Offline with none of them: a UserError saying to pass `gpt2:PATH` or set the variable.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from gptbench import paths
from gptbench.errors import UserError
from gptbench.paths import default_cache_dir
from gptbench.tokenizers.tiktoken_bpe import (
    ENDOFTEXT,
    GPT2_PAT_STR,
    TiktokenTokenizer,
    parse_ranks,
    ranks_to_bytes,
    read_file_bytes,
)

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_N_RANKS = 50256
GPT2_EOT = 50256
ENV_RANKS = paths.GPT2_RANKS
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
FETCH_TIMEOUT_S = 20.0

_HOW_TO = f"pass --tokenizer gpt2:PATH (a GPT-2 .tiktoken ranks file) or set {ENV_RANKS}=PATH"


class GPT2Tokenizer(TiktokenTokenizer):
    kind = "gpt2"

    def __init__(self, ranks: dict[bytes, int], **_: Any):
        # Whatever tokenizer.json says, gpt2 means exactly GPT-2's pattern and specials.
        super().__init__(ranks, name="gpt2", pat_str=GPT2_PAT_STR, special_tokens={ENDOFTEXT: GPT2_EOT})
        if self.ranks_sha256 != GPT2_RANKS_SHA256:
            raise UserError(
                f"these ranks are not GPT-2's ({len(ranks)} tokens, sha256 {self.ranks_sha256[:12]}...); "
                f"use bpe:PATH for another tiktoken ranks file"
            )

    @property
    def spec(self) -> str:
        return "gpt2"


def _checked(blob: bytes, where: str) -> dict[bytes, int]:
    ranks = parse_ranks(blob, where)
    if hashlib.sha256(blob).hexdigest() == GPT2_RANKS_SHA256:
        return ranks  # byte-identical to the canonical file (the common case, and cheap)
    if hashlib.sha256(ranks_to_bytes(ranks)).hexdigest() != GPT2_RANKS_SHA256:
        raise UserError(
            f"{where} is not GPT-2's ranks file ({len(ranks)} tokens, sha256 mismatch); "
            f"use bpe:PATH for other tiktoken ranks, or {_HOW_TO}"
        )
    return ranks


def _gptbench_cache_file() -> Path:
    return default_cache_dir() / "gpt2.tiktoken"


def _tiktoken_cache_file() -> Path | None:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        base = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        base = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        base = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not base:
        return None
    return Path(base) / hashlib.sha1(R50K_URL.encode()).hexdigest()


def _fetch_with_tiktoken(timeout: float = FETCH_TIMEOUT_S) -> dict[bytes, int]:
    """`tiktoken.get_encoding("gpt2")` (cache or download) in a thread we stop waiting for."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            import tiktoken

            box["ranks"] = tiktoken.get_encoding("gpt2")._mergeable_ranks
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    t = threading.Thread(target=work, name="gptbench-gpt2-fetch", daemon=True)
    t.start()
    t.join(timeout)
    if "ranks" in box:
        return box["ranks"]
    if t.is_alive():
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    raise box.get("error") or RuntimeError("unknown failure")


def gpt2_ranks(path: str | os.PathLike[str] | None = None) -> dict[bytes, int]:
    """GPT-2's mergeable ranks from the first available source (see module docstring)."""
    if path is not None and str(path) != "":
        blob = read_file_bytes(Path(path).expanduser(), where=f"gpt2:{path}")
        return _checked(blob, f"gpt2:{path}")
    env = paths.env(ENV_RANKS)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise UserError(f"{ENV_RANKS}={env} is not a file; point it at a GPT-2 .tiktoken ranks file or unset it")
        return _checked(p.read_bytes(), f"{ENV_RANKS}={env}")
    for candidate in (_gptbench_cache_file(), _tiktoken_cache_file()):
        if candidate is not None and candidate.is_file():
            try:
                return _checked(candidate.read_bytes(), str(candidate))
            except UserError:
                continue  # a stale or foreign cache file: ignore it
    try:
        ranks = _fetch_with_tiktoken()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        if isinstance(exc, TimeoutError):
            reason = "download timed out"
        elif isinstance(exc, OSError):  # requests' ConnectionError is an OSError
            reason = "download failed: no network?"
        else:
            reason = f"download failed: {type(exc).__name__}"
        raise UserError(f"GPT-2 BPE ranks are not available offline ({reason}); {_HOW_TO}") from None
    blob = ranks_to_bytes(ranks)
    if hashlib.sha256(blob).hexdigest() == GPT2_RANKS_SHA256:
        try:
            from gptbench.fsutil import atomic_write_bytes

            atomic_write_bytes(_gptbench_cache_file(), blob)
        except OSError:
            pass  # a read-only cache only costs a download next time
    return ranks


def load_gpt2(path: str | os.PathLike[str] | None = None) -> GPT2Tokenizer:
    return GPT2Tokenizer(gpt2_ranks(path))
