"""`gptbench train`: start or resume a run (headless with --no-ui, else in the TUI).

With `--nproc N` (or `--hostfile`) this process is the launcher of N ranks (`launch.py`);
started by torchrun or mlx.launch it is one rank: it joins the group, trains its share
and, when done, leaves with `os._exit` (a DDP process that exits normally can abort in
gloo's finalisation, which would report a finished run as failed)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from typing import Any

from gptbench import paths
from gptbench.data.sources import data_help
from gptbench.errors import UserError
from gptbench.spec.cli import ResumeRequest, TrainRequest, add_spec_arguments, finite_float, request_argv, request_from_args

__all__ = ["finite_float", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a new run or resume one",
        description="Train a GPT. Precedence: defaults < --preset < --config FILE.toml < flags.",
    )
    p.add_argument("--no-ui", action="store_true", help="train headless with a progress bar (default opens the TUI dashboard)")
    p.add_argument("--resume", metavar="NAME", help="continue a run from its last checkpoint")
    p.add_argument("--preset", help="tiny | small | modern | modern-small | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | finetune "
                                    "(default tiny; finetune with --init-from); modern = today's recipe (rope, qk-norm, relu2, muon, ...)")
    p.add_argument("--config", metavar="FILE", help="TOML file with the settings below (top-level keys and [model], [train], [lora], [parallel] tables)")
    p.add_argument("--accept-changed-data", action="store_true", help="with --resume: continue although the corpus changed since the run started")
    add_spec_arguments(p, data_help())
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from gptbench.training.ranks import worker_parallel

    request = request_from_args(args)
    if not args.no_ui:
        from gptbench.commands.ui import run_ui

        return run_ui(args, training=request)
    parallel_spec = _parallel_of(request)
    framework, parallel = worker_parallel(parallel_spec.strategy, parallel_spec.activation_checkpointing)
    launcher_flags = parallel_spec.nproc > 1 or parallel_spec.hostfile is not None
    if framework is not None and (getattr(args, "nproc", None) is not None or parallel_spec.hostfile is not None):
        raise UserError(f"this process is already one rank of {parallel.world_size} started by {'torchrun' if framework == 'torch' else 'mlx.launch'}; drop --nproc/--hostfile")
    if framework is None and launcher_flags:
        return _launch(args.runs_dir, request)
    threads = _runtime_threads(request)
    if threads is not None:
        os.environ[paths.TORCH_THREADS] = str(threads)
    if not parallel.distributed:
        if parallel_spec.strategy == "fsdp":
            raise UserError("--strategy fsdp shards the model over several processes; add --nproc N (or drop --strategy)")
        return _train(args.runs_dir, request, parallel, None)
    return _train_rank(args.runs_dir, request, framework, parallel)


def _parallel_of(request: TrainRequest) -> Any:
    """The parallel settings asked for: a new run's, or those a resume gives."""
    from gptbench.spec import RunSpec
    from gptbench.spec.resolve import with_overrides

    if isinstance(request, ResumeRequest):
        return with_overrides(RunSpec(), {k: v for k, v in request.overrides.items() if k.startswith("parallel.")}).parallel
    return request.parallel


def _runtime_threads(request: TrainRequest) -> int | None:
    if isinstance(request, ResumeRequest):
        return request.overrides.get("runtime.threads")
    return request.runtime.threads


def _launch_target(store: Any, request: TrainRequest) -> Any:
    """The spec a launch trains: a new run's, or a resumed run's with its overrides (the
    resume rules of `training.resuming`, so backend and device follow them)."""
    from gptbench.runstore import Run
    from gptbench.runstore.specfile import read_spec
    from gptbench.spec import RunSpec
    from gptbench.training.resuming import resumed_spec

    if not isinstance(request, ResumeRequest):
        return request
    try:
        saved = read_spec(Run(store.root / request.name))
    except UserError:  # rank 0 will say what is wrong with the run
        saved = RunSpec(name=request.name)
    return resumed_spec(saved, request.overrides, request.name)[0]


