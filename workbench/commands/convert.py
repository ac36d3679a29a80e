"""`gptbench convert SRC DST`: runs, gptbench weights files and Hugging Face GPT-2 folders."""

from __future__ import annotations

import argparse
import json
import sys

from gptbench.errors import UserError

EPILOG = """\
SRC is a run name (its --checkpoint, default best; a LoRA run is merged), a gptbench
.safetensors file, or a Hugging Face GPT-2 folder (config.json + model.safetensors). DST is:
  --to torch|mlx   a .safetensors file, or any other name = a new run (with a tokenizer)
  --to hf          a folder (hub layout + tokenizer files) that transformers.pipeline loads,
                   and mlx_lm.load too when the LM head is tied
  --to mlx-lm      the same folder, refused for an untied head (mlx-lm's gpt2 is tied-only)
  --to gguf        a .gguf file that llama.cpp (and Ollama) run: GPT-2-architecture models,
                   --dtype f32 | f16 | q8_0, with the tokenizer (gpt2, trained bpe or byte)
The result is reloaded and its logits compared with the source's before it is written.
When a run's newest (or best) checkpoint is damaged, the newest intact one is exported and
one line on stderr says so; --strict refuses instead. The exported step is printed and
recorded in the output's metadata.

examples:
  gptbench convert baby baby.safetensors                 run -> weights file
  gptbench convert baby exported-hf --to hf              run -> Hugging Face folder
  gptbench convert ft-lora ft-mlx --to mlx-lm            LoRA run, merged -> mlx-lm folder
  gptbench convert ./gpt2-hf gpt2 --tokenizer gpt2:PATH  Hugging Face folder -> run
  gptbench convert model.safetensors half.safetensors --dtype bfloat16
  gptbench convert baby baby.gguf --to gguf --dtype q8_0  run -> llama.cpp file
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert weights between runs, gptbench files and Hugging Face GPT-2",
        description="Convert a model, verify the result by reloading it, and write it atomically.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="run name, gptbench .safetensors file, or Hugging Face GPT-2 folder")
    p.add_argument("dst", metavar="DST", help="output: .safetensors file or run name (torch/mlx), folder (hf)")
    p.add_argument("--to", default="auto", help="torch | mlx | hf | mlx-lm | gguf (default auto = the default backend)")
    p.add_argument("--from", dest="source_kind", default="auto", help="auto | run | weights | hf (default: detect)")
    p.add_argument("--checkpoint", default="best", help="with a run source: best | last | step-N (default best)")
    p.add_argument("--strict", action="store_true", help="with a run source: refuse when its newest (best) checkpoint is damaged "
                   "instead of exporting an older one")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 (default float32); with --to gguf: f32 | f16 | q8_0")
    p.add_argument("--tokenizer", help="for a run or Hugging Face destination: gpt2, gpt2:PATH, byte, bpe:PATH or a run folder "
                   "(default: the source's own: a run's, a Hugging Face folder's files, gpt2 for a 50257-token GPT-2)")
    p.add_argument("--backend", default="auto", help="with --to hf|mlx-lm|gguf: backend that verifies the export (auto | torch | mlx)")
    p.add_argument("--device", default="auto", help="device for the verification (default auto)")
    p.add_argument("--force", action="store_true", help="overwrite an existing DST")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from gptbench.backends.registry import resolve_backend_name
    from gptbench.convert import DTYPES, SOURCE_KINDS, TARGETS, convert, describe_source
    from gptbench.runstore import RunStore
    from gptbench.sources import resolve_convert_source

    # Validate every flag before reading anything.
    if args.to == "gguf":
        from gptbench.exports.gguf import gguf_type

        gguf_type(args.dtype)
    elif args.dtype not in DTYPES:
        raise UserError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    to = args.to
    if to == "auto":
        to = resolve_backend_name("auto")
    if to not in TARGETS:
        raise UserError(f"unknown --to {args.to!r}; choose one of auto, {', '.join(TARGETS)}")
    if args.source_kind not in SOURCE_KINDS:
        raise UserError(f"unknown --from {args.source_kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
    store = RunStore(args.runs_dir)
    source = resolve_convert_source(args.src, store, kind=args.source_kind, checkpoint=args.checkpoint, strict=args.strict)
    if source.notice:  # a damaged newest checkpoint was passed over: say so, once
        print(f"gptbench: warning: {source.notice}", file=sys.stderr, flush=True)
    if not args.json:
        print(f"source: {describe_source(source)}")
    result = convert(
        source, args.dst, to=to, dtype=args.dtype, store=store, force=args.force,
        tokenizer=args.tokenizer, backend=args.backend, device=args.device,
    )
    if args.json:
        print(json.dumps({"source": source.label, "source_kind": source.kind, **result.to_dict()}))
        return 0
    mb = result.size_bytes / 1e6
    print(f"wrote {result.dst} ({result.layout}, {result.dtype}, {result.n_tensors} tensors, {mb:.1f} MB)")
    if result.step is not None:
        print(f"exported step {result.step} (recorded in its metadata)")
    print(
        f"verified on {result.backend}: max |logit difference| vs source = {result.max_diff:.3g} "
        f"on a {result.batch_shape[0]}x{result.batch_shape[1]} batch"
    )
    for note in result.notes:
        print(f"note: {note}")
    if result.layout == "run":
        print(f"try: gptbench sample --run {result.dst.name}")
    elif result.target == "gguf":
        print(f"try: llama-cli -m {result.dst} -p 'Hello' -n 32 --temp 0")
    elif result.tokenizer is not None:
        loader = "mlx_lm.load" if result.target == "mlx-lm" else "transformers.pipeline('text-generation', ...)"
        print(f"tokenizer {result.tokenizer} written as tokenizer.json; try: {loader} on {result.dst}")
    return 0
