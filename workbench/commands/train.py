"""`gptbench train`: start or resume a run (headless with --no-ui, else in the TUI)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from typing import Any

from gptbench import paths
from gptbench.data.sources import data_help
from gptbench.errors import UserError

# flag name -> (section, key, type, help)
MODEL_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--n-layer", "n_layer", int, "transformer blocks"),
    ("--n-head", "n_head", int, "attention heads"),
    ("--n-embd", "n_embd", int, "embedding width (divisible by --n-head)"),
    ("--block-size", "block_size", int, "context length in tokens"),
    ("--dropout", "dropout", float, "dropout probability"),
    ("--norm", "norm", str, "layernorm | rmsnorm"),
    ("--mlp", "mlp", str, "gelu | relu2 | swiglu"),
    ("--pos", "pos", str, "learned | rope: a learned position table (GPT-2) or rotary embeddings on queries and keys"),
    ("--rope-theta", "rope_theta", float, "rotary base (default 10000)"),
    ("--logit-softcap", "logit_softcap", float, "cap the logits with cap*tanh(logits/cap) (0 = off; nanochat uses 15)"),
]
# model switches: --flag / --no-flag
MODEL_SWITCHES: list[tuple[str, str, str]] = [
    ("--qk-norm", "qk_norm", "RMS-normalise each head's queries and keys before attention"),
    ("--zero-init", "zero_init_proj", "initialise the residual output projections to zero"),
]
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--batch-size", "batch_size", int, "sequences per micro-batch"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step"),
    ("--max-iters", "max_iters", int, "total optimizer steps"),
    ("--lr", "lr", float, "peak learning rate (AdamW's: with --optimizer muon, of embeddings, head, norms, biases)"),
    ("--min-lr", "min_lr", float, "learning rate at the end of the cosine decay"),
    ("--warmup-iters", "warmup_iters", int, "linear warmup steps"),
    ("--lr-decay-iters", "lr_decay_iters", int, "step where the cosine reaches --min-lr (default: --max-iters)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (2-D tensors only)"),
    ("--beta1", "beta1", float, "AdamW beta1"),
    ("--beta2", "beta2", float, "AdamW beta2"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm (0 = off)"),
    ("--optimizer", "optimizer", str, "adamw | muon: Muon for the hidden matrices, AdamW for the rest"),
    ("--muon-lr", "muon_lr", float, "Muon's peak learning rate (follows the --lr schedule)"),
    ("--muon-momentum", "muon_momentum", float, "Muon's Nesterov momentum"),
    ("--muon-momentum-warmup", "muon_momentum_warmup", int, "steps over which Muon's momentum rises from 0.85 (0 = constant)"),
    ("--muon-weight-decay", "muon_weight_decay", float, "Muon's decoupled weight decay"),
    ("--eval-interval", "eval_interval", int, "steps between evaluations, checkpoints and samples"),
    ("--eval-iters", "eval_iters", int, "batches per evaluation (fixed, seeded)"),
    ("--log-interval", "log_interval", int, "steps between metric records"),
    ("--sample-tokens", "sample_tokens", int, "length of the sample logged at each eval (0 = off)"),
    ("--keep-last", "keep_last", int, "checkpoints kept besides the best"),
    ("--seed", "seed", int, "random seed (init, batches, dropout)"),
    ("--val-fraction", "val_fraction", float, "share of the corpus held out for validation"),
]


def finite_float(text: str) -> float:
    """argparse type: a float that is a number (NaN and infinities are refused here, so
    they can never reach a schedule, a clip or a config file)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a new run or resume one",
        description="Train a GPT. Precedence: defaults < --preset < --config FILE.toml < flags.",
    )
    p.add_argument("--no-ui", action="store_true", help="train headless with a progress bar (default opens the TUI dashboard)")
    p.add_argument("--name", help="run name (letters, digits, . _ -); default PRESET-DATE-TIME")
    p.add_argument("--resume", metavar="NAME", help="continue a run from its last checkpoint")
    p.add_argument("--preset", help="tiny | small | modern | modern-small | gpt2 | gpt2-medium | gpt2-large | gpt2-xl (default tiny); "
                                    "modern = today's recipe (rope, qk-norm, relu2, muon, ...)")
    p.add_argument("--config", metavar="FILE", help="TOML file with preset/model/train/data keys")
    p.add_argument("--data", help=data_help())
    p.add_argument("--tokenizer", help="char | byte | gpt2[:RANKS_FILE] | bpe:PATH | bpe:VOCAB_SIZE (default char)")
    p.add_argument("--backend", help="auto | torch | mlx (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda | mps (torch) | gpu (mlx) (default auto)")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 (auto = bf16 autocast on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the training step with the framework's JIT (default: on for mlx, off for torch)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    p.add_argument("--accept-changed-data", action="store_true", help="with --resume: continue although the corpus changed since the run started")
    bias = p.add_mutually_exclusive_group()
    bias.add_argument("--bias", dest="bias", action="store_true", default=None, help="biases in Linear and LayerNorm")
    bias.add_argument("--no-bias", dest="bias", action="store_false", help="no biases")
    p.add_argument("--untied", dest="tie_embeddings", action="store_false", default=None, help="separate LM head")
    for flag, key, typ, help_ in MODEL_FLAGS + TRAIN_FLAGS:
        p.add_argument(flag, dest=key, type=finite_float if typ is float else typ, default=None, help=help_)
    for flag, key, help_ in MODEL_SWITCHES:
        p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from gptbench.config import load_toml, resolve_run_config
    from gptbench.runstore import RunStore, validate_run_name

    if not args.no_ui:
        from gptbench.commands.ui import run_ui

        return run_ui(args, start_training=True)

    from gptbench.commands.progress import RichReporter
    from gptbench.train import Trainer

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        os.environ[paths.TORCH_THREADS] = str(args.threads)
    store = RunStore(args.runs_dir)
    model_keys = [k for _, k, _, _ in MODEL_FLAGS] + [k for _, k, _ in MODEL_SWITCHES] + ["bias", "tie_embeddings"]
    train_keys = [k for _, k, _, _ in TRAIN_FLAGS]
    model_flags = {k: getattr(args, k) for k in model_keys if getattr(args, k) is not None}
    train_flags = {k: getattr(args, k) for k in train_keys if getattr(args, k) is not None}
    reporter = RichReporter()
    if args.resume is not None:
        validate_run_name(args.resume)
        if args.preset or args.config:
            raise UserError("--preset and --config cannot be combined with --resume; the run keeps its config")
        if args.name is not None:
            raise UserError("give --name NAME for a new run or --resume NAME to continue one, not both")
        trainer = Trainer.resume_run(
            store,
            args.resume,
            {
                "model": model_flags,
                "train": train_flags,
                "data": args.data,
                "tokenizer": args.tokenizer,
                "backend": args.backend,
                "device": args.device,
                "dtype": args.dtype,
                "compile": args.compile,
            },
            reporter,
            accept_changed_data=args.accept_changed_data,
        )
    else:
        if args.accept_changed_data:
            raise UserError("--accept-changed-data only applies with --resume")
        if args.name is not None:
            validate_run_name(args.name)
        toml = load_toml(args.config) if args.config else None
        run_flags = {
            "data": args.data,
            "tokenizer": args.tokenizer,
            "backend": args.backend,
            "device": args.device,
            "dtype": args.dtype,
            "compile": args.compile,
            "name": args.name,
        }
        cfg = resolve_run_config(args.preset, toml, model_flags, train_flags, run_flags)
        cfg = replace(cfg, command=" ".join(["gptbench", *sys.argv[1:]]))
        trainer = Trainer.new_run(store, cfg, reporter)
    t0 = time.time()
    outcome = trainer.fit()
    best = f"{outcome.best_val_loss:.4f}" if outcome.best_val_loss is not None else "n/a"
    if outcome.best_val_bpb is not None:
        best += f" ({outcome.best_val_bpb:.4f} bits/byte)"
    print(f"run {outcome.run.name} {outcome.state} at step {outcome.step} in {time.time() - t0:.1f}s; best val loss {best}")
    print(f"  {outcome.run.path}")
    return 0 if outcome.state == "finished" else 130
