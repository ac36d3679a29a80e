"""`gptbench sample`: one-shot generation from a run or a weights file."""

from __future__ import annotations

import argparse
import json
import sys

from gptbench.commands.sampling_args import add_model_args, add_sampling_args, params_from_args
from gptbench.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a run or weights file", description="Generate text once and print it.")
    add_model_args(p)
    p.add_argument("--prompt", default=None, help="prompt text (default: end-of-text or a newline)")
    p.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated together as one batch")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None, help="print tokens as they arrive (default: on for one sample on a terminal)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample: text, token counts, tokens/s")
    add_sampling_args(p)
    p.set_defaults(func=run_sample)


def _prompt(args: argparse.Namespace, tokenizer) -> str | list[int]:
    if args.prompt is not None and args.prompt_file:
        raise UserError("give --prompt or --prompt-file, not both")
    if args.prompt_file:
        try:
            return open(args.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --prompt-file {args.prompt_file}: {exc}") from None
    if args.prompt:
        return args.prompt
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    return "\n"


def run_sample(args: argparse.Namespace) -> int:
    from gptbench.backends.generate import generate_batch, stream_generate
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    params = params_from_args(args)  # validate before loading anything
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    loaded = load_model(
        RunStore(args.runs_dir), run=args.run, checkpoint=args.checkpoint, weights=args.weights,
        tokenizer=args.tokenizer, backend=args.backend, device=args.device,
    )
    prompt = _prompt(args, loaded.tokenizer)
    stream = args.stream if args.stream is not None else (args.num_samples == 1 and not args.json and sys.stdout.isatty())
    if stream and args.num_samples == 1 and not args.json:
        if isinstance(prompt, str):
            sys.stdout.write(prompt)
        last = None
        for r in stream_generate(loaded.backend, loaded.tokenizer, prompt, params, use_cache=args.kv_cache):
            sys.stdout.write(r.text)
            sys.stdout.flush()
            last = r
        sys.stdout.write("\n")
        if last is not None:
            print(f"[{last.generation_tokens} tokens, {last.tokens_per_sec:.1f} tok/s, finish: {last.finish_reason}]", file=sys.stderr)
        return 0
    results = generate_batch(loaded.backend, loaded.tokenizer, [prompt] * args.num_samples, params, use_cache=args.kv_cache)
    for i, res in enumerate(results):
        if args.json:
            print(json.dumps({"sample": i, "source": loaded.source, **res.to_dict()}))
        else:
            if args.num_samples > 1:
                print(f"--- sample {i + 1}/{args.num_samples} ---")
            print((prompt if isinstance(prompt, str) else "") + res.text)
    return 0
