"""Hugging Face hub model names (`gpt2`, `openai-community/gpt2-medium`) resolved through the local cache.

The cache layout is read directly, so finding a cached model needs no `huggingface_hub`:
`<cache>/models--ORG--NAME/refs/main` holds a commit and `snapshots/<commit>/` the files.
The cache directory is the one huggingface_hub uses, evaluated at call time: `HF_HUB_CACHE`
> `HUGGINGFACE_HUB_CACHE` > `$HF_HOME/hub` > `$XDG_CACHE_HOME/huggingface/hub` >
`~/.cache/huggingface/hub`. The hub moved the GPT-2 checkpoints under `openai-community/`
and the cache keeps old and new names apart, so both folders are looked in.

A name that is not cached is downloaded with `huggingface_hub.snapshot_download` (only the
files gptbench reads) when that package is installed and downloads are not switched off
(`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`); otherwise, or when the download fails, one
line names the folders searched and the command that fills the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from gptbench.errors import UserError

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Old hub names and the organisation that owns them now.
MOVED = {**{n: f"openai-community/{n}" for n in GPT2_NAMES}, "distilgpt2": "distilbert/distilgpt2"}
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# What gptbench reads from a model repository (weights, config, tokenizer), nothing else.
DOWNLOAD_PATTERNS = [
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
]
_TRUE = ("1", "true", "yes", "on")


def is_hub_name(spec: str) -> bool:
    """`gpt2`, `gpt2-xl`, `distilgpt2` or `org/name`, optionally `@revision`."""
    name = spec.partition("@")[0]
    return name in MOVED or bool(REPO_RE.match(name))


def cache_dir() -> Path:
    """Where huggingface_hub keeps models, by its own precedence of variables."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def offline_reason() -> str | None:
    """Why downloads are off (an environment variable), or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    return None


def repos(name: str) -> list[str]:
    """The repository ids a name may be cached under: `gpt2` and `openai-community/gpt2`."""
    moved = MOVED.get(name)
    back = {v: k for k, v in MOVED.items()}.get(name)
    return [name] + [r for r in (moved, back) if r]


def repo_folder(root: Path, repo: str) -> Path:
    return root / ("models--" + repo.replace("/", "--"))


def _complete(snapshot: Path) -> bool:
    return (snapshot / "config.json").is_file() and (
        (snapshot / "model.safetensors").is_file() or (snapshot / "model.safetensors.index.json").is_file()
    )


def find_cached(name: str, revision: str | None = None, root: Path | None = None) -> tuple[str, Path] | None:
    """(repo id, snapshot folder) of a complete cached copy (config.json + safetensors)."""
    root = root or cache_dir()
    for repo in repos(name):
        folder = repo_folder(root, repo)
        if revision and COMMIT_RE.match(revision):
            commit = revision
        else:
            try:
                commit = (folder / "refs" / (revision or "main")).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                continue
        snapshot = folder / "snapshots" / commit
        if commit and _complete(snapshot):
            return repo, snapshot
    return None


def resolve(spec: str, progress: Callable[[str], None] | None = None) -> tuple[str, str, Path]:
    """(repo id, commit, snapshot folder) for a hub name, from the cache or a download."""
    name, _, revision = spec.partition("@")
    root = cache_dir()
    found = find_cached(name, revision or None, root)
    if found is not None:
        repo, snapshot = found
        return repo, snapshot.name, snapshot
    canonical = MOVED.get(name, name)
    looked = ", ".join(str(repo_folder(root, r)) for r in repos(name))
    fill = (f"fill it with `hf download {canonical} {' '.join(p for p in DOWNLOAD_PATTERNS if '*' not in p and 'index' not in p)}` "
            f"(HF_HUB_CACHE={root}) or pass --init-from a local GPT-2 folder")
    reason = offline_reason()
    if reason is None:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            reason = "huggingface_hub is not installed (pip install 'gptbench[hub]')"
    if reason is not None:
        raise UserError(f"{name} is not in the Hugging Face cache (looked in {looked}) and it cannot be downloaded: {reason}; {fill}")
    from huggingface_hub import snapshot_download

    if progress:
        progress(f"downloading {canonical} from the Hugging Face hub into {root}")
    try:
        path = Path(snapshot_download(canonical, revision=revision or None, allow_patterns=DOWNLOAD_PATTERNS, cache_dir=str(root)))
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown repo: all one line
        raise UserError(f"cannot download {canonical} from the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); {fill}") from None
    if not _complete(path):
        raise UserError(f"{canonical} has no config.json + model.safetensors on the hub; gptbench reads GPT-2 checkpoints in safetensors")
    return canonical, path.name, path
