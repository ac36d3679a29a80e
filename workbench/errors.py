"""User-facing errors, and the one check every configuration section shares.

Anything raised as `UserError` is a mistake the user can fix: the CLI prints its message on
one line (prefixed `gptbench: error:`) and exits with status 2, never with a traceback.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


class UserError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration mistake; the message says what is wrong and how to fix it."""


def reject_unknown_keys(section: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise ConfigError naming the keys of `data` that `section` does not have."""
    allowed = set(allowed)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown {section} key(s): {', '.join(unknown)}; valid keys are {', '.join(sorted(allowed))}")
