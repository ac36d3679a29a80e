"""`gptbench train`: start or resume a run (headless with --no-ui, else in the TUI).

With `--nproc N` (or `--hostfile`) this process is the launcher of N ranks (`launch.py`);
started by torchrun or mlx.launch it is one rank: it joins the group, trains its share
and, when done, leaves with `os._exit` (a DDP process that exits normally can abort in
gloo's finalisation, which would report a finished run as failed)."""

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
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step on each process (the step's total is this x --nproc)"),
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
    p.add_argument("--preset", help="tiny | small | modern | modern-small | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | finetune "
                                    "(default tiny; finetune with --init-from); modern = today's recipe (rope, qk-norm, relu2, muon, ...)")
    p.add_argument("--init-from", metavar="SRC", help="start from pretrained weights: a Hugging Face GPT-2 folder or name "
                   "(gpt2, gpt2-medium, gpt2-large, gpt2-xl; from the local HF cache), a gptbench .safetensors file, or RUN[:CHECKPOINT]; "
                   "the model shape and tokenizer follow the source")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R", help="train LoRA adapters of rank R instead of every weight (needs --init-from)")
    p.add_argument("--lora-alpha", type=finite_float, default=None, help="LoRA scale numerator: updates are scaled by alpha/R (default 2R)")
    p.add_argument("--lora-targets", default=None, help="Linear layers that get adapters: attn, mlp, or attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, mlp.c_gate, comma-separated (default attn,mlp)")
    p.add_argument("--lora-dropout", type=finite_float, default=None, help="dropout on the adapters' input (default 0)")
    p.add_argument("--config", metavar="FILE", help="TOML file with preset/model/train/data keys")
    p.add_argument("--data", help=data_help())
    p.add_argument("--tokenizer", help="char | byte | gpt2[:RANKS_FILE] | bpe:PATH | bpe:VOCAB_SIZE (default char)")
    p.add_argument("--backend", help="auto | torch | mlx (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda | mps (torch) | gpu (mlx) (default auto)")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 (auto = bf16 autocast on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the training step with the framework's JIT (default: on for mlx, off for torch)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch, fixed (default: adapted to the cores other processes leave free)")
    p.add_argument("--accept-changed-data", action="store_true", help="with --resume: continue although the corpus changed since the run started")
    p.add_argument("--nproc", type=int, default=None,
                   help="train on N processes of this machine: torch through torchrun (one per GPU, or CPU cores), mlx through mlx.launch")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default=None,
                   help="with several processes: ddp (a full model on each, default) or fsdp (torch: parameters, gradients and optimizer state sharded)")
    p.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute each block's activations in the backward pass: less memory, about a third more compute (torch)")
    p.add_argument("--hostfile", metavar="FILE", help="mlx: train on the Macs listed in this mlx.launch hostfile (one rank each)")
    bias = p.add_mutually_exclusive_group()
    bias.add_argument("--bias", dest="bias", action="store_true", default=None, help="biases in Linear and LayerNorm")
    bias.add_argument("--no-bias", dest="bias", action="store_false", help="no biases")
    p.add_argument("--untied", dest="tie_embeddings", action="store_false", default=None, help="separate LM head")
    for flag, key, typ, help_ in MODEL_FLAGS + TRAIN_FLAGS:
        p.add_argument(flag, dest=key, type=finite_float if typ is float else typ, default=None, help=help_)
    for flag, key, help_ in MODEL_SWITCHES:
        p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_)
    p.set_defaults(func=run_train)


def _lora_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, f"lora_{k}") for k in ("rank", "alpha", "targets", "dropout") if getattr(args, f"lora_{k}") is not None}


