"""Model and sampling flags shared by `sample` and `chat`.

Values are validated by `SamplingParams` itself (one-line `UserError`, exit 2), so the CLI,
the chat's `/temp 0.7` commands and the TUI all reject bad values with the same message.
"""

from __future__ import annotations

import argparse

from gptbench.backends.sampling import SamplingParams


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 256, temperature: float = 0.8) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability, in [0, 1) (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1 = off)")
    g.add_argument("--repetition-window", type=int, default=64, help="recent tokens the penalty looks at (default 64)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"tokens to generate (default {max_new_tokens})")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string, not printed (repeatable; \\n means newline)")
    g.add_argument("--stop-token-id", action="append", type=int, default=[], metavar="ID", help="stop at this token id (repeatable; end-of-text always stops)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (same seed + params = same text)")
    g.add_argument("--no-kv-cache", dest="kv_cache", action="store_false", help="recompute the whole context every token (slow; for comparison)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--run", help="run name")
    g.add_argument("--checkpoint", default="best", help="best | last | step-N (default best)")
    g.add_argument("--strict", action="store_true", help="refuse when the run's newest (best) checkpoint is damaged instead of using an older one")
    g.add_argument("--weights", help="a gptbench .safetensors file instead of a run")
    g.add_argument("--tokenizer", help="with --weights: gpt2, byte, bpe:PATH, or a run folder / tokenizer.json")
    g.add_argument("--backend", default="auto", help="auto | torch | mlx")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (torch) | gpu (mlx)")


def unescape(text: str) -> str:
    r"""`\n`, `\t` and `\\` typed on a command line become the characters they name."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        repetition_window=args.repetition_window,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(unescape(s) for s in args.stop),
        stop_token_ids=tuple(args.stop_token_id),
        seed=args.seed,
    )
