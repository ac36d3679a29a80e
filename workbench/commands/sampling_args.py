"""Model and sampling flags shared by `sample` and `chat`.

The sampling flags are generated from `SAMPLING_KNOBS` (flag, help, default and type all
come from `SamplingParams`'s fields), and their values are validated by `SamplingParams`
itself (one-line `UserError`, exit 2), so the CLI, the chat's `/temp 0.7` commands and the
TUI offer the same knobs with the same defaults and reject bad values with the same message.
"""

from __future__ import annotations

import argparse

from gptbench.backends.knobs import Knob
from gptbench.backends.sampling import SAMPLING_KNOBS, SamplingParams


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    for k in SAMPLING_KNOBS:
        _add_knob(g, k)
    g.add_argument("--no-kv-cache", dest="kv_cache", action="store_false", help="recompute the whole context every token (slow; for comparison)")


def _add_knob(group: argparse._ArgumentGroup, k: Knob) -> None:
    """One flag for one knob: repeatable knobs collect a value per use into a list."""
    if k.repeatable:
        group.add_argument(k.flag, dest=k.name, action="append", type=k.parse, default=[], metavar=k.arg, help=f"{k.help} (repeatable)")
    else:
        shown = "none" if k.default is None else k.default
        group.add_argument(k.flag, dest=k.name, type=k.parse, default=k.default, metavar=k.arg, help=f"{k.help} (default {shown})")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--run", help="run name")
    g.add_argument("--checkpoint", default="best", help="best | last | step-N (default best)")
    g.add_argument("--strict", action="store_true", help="refuse when the run's newest (best) checkpoint is damaged instead of using an older one")
    g.add_argument("--weights", help="a gptbench .safetensors file instead of a run")
    g.add_argument("--tokenizer", help="with --weights: gpt2, byte, bpe:PATH, or a run folder / tokenizer.json")
    g.add_argument("--backend", default="auto", help="auto | torch | mlx")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (torch) | gpu (mlx)")


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    """The parsed sampling flags as validated `SamplingParams` (UserError when one is bad)."""
    return SamplingParams(**{k.name: getattr(args, k.name) for k in SAMPLING_KNOBS})