def _flags(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    model_keys = [k for _, k, _, _ in MODEL_FLAGS] + [k for _, k, _ in MODEL_SWITCHES] + ["bias", "tie_embeddings"]
    train_keys = [k for _, k, _, _ in TRAIN_FLAGS]
    model_flags = {k: getattr(args, k) for k in model_keys if getattr(args, k) is not None}
    train_flags = {k: getattr(args, k) for k in train_keys if getattr(args, k) is not None}
    return model_flags, train_flags


def _new_run_config(args: argparse.Namespace) -> Any:
    """The resolved config of a new run (defaults < preset < TOML < flags)."""
    from gptbench.config import load_toml, resolve_run_config
    from gptbench.runstore import validate_run_name

    if args.accept_changed_data:
        raise UserError("--accept-changed-data only applies with --resume")
    if args.name is not None:
        validate_run_name(args.name)
    model_flags, train_flags = _flags(args)
    toml = load_toml(args.config) if args.config else None
    run_flags = {**_run_flags(args), "name": args.name, "init_from": args.init_from}
    return resolve_run_config(args.preset, toml, model_flags, train_flags, run_flags, _lora_flags(args))


def _run_flags(args: argparse.Namespace) -> dict:
    """The run-level flags a new run and a resume both take (None where not given)."""
    return {"data": args.data, "tokenizer": args.tokenizer, "backend": args.backend, "device": args.device,
            "dtype": args.dtype, "compile": args.compile}


def _check_resume_flags(args: argparse.Namespace) -> None:
    from gptbench.runstore import validate_run_name

    validate_run_name(args.resume)
    if args.preset or args.config:
        raise UserError("--preset and --config cannot be combined with --resume; the run keeps its config")
    if args.name is not None:
        raise UserError("give --name NAME for a new run or --resume NAME to continue one, not both")
    if args.init_from or _lora_flags(args):
        raise UserError("--init-from and --lora-* cannot be combined with --resume; the run keeps its source and LoRA settings")


def run_train(args: argparse.Namespace) -> int:
    from gptbench.launch import worker_parallel

    if not args.no_ui:
        from gptbench.commands.ui import run_ui

        return run_ui(args, start_training=True)

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    framework, parallel = worker_parallel(args.strategy or "ddp", bool(args.activation_checkpointing))
    if framework is not None and (args.nproc is not None or args.hostfile is not None):
        raise UserError(f"this process is already one rank of {parallel.world_size} started by {'torchrun' if framework == 'torch' else 'mlx.launch'}; drop --nproc/--hostfile")
    if framework is None and ((args.nproc or 1) > 1 or args.hostfile is not None):
        return _launch(args)
    if args.threads is not None:
        os.environ[paths.TORCH_THREADS] = str(args.threads)
    if not parallel.distributed:
        if args.strategy == "fsdp":
            raise UserError("--strategy fsdp shards the model over several processes; add --nproc N (or drop --strategy)")
        return _train(args, parallel, None)
    return _train_rank(args, framework, parallel)


def _launch(args: argparse.Namespace) -> int:
    """This process launches the ranks (`gptbench train --nproc N ...`)."""
    import time

    from gptbench import launch
    from gptbench.backends.optim import MUON_FSDP
    from gptbench.backends.registry import resolve_backend_name
    from gptbench.runstore import Run, RunStore

    store = RunStore(args.runs_dir)
    argv = launch.strip_launcher_options(list(getattr(args, "argv", None) or sys.argv[1:]))
    if args.resume is not None:
        _check_resume_flags(args)
        name = args.resume
        saved: dict[str, Any] = {}
        try:
            saved = Run(store.root / name).config()
        except UserError:
            pass  # rank 0 will say what is wrong with it
        backend_name = resolve_backend_name(args.backend or saved.get("backend") or "auto")
        device = args.device or (saved.get("device_request", "auto") if backend_name == saved.get("backend") else "auto")
        optimizer = args.optimizer or saved.get("train", {}).get("optimizer", "adamw")
    else:
        cfg = _new_run_config(args)
        optimizer = cfg.train.optimizer
        if cfg.lora:
            from gptbench.backends.lora import LORA_ONE_PROCESS

            raise UserError(LORA_ONE_PROCESS)
        backend_name = resolve_backend_name(cfg.backend)
        device = cfg.device
        name = cfg.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if args.name is None:
            argv += ["--name", name]  # every rank trains the run this launcher watches
    strategy = args.strategy or "ddp"
    if strategy == "fsdp" and optimizer == "muon":  # said here once, not by every rank
        raise UserError(MUON_FSDP)
    if backend_name == "torch":
        if args.hostfile is not None:
            raise UserError("--hostfile lists Macs for mlx.launch; for several machines with torch start torchrun on each (see README: Scaling out)")
        nproc = args.nproc
        gpus = launch.check_torch_request(nproc, device, strategy)
        on_cpu = not gpus
    else:
        nproc = launch.check_mlx_request(args.nproc or 0, args.hostfile, strategy, bool(args.activation_checkpointing))
        on_cpu = device == "cpu"
    return launch.launch(backend_name, nproc, args.hostfile, argv, store.root, name, args.threads, on_cpu)


def _train_rank(args: argparse.Namespace, framework: str, parallel: Any) -> int:
    """One rank of a distributed run; never returns (see the module docstring)."""
    import traceback

    from gptbench.backends.registry import backend_class

    comm = None
    code = 1
    try:
        if args.backend not in (None, "auto", framework):
            raise UserError(f"this process was started by {'torchrun' if framework == 'torch' else 'mlx.launch'}, which runs --backend {framework}; drop --backend {args.backend}")
        args.backend = framework
        comm = backend_class(framework).connect(parallel, args.device or "auto")
        code = _train(args, parallel, comm)
    except UserError as exc:
        if not getattr(exc, "quiet", False) and (parallel.rank == 0 or comm is not None):
            print(f"gptbench: error: {'' if parallel.rank == 0 else f'rank {parallel.rank}: '}{exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print(f"gptbench: rank {parallel.rank} interrupted", file=sys.stderr)
        code = 130
    except BaseException as exc:  # noqa: BLE001 - reported here; the launcher names the failed rank
        from gptbench.launch import lost_peer, short_reason

        if lost_peer(exc):  # not this rank's fault: no traceback
            print(f"gptbench: rank {parallel.rank} stopped: another rank is gone ({short_reason(exc)})", file=sys.stderr)
        else:
            traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if code in (0, 130) and comm is not None:
        try:
            comm.close()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
    os._exit(code)


def _train(args: argparse.Namespace, parallel: Any, comm: Any) -> int:
    from gptbench.commands.progress import RichReporter
    from gptbench.runstore import RunStore
    from gptbench.train import QuietReporter, Trainer

    store = RunStore(args.runs_dir)
    model_flags, train_flags = _flags(args)
    world = parallel.world_size
    reporter = RichReporter() if parallel.rank == 0 else QuietReporter()
    if args.resume is not None:
        _check_resume_flags(args)
        if "grad_accum" in train_flags:  # per process on the command line, global in the run
            train_flags["grad_accum"] *= world
        trainer = Trainer.resume_run(
            store,
            args.resume,
            {"model": model_flags, "train": train_flags, **_run_flags(args)},
            reporter,
            accept_changed_data=args.accept_changed_data,
            comm=comm,
        )
    else:
        cfg = _new_run_config(args)
        # --grad-accum (and a preset's or file's) counts one process's micro-batches;
        # the run records the step's total over all processes
        cfg = replace(cfg, train=replace(cfg.train, grad_accum=cfg.train.grad_accum * world),
                      command=" ".join(["gptbench", *sys.argv[1:]]))
        trainer = Trainer.new_run(store, cfg, reporter, comm=comm)
    if not parallel.distributed:
        from gptbench.backends.cpu import ThreadPolicy

        # the command (not the Trainer as a library) adapts torch's CPU threads to the cores
        # other processes leave free, unless --threads or OMP_NUM_THREADS fixed them
        trainer.thread_policy = ThreadPolicy.for_backend(trainer.backend)
    t0 = time.time()
    outcome = trainer.fit()
    if parallel.rank == 0:
        best = f"{outcome.best_val_loss:.4f}" if outcome.best_val_loss is not None else "n/a"
        if outcome.best_val_bpb is not None:
            best += f" ({outcome.best_val_bpb:.4f} bits/byte)"
        print(f"run {outcome.run.name} {outcome.state} at step {outcome.step} in {time.time() - t0:.1f}s; best val loss {best}")
        print(f"  {outcome.run.path}")
    return 0 if outcome.state == "finished" else 130
