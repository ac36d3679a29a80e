"""`--config FILE.toml`: a run specification's settings written as a TOML file.

Top-level keys (`preset`, `data`, `tokenizer`, `init_from`, `name`, `backend`, `device`,
`dtype`, `compile`, `threads`) and tables `[model]`, `[train]`, `[lora]`, `[parallel]`;
the keys are the settings table's (`gptbench.spec.settings`), so a file can set exactly
what the flags can.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from gptbench.errors import UserError, reject_unknown_keys
from gptbench.spec.settings import BY_PATH, SETTINGS

TABLES = ("model", "train", "lora", "parallel")


def toml_keys() -> dict[str, str]:
    """TOML key (`lr` under `[train]` is `train.lr`) -> setting path."""
    return {s.toml_key: s.path for s in SETTINGS if s.toml_key}


def load_toml(path: str | Path) -> dict[str, Any]:
    """The settings a config file gives, by setting path (`preset` included)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot parse {p}: {exc}") from None
    keys = toml_keys()
    top_level = {k for k in keys if "." not in k}
    reject_unknown_keys("config-file", data, {"preset", *TABLES, *top_level})
    out: dict[str, Any] = {"preset": data["preset"]} if "preset" in data else {}
    for key, value in data.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise UserError(f"{p}: [{key}] must be a table")
            reject_unknown_keys(f"[{key}]", value, {k.partition(".")[2] for k in keys if k.startswith(key + ".")})
            out.update({keys[f"{key}.{k}"]: _read(p, keys[f"{key}.{k}"], v) for k, v in value.items()})
        elif key != "preset":
            out[keys[key]] = _read(p, keys[key], value)
    return out


def _read(p: Path, path: str, value: Any) -> Any:
    """A file's value for setting `path`: a string goes through the setting's own parser
    (a duration may be written `max_time = "5m"`)."""
    parse = BY_PATH[path].parse
    if parse is None or not isinstance(value, str):
        return value
    try:
        return parse(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise UserError(f"{p}: {path.rpartition('.')[2]}: {exc}") from None