def _launch(runs_dir: Any, request: TrainRequest) -> int:
    """This process launches the ranks (`gptbench train --nproc N ...`): each runs the
    same request, whole, without the launcher's own settings."""
    from gptbench.backends.optim import MUON_FSDP
    from gptbench.backends.registry import resolve_backend_name
    from gptbench.runstore import RunStore
    from gptbench.training import launch

    store = RunStore(runs_dir)
    par, target = _parallel_of(request), _launch_target(store, request)
    backend_name, device = resolve_backend_name(target.runtime.backend), target.runtime.device
    if par.strategy == "fsdp" and target.train.optimizer == "muon":  # said here once, not by every rank
        raise UserError(MUON_FSDP)
    argv = ["train", "--no-ui", "--runs-dir", str(store.root), *request_argv(request, for_rank=True)]
    if backend_name == "torch":
        if par.hostfile is not None:
            raise UserError("--hostfile lists Macs for mlx.launch; for several machines with torch start torchrun on each (see README: Scaling out)")
        nproc = par.nproc
        on_cpu = not launch.check_torch_request(nproc, device, par.strategy)
    else:
        nproc = launch.check_mlx_request(par.nproc if par.nproc > 1 else 0, par.hostfile, par.strategy, par.activation_checkpointing)
        on_cpu = device == "cpu"
    return launch.launch(backend_name, nproc, par.hostfile, argv, store.root, str(target.name), _runtime_threads(request), on_cpu)


def _train_rank(runs_dir: Any, request: TrainRequest, framework: str, parallel: Any) -> int:
    """One rank of a distributed run; never returns (see the module docstring)."""
    import traceback

    from gptbench.backends.registry import backend_class

    comm = None
    code = 1
    try:
        request = _on_framework(request, framework)
        device = request.overrides.get("runtime.device") if isinstance(request, ResumeRequest) else request.runtime.device
        comm = backend_class(framework).connect(parallel, device or "auto")
        code = _train(runs_dir, request, parallel, comm)
    except UserError as exc:
        if not getattr(exc, "quiet", False) and (parallel.rank == 0 or comm is not None):
            print(f"gptbench: error: {'' if parallel.rank == 0 else f'rank {parallel.rank}: '}{exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print(f"gptbench: rank {parallel.rank} interrupted", file=sys.stderr)
        code = 130
    except BaseException as exc:  # noqa: BLE001 - reported here; the launcher names the failed rank
        from gptbench.training.ranks import lost_peer, short_reason

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


def _on_framework(request: TrainRequest, framework: str) -> TrainRequest:
    """The request on the framework whose launcher started this rank."""
    launcher = "torchrun" if framework == "torch" else "mlx.launch"
    asked = request.overrides.get("runtime.backend") if isinstance(request, ResumeRequest) else request.runtime.backend
    if asked not in (None, "auto", framework):
        raise UserError(f"this process was started by {launcher}, which runs --backend {framework}; drop --backend {asked}")
    if isinstance(request, ResumeRequest):
        return replace(request, overrides={**request.overrides, "runtime.backend": framework})
    return replace(request, runtime=replace(request.runtime, backend=framework))


def _train(runs_dir: Any, request: TrainRequest, parallel: Any, comm: Any) -> int:
    from gptbench.commands.progress import RichReporter
    from gptbench.runstore import RunStore
    from gptbench.training import QuietReporter, Trainer

    store = RunStore(runs_dir)
    world = parallel.world_size
    reporter = RichReporter() if parallel.rank == 0 else QuietReporter()
    # --grad-accum (and a preset's or file's) counts one process's micro-batches; the run
    # records the step's total over all processes
    if isinstance(request, ResumeRequest):
        overrides = dict(request.overrides)
        if "train.grad_accum" in overrides:
            overrides["train.grad_accum"] *= world
        trainer = Trainer.resume_run(store, request.name, overrides, reporter,
                                     accept_changed_data=request.accept_changed_data, comm=comm)
    else:
        spec = replace(request, train=replace(request.train, grad_accum=request.train.grad_accum * world),
                       command=" ".join(["gptbench", *sys.argv[1:]]))
        trainer = Trainer.new_run(store, spec, reporter, comm=comm)
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
