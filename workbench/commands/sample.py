"""`gptbench sample`: one-shot generation from a run or a weights file.

One sample streams to a terminal token by token (`--stream` forces it, `--no-stream` turns
it off); several samples are generated together as one left-padded batch. `--json` prints
one object per sample (text, token counts, tokens/s) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys

from gptbench.commands.sampling_args import add_model_args, add_sampling_args, params_from_args
from gptbench.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a run or weights file", description="Generate text once and print it.")
    add_model_args(p)
    p.add_argument("--prompt", default=None, help="prompt text (default: end-of-text, or a newline for tokenizers without one)")
    p.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated together as one batch (default 1)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None, help="print tokens as they arrive (default: on for one sample on a terminal)")
    p.add_argument("--json", action="store_true", help="one JSON object per line and sample: text, token counts, tokens/s")
    add_sampling_args(p)
    p.set_defaults(func=run_sample)


def read_prompt(args: argparse.Namespace, tokenizer) -> str | list[int]:
    """The prompt text; without one, end-of-text (or a newline, or token 0) starts the sample."""
    if args.prompt is not None and args.prompt_file:
        raise UserError("give --prompt or --prompt-file, not both")
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --prompt-file {args.prompt_file}: {exc}") from None
    if args.prompt:
        return args.prompt
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n") or [0]
    except UserError:  # a char vocabulary without a newline
        return [0]


def run_sample(args: argparse.Namespace) -> int:
    from gptbench.backends.generate import encode_prompt, generate_batch, stream_generate
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    params = params_from_args(args)  # validate before loading anything
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    loaded = load_model(
        RunStore(args.runs_dir), run=args.run, checkpoint=args.checkpoint, weights=args.weights,
        tokenizer=args.tokenizer, backend=args.backend, device=args.device, strict=args.strict, batch_size=args.num_samples,
    )
    if loaded.notice:  # a damaged newest checkpoint was passed over: say so, once
        print(f"gptbench: warning: {loaded.notice}", file=sys.stderr, flush=True)
    prompt = read_prompt(args, loaded.tokenizer)
    ids = encode_prompt(loaded.tokenizer, prompt)  # bad characters fail here, before any output
    shown = prompt if isinstance(prompt, str) else ""
    stream = args.stream if args.stream is not None else sys.stdout.isatty()
    if stream and args.num_samples == 1 and not args.json:
        sys.stdout.write(shown)
        sys.stdout.flush()
        last = None
        for r in stream_generate(loaded.backend, loaded.tokenizer, ids, params, use_cache=args.kv_cache):
            sys.stdout.write(r.text)
            sys.stdout.flush()
            last = r
        sys.stdout.write("\n")
        if last is not None:
            print(
                f"[{last.generation_tokens} tokens, {last.tokens_per_sec:.1f} tok/s, "
                f"prompt {last.prompt_tokens} tokens at {last.prompt_tokens_per_sec:.0f} tok/s, finish: {last.finish_reason}]",
                file=sys.stderr,
            )
        return 0
    results = generate_batch(loaded.backend, loaded.tokenizer, [ids] * args.num_samples, params, use_cache=args.kv_cache)
    for i, res in enumerate(results):
        if args.json:
            print(json.dumps({"sample": i, "source": loaded.source, "prompt": shown, **res.to_dict()}, ensure_ascii=False))
        else:
            if args.num_samples > 1:
                print(f"--- sample {i + 1}/{args.num_samples} ---")
            print(shown + res.text)
    if not args.json:
        tps = results[0].batch_tokens_per_sec or results[0].tokens_per_sec
        print(f"[{sum(len(r.tokens) for r in results)} tokens, {tps:.1f} tok/s]", file=sys.stderr)
    return 0
