"""Durations with units (`90s`, `5m`, `1.5h`, or plain seconds): parsed once, for flags and files."""

from __future__ import annotations

import argparse
import math
import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in `text` (`90s`, `5m`, `1h`, `2d`, `300` = seconds); a positive, finite
    number or ValueError saying what a duration looks like."""
    m = _DURATION.match(str(text))
    if m is None:
        raise ValueError(f"{text!r} is not a duration; write it as 90s, 5m, 1.5h or a number of seconds")
    number = str(text).strip().rstrip("smhdSMHD").strip()
    seconds = float(number) * UNITS[(m.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be more than zero, got {text!r}; write it as 90s, 5m, 1.5h or a number of seconds")
    return seconds


def duration_arg(text: str) -> float:
    """argparse type for a duration (one-line usage error when it does not parse)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_duration(seconds: float) -> str:
    """`300` -> `5m`, `90` -> `90s`, `7200` -> `2h` (the largest unit that counts it whole)."""
    for unit in ("d", "h", "m"):
        n = seconds / UNITS[unit]
        if n >= 1 and n.is_integer():
            return f"{n:g}{unit}"
    return f"{seconds:g}s"
