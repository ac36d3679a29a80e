"""What a sweep varies: `--grid key=v1,v2` and `--random key=log:a..b|lin:a..b|choice:a,b`, and the trials they make.

A key is any setting of the specification (`gptbench.spec.settings`), written as its path
(`train.lr`), its flag (`lr`, `n-layer`, `n_layer`) or its field name when that is
unambiguous. Values are read as the setting reads them (ints, floats, switches, durations).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from gptbench.errors import UserError
from gptbench.spec.settings import SETTINGS, Setting

NOT_SWEPT = ("name", "parallel.nproc", "parallel.hostfile")  # the sweep names its trials and runs them
RANDOM_KINDS = ("log", "lin", "choice")
_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


@dataclass(frozen=True)
class Axis:
    """One varied setting: a grid (`values`, every one tried) or a random range
    (`kind` log | lin over [low, high], or choice among `values`)."""

    path: str
    kind: str  # grid | log | lin | choice
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0

    def draw(self, rng: random.Random, setting: Setting) -> Any:
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "log":
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        return int(round(x)) if setting.kind is int else float(f"{x:.4g}")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "values": list(self.values), "low": self.low, "high": self.high}


def find_setting(key: str) -> Setting:
    """The setting `key` names: a path, a flag (with or without dashes) or a field name."""
    k = key.strip().lstrip("-").replace("-", "_")
    for match in (lambda s: s.path == key.strip(), lambda s: s.dest == k, lambda s: s.key == k):
        found = [s for s in SETTINGS if match(s)]
        if len(found) == 1:
            setting = found[0]
            if setting.path in NOT_SWEPT:
                raise UserError(f"{key!r} cannot be swept (the sweep names and runs its trials); sweep a setting of the run")
            return setting
        if len(found) > 1:
            raise UserError(f"{key!r} is ambiguous: write one of {', '.join(s.path for s in found)}")
    raise UserError(f"unknown setting {key!r} to sweep; use a `gptbench train` flag name such as lr, n_layer or max_iters "
                    "(see gptbench train --help)")


def parse_value(setting: Setting, text: str) -> Any:
    """`text` read as `setting` reads it; UserError naming the setting otherwise."""
    t = text.strip()
    try:
        if setting.switch:
            if t.lower() in _TRUE:
                return True
            if t.lower() in _FALSE:
                return False
            raise ValueError("write true or false")
        if setting.parse is not None:
            return setting.parse(t)
        if setting.kind is int:
            return int(t)
        if setting.kind is float:
            value = float(t)
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            return value
        if not t:
            raise ValueError("empty")
        return t
    except Exception as exc:  # noqa: BLE001 - every parser's complaint becomes one line
        raise UserError(f"{setting.path}: cannot read {text!r} ({exc})") from None


def _split(arg: str, flag: str) -> tuple[Setting, str]:
    key, eq, rest = arg.partition("=")
    if not eq or not key.strip():
        raise UserError(f"{flag} {arg!r}: write KEY=VALUES, e.g. {flag} lr=1e-3,3e-3")
    return find_setting(key), rest


def parse_grid(arg: str) -> Axis:
    """`key=v1,v2,...`: every value is tried."""
    setting, rest = _split(arg, "--grid")
    items = [v for v in rest.split(",")]
    if not rest.strip() or any(not v.strip() for v in items):
        raise UserError(f"--grid {arg!r} has an empty value; list one or more values: --grid {setting.dest}=V1,V2")
    values = tuple(dict.fromkeys(parse_value(setting, v) for v in items))
    return Axis(setting.path, "grid", values)


def parse_random(arg: str) -> Axis:
    """`key=log:A..B`, `key=lin:A..B` or `key=choice:V1,V2`: drawn anew for every trial."""
    setting, rest = _split(arg, "--random")
    kind, colon, spec = rest.partition(":")
    kind = kind.strip()
    if not colon or kind not in RANDOM_KINDS:
        raise UserError(f"--random {arg!r}: write {setting.dest}=log:A..B, lin:A..B or choice:V1,V2")
    if kind == "choice":
        if not spec.strip() or any(not v.strip() for v in spec.split(",")):
            raise UserError(f"--random {arg!r}: choice needs one or more values, e.g. choice:V1,V2")
        return Axis(setting.path, "choice", tuple(dict.fromkeys(parse_value(setting, v) for v in spec.split(","))))
    if setting.switch or setting.kind not in (int, float):
        raise UserError(f"--random {arg!r}: {setting.path} is not a number; use choice:V1,V2")
    lo, dots, hi = spec.partition("..")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        low = high = math.nan
    if not dots or not (math.isfinite(low) and math.isfinite(high)) or low >= high or (kind == "log" and low <= 0):
        need = "0 < A < B" if kind == "log" else "A < B"
        raise UserError(f"--random {arg!r}: the range does not parse; write {kind}:A..B with {need}, e.g. {kind}:1e-4..1e-2")
    return Axis(setting.path, kind, (), low, high)


def plan_trials(grid: list[Axis], rand: list[Axis], trials: int | None, seed: int) -> list[dict[str, Any]]:
    """The settings of every trial: each grid point (the product of the grid axes, in the
    order given) with `trials` random draws (one when nothing is random), seeded."""
    if trials is not None and trials <= 0:
        raise UserError(f"--trials must be a positive number, got {trials}")
    if trials is not None and not rand:
        raise UserError("--trials counts random draws; add a --random KEY=RANGE (a grid tries every point once)")
    if not grid and not rand:
        raise UserError("nothing to sweep: add --grid KEY=V1,V2 or --random KEY=log:A..B")
    paths = [a.path for a in grid + rand]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise UserError(f"{twice[0]} is swept twice; give each setting one --grid or --random")
    by_path = {s.path: s for s in SETTINGS}
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for point in itertools.product(*(a.values for a in grid)):
        for _ in range(trials or 1):
            settings = dict(zip((a.path for a in grid), point))
            settings.update({a.path: a.draw(rng, by_path[a.path]) for a in rand})
            out.append(settings)
    return out


def short_key(path: str) -> str:
    """The name a swept setting is shown by (`train.lr` -> `lr`)."""
    return path.rpartition(".")[2]
