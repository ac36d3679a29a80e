"""The PyTorch backend (CUDA, MPS, CPU): `Backend` over `torch_model.GPT`.

Mixed precision: parameters and optimizer state stay float32; on CUDA the forward pass runs
under bfloat16 autocast by default (`dtype="float16"` adds a GradScaler). `compile=True`
compiles the batch loss (model and cross-entropy) with `torch.compile`; weights are always
read from the uncompiled module, so checkpoints never carry `_orig_mod.` prefixes.

Several processes (started by torchrun, which sets RANK/WORLD_SIZE/LOCAL_RANK): `connect`
joins the group (gloo for CPU tensors, NCCL for CUDA ones, one GPU per local rank). The
"ddp" strategy wraps the model in DistributedDataParallel (rank 0's weights broadcast at
construction, one bucketed all-reduce per step, skipped with `no_sync` on every micro-batch
but the last); "fsdp" applies FSDP2's `fully_shard` to each block and then to the root
(which holds the embeddings, the final norm and the head, so a tied head stays in one
group), before the optimizer is built. Either way `train_step` scales each micro-batch's
loss by 1/(its rank's count): the all-reduce averages over ranks. Checkpoint state moves
as full tensors: gathered to rank 0 (`DTensor.full_tensor`) and scattered or broadcast
from it, so a checkpoint is the same file whatever trained it.

Optimizers: torch's fused AdamW, and with `OptimConfig.muon` the `Muon` below for the
hidden matrices (the float32 update of `base.MuonConfig`; `torch.optim.Muon` runs
Newton-Schulz in bfloat16, 1-3% off the exact update, and takes no split blocks). Muon
orthogonalises whole matrices, so it trains with one process or DDP, not FSDP's shards.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gptbench.backends.base import (
    NS_COEFFICIENTS,
    NS_EPS,
    MUON_FSDP,
    NS_STEPS,
    Backend,
    Batch,
    Collectives,
    MuonConfig,
    OptimConfig,
    Parallel,
    StepResult,
    muon_blocks,
    optimizer_state_shapes,
    rank_seed,
)
from gptbench.backends.cpu import ThreadPolicy
from gptbench.backends.lora import LORA_ONE_PROCESS, LORA_WITH_MUON, LoRAConfig, init_adapters, is_adapter
from gptbench.backends.spec import GPTConfig
from gptbench.backends.sampling import SamplingParams, apply_filters
from gptbench.backends.torch_model import GPT, ModelCache, apply_lora, cross_entropy
from gptbench import paths
from gptbench.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
THREADS_ENV = paths.TORCH_THREADS


def _torch_at_least(major: int, minor: int) -> bool:
    found = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return found >= (major, minor)


def apply_thread_setting() -> None:
    """Honour `$GPTBENCH_TORCH_THREADS` (set by `--threads`) for CPU intra-op threads.

    Why: OpenMP threads spin at barriers, so when the CPU is shared (a TUI watching the run,
    another job) a run using every core can slow down several-fold; the TUI starts its
    trainers with one core left free. Unset means torch's default (all physical cores).
    """
    value = paths.env(THREADS_ENV)
    if not value:
        return
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise UserError(f"--threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def resolve_device(device: str) -> str:
    """`auto` -> cuda > mps > cpu; an explicit device that is missing is a UserError."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps requested but MPS is not available; use --device auto or cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {device!r} for the torch backend; use auto, cpu, cuda or mps")
    return device


def rank_device(device: str, parallel: Parallel) -> str:
    """The device of one rank: GPU `LOCAL_RANK` when CUDA is used, else the CPU."""
    kind = device.split(":")[0]
    if kind == "mps" or (device == "auto" and not torch.cuda.is_available()):
        if kind == "mps":
            raise UserError("several processes cannot share --device mps; use --device cpu (or one process)")
        return "cpu"
    if kind == "cuda" or device == "auto":
        if ":" in device:
            raise UserError(f"with several processes each rank uses cuda:LOCAL_RANK; pass --device cuda instead of {device}")
        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available; use --device auto or cpu")
        if parallel.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {parallel.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; start at most that many processes per machine")
        return f"cuda:{parallel.local_rank}"
    return resolve_device(device)


def dist_timeout() -> timedelta:
    """How long a rank waits in a collective before it fails: `$GPTBENCH_DIST_TIMEOUT`
    seconds, default 30 minutes (rank 0 may prepare a large corpus while the others wait).
    A rank that dies is noticed at once (its connections close); this bounds a hung one."""
    value = paths.env(paths.DIST_TIMEOUT)
    try:
        seconds = float(value) if value else 1800.0
    except ValueError:
        raise UserError(f"{paths.DIST_TIMEOUT} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise UserError(f"{paths.DIST_TIMEOUT} must be positive, got {value!r}")
    return timedelta(seconds=seconds)


class TorchCollectives(Collectives):
    """The trainer's collectives over the default process group, on CPU tensors (gloo, also
    beside NCCL), so none of them waits for the GPU."""

    def __init__(self, parallel: Parallel, name: str) -> None:
        super().__init__(parallel)
        self.name = name

    def sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        data = json.dumps(obj).encode() if self.rank == 0 else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0 else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, src=0)
        return json.loads(buf.numpy().tobytes())

    def barrier(self) -> None:
        self.sum([0.0])

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def checkpoint_blocks(model: GPT) -> None:
    """Activation checkpointing per block: keep each block's input only and recompute its
    activations in the backward pass (`torch.utils.checkpoint`, non-reentrant, RNG state
    preserved, so dropout masks replay exactly and the gradients are bitwise those of the
    plain model). The block's `forward` is wrapped on the instance, so parameter names,
    state dicts and FSDP's hooks (which run around `forward`) are untouched; generation
    (a KV cache) and evaluation (no gradients) run the block directly."""
    from torch.utils.checkpoint import checkpoint

    for block in model.h:
        def forward(x: torch.Tensor, cache: Any = None, mask: torch.Tensor | None = None, rope: Any = None,
                    _run: Any = block.forward) -> torch.Tensor:
            if cache is None and torch.is_grad_enabled():
                return checkpoint(_run, x, cache, mask, rope, use_reentrant=False)
            return _run(x, cache, mask, rope)

        block.forward = forward


def orthogonalize(updates: list[torch.Tensor]) -> list[torch.Tensor]:
    """NS of `base.MuonConfig` for every update, each [blocks, rows, cols], in float32.

    Blocks of the same (transposed when tall) shape run through the iteration as one batch:
    the hidden matrices of a GPT come in two or three shapes, so a step is a few batched
    matmul chains instead of one per matrix."""
    a, b, c = NS_COEFFICIENTS
    oriented = [u.mT if u.shape[-2] > u.shape[-1] else u for u in updates]
    same_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(oriented):
        same_shape.setdefault(tuple(x.shape[1:]), []).append(i)
    out: list[torch.Tensor] = list(updates)
    for members in same_shape.values():
        X = torch.cat([oriented[i] for i in members])
        X = X / (torch.linalg.matrix_norm(X, keepdim=True) + NS_EPS)
        for _ in range(NS_STEPS):
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
        for i, part in zip(members, X.split([oriented[i].shape[0] for i in members])):
            out[i] = part.mT if updates[i].shape[-2] > updates[i].shape[-1] else part
    return out


class Muon(torch.optim.Optimizer):
    """Muon over 2-D matrices: the update of `base.MuonConfig`, in float32.

    Each parameter group holds the matrices orthogonalised in the same number of row
    blocks (`blocks`); `lr` is set per step by the backend. The step counter drives the
    momentum warmup and is checkpointed as the optimizer step."""

    def __init__(self, blocks: dict[torch.nn.Parameter, int], muon: MuonConfig) -> None:
        groups: dict[int, list[torch.nn.Parameter]] = {}
        for p, k in blocks.items():
            groups.setdefault(k, []).append(p)
        super().__init__([{"params": ps, "blocks": k} for k, ps in groups.items()], {"lr": 0.0})
        self.muon = muon
        self.steps = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        mu = self.muon.momentum_at(self.steps)
        params, updates = [], []
        for group in self.param_groups:
            k = group["blocks"]
            for p in group["params"]:
                g = p.grad.float()
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g, alpha=1 - mu)
                updates.append((g * (1 - mu) + buf * mu).view(k, -1, p.shape[1]))
                params.append((p, group))
        for (p, group), o in zip(params, orthogonalize(updates)):
            lr, rows = group["lr"], p.shape[0] // group["blocks"]
            if self.muon.weight_decay:
                p.mul_(1 - lr * self.muon.weight_decay)
            p.add_(o.reshape(p.shape).to(p.dtype), alpha=-lr * max(1.0, rows / p.shape[1]) ** 0.5)
        self.steps += 1


class TorchBackend(Backend):
    name = "torch"

    @classmethod
    def connect(cls, parallel: Parallel, device: str = "auto") -> Collectives:
        if not parallel.distributed:
            return Collectives(parallel)
        import torch.distributed as dist

        if not dist.is_available():
            raise UserError("this torch build has no torch.distributed; install a standard torch wheel to train on several processes")
        resolved = rank_device(device, parallel)
        if resolved.startswith("cuda"):
            if not dist.is_nccl_available():
                raise UserError("this torch build has no NCCL, which several GPU processes need; install a CUDA torch wheel, or use --device cpu")
            torch.cuda.set_device(resolved)
            backend, name = "cpu:gloo,cuda:nccl", "nccl"
        else:
            backend, name = "gloo", "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=dist_timeout())
        if dist.get_world_size() != parallel.world_size or dist.get_rank() != parallel.rank:
            raise RuntimeError(f"process group is rank {dist.get_rank()} of {dist.get_world_size()}, expected {parallel.rank} of {parallel.world_size}")
        return TorchCollectives(parallel, name)

    def __init__(
        self,
        config: GPTConfig,
        *,
        device: str = "auto",
        seed: int = 0,
        dtype: str = "float32",
        compile: bool = False,
        parallel: Parallel = Parallel(),
    ) -> None:
        apply_thread_setting()
        self.config = config
        self.parallel = parallel
        self.device = rank_device(device, parallel) if parallel.distributed else resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
        self.fsdp = parallel.distributed and parallel.strategy == "fsdp"
        if self.fsdp and dtype == "float16":
            raise UserError("--strategy fsdp trains in float32 or bfloat16; drop --dtype float16 (or use --strategy ddp)")
        self.dtype = dtype
        self.compile = compile
        self.seed = seed
        torch.manual_seed(seed)
        self.model = GPT(config)
        self.model.init_weights(seed)  # its own generator: the same weights on every rank
        self.model.to(self.device)
        if parallel.activation_checkpointing:
            checkpoint_blocks(self.model)
        self._ddp: torch.nn.Module | None = None
        if parallel.distributed:
            if parallel.rank:
                torch.manual_seed(rank_seed(seed, parallel.rank))  # each rank its own dropout masks
            if self.fsdp:
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import fully_shard

                mesh = init_device_mesh(self.device.split(":")[0], (parallel.world_size,))
                for block in self.model.h:
                    fully_shard(block, mesh=mesh)
                fully_shard(self.model, mesh=mesh)  # the root: wte, wpe, ln_f and the (tied) head
            else:
                from torch.nn.parallel import DistributedDataParallel

                self._ddp = DistributedDataParallel(self.model, device_ids=[torch.device(self.device).index] if self.device.startswith("cuda") else None)
        # The module a training forward goes through (DDP's wrapper syncs gradients).
        self._net = self._ddp if self._ddp is not None else self.model
        # The loss of a batch, compiled whole (model and cross-entropy) when asked to;
        # weights are always read from `self.model`, so checkpoints never carry `_orig_mod.`.
        self._loss = torch.compile(self._batch_loss) if compile else self._batch_loss
        self.optimizer: torch.optim.Optimizer | None = None  # AdamW
        self.muon: Muon | None = None  # with OptimConfig.muon: the hidden matrices
        self._muon_names: set[str] = set()
        self.optim_config: OptimConfig | None = None
        self._decode_layout = False  # see _use_decode_layout
        self._decode_undo: list[Any] | None = None  # restores the modules prepack_for_decoding changed
        self._decode_threads: ThreadPolicy | None = None  # adapts the CPU threads while generating
        use_amp = dtype != "float32" and self.device.split(":")[0] in ("cuda", "mps")
        self._autocast = (
            (lambda: torch.autocast(device_type=self.device.split(":")[0], dtype=DTYPES[dtype]))
            if use_amp
            else contextlib.nullcontext
        )
        self._scaler = torch.amp.GradScaler("cuda") if use_amp and dtype == "float16" and self.device.startswith("cuda") else None

    @classmethod
    def available_memory(cls, device: str, processes: int = 1) -> int | None:
        resolved = resolve_device(device)
        if resolved.startswith("cuda"):  # each rank has a GPU of its own (the current one)
            free, _ = torch.cuda.mem_get_info(torch.device(resolved))
            return int(free)
        return super().available_memory(resolved, processes)

    def cpu_threads(self) -> int | None:
        if self.device != "cpu" or self.parallel.distributed:
            return None
        return torch.get_num_threads()

    def set_cpu_threads(self, n: int) -> None:
        torch.set_num_threads(n)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self._net(x), y)

    def peak_memory(self) -> int:
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(torch.device(self.device)))
        return super().peak_memory()

    @property
    def _rank0(self) -> bool:
        return self.parallel.rank == 0

    # ---- weights --------------------------------------------------------------------
    def _named_params(self) -> dict[str, torch.nn.Parameter]:
        """Canonical name -> parameter (a tied head is the embedding, listed once); LoRA
        adapters are not model weights and are left out."""
        return {n: p for n, p in self.model.named_parameters() if not is_adapter(n)}

    def _trainable_params(self) -> dict[str, torch.nn.Parameter]:
        """What the optimizer steps: every parameter, or only the adapters after apply_lora."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _sharded(self) -> None:
        """Put FSDP back in its sharded layout. A forward without backward (evaluation,
        sampling) leaves the root's parameters gathered; the state calls work on shards."""
        if self.fsdp:
            from torch.distributed.fsdp import FSDPModule

            for module in self.model.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    def get_weights(self) -> dict[str, np.ndarray]:
        self._sharded()
        out = {}
        for n, p in self._named_params().items():
            full = _gather(p.detach())  # collective under FSDP
            if self._rank0:
                out[n] = full.float().cpu().numpy().copy()
        return out

    def _plain_modules(self) -> None:
        """Undo `prepack_for_decoding` (its copies are snapshots of the weights); the
        thread policy of generation stops too (training has its own)."""
        self._decode_threads = None
        for undo in self._decode_undo or []:
            undo()
        if self._decode_undo is not None:
            self._decode_undo, self._decode_layout = None, False

    def set_weights(self, tensors: dict[str, np.ndarray]) -> None:
        self._plain_modules()
        self._sharded()
        params = self._named_params()
        with torch.no_grad():
            for name, p in params.items():
                value = torch.from_numpy(np.ascontiguousarray(tensors[name], dtype=np.float32)) if self._rank0 else None
                p.copy_(self._from_rank0(value, p))

    @torch.no_grad()
    def forward_logits(self, idx: np.ndarray) -> np.ndarray:
        self.model.eval()
        x = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)
        with self._autocast():
            logits = self.model(x)
        return logits.float().cpu().numpy()

    # ---- training -------------------------------------------------------------------
    def setup_optimizer(self, optim: OptimConfig) -> None:
        self._plain_modules()  # training from here: the plain modules again
        params = self._trainable_params()
        if optim.muon is not None and self.fsdp:
            raise UserError(MUON_FSDP)
        if optim.muon is not None and self.lora is not None:
            raise UserError(LORA_WITH_MUON)
        blocks = muon_blocks(self.config) if optim.muon is not None else {}
        self.muon = Muon({params[n]: k for n, k in blocks.items()}, optim.muon) if blocks else None
        self._muon_names = set(blocks)
        adamw = [p for n, p in params.items() if n not in blocks]
        decay = [p for p in adamw if p.dim() >= 2]
        no_decay = [p for p in adamw if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        kwargs: dict[str, Any] = {"lr": 0.0, "betas": (optim.beta1, optim.beta2), "eps": optim.eps}
        # One fused kernel per step instead of a dozen foreach passes over the parameters:
        # ~5% of a tiny CPU step (benchmarks/train_throughput.py). CPU support came in 2.4.
        if self.device.startswith("cuda") or (self.device == "cpu" and _torch_at_least(2, 4)):
            kwargs["fused"] = True
        else:
            kwargs["foreach"] = True
        self.optimizer = torch.optim.AdamW(groups, **kwargs)
        self.optim_config = optim
        self._param_list = list(params.values())

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(a, dtype=np.int64))
        if self.device == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.startswith("cuda") else t.to(self.device)

    def _grad_sync(self, last: bool) -> Any:
        """Gradients cross ranks only after the last micro-batch of a step: DDP skips its
        all-reduce inside `no_sync`, FSDP2 its reduce-scatter while sync is off."""
        if self._ddp is not None and not last:
            return self._ddp.no_sync()
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def train_step(self, micro_batches: Sequence[Batch], lr: float) -> StepResult:
        if self.optimizer is None or self.optim_config is None:
            raise RuntimeError("setup_optimizer() must be called before train_step()")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["lr"] = lr * self.optim_config.muon.lr_ratio
        self.model.train()
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, (x_np, y_np) in enumerate(micro_batches):
            x, y = self._to_device(x_np), self._to_device(y_np)
            with self._grad_sync(i == n - 1):
                with self._autocast():
                    loss = self._loss(x, y)
                scaled = loss / n  # 1/n, not 1/(ranks·n): the all-reduce averages over ranks
                if self._scaler is not None:
                    self._scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            total += loss.detach()
        optimizers = [self.optimizer] if self.muon is None else [self.optimizer, self.muon]
        if self._scaler is not None:
            for opt in optimizers:
                self._scaler.unscale_(opt)
        clip = self.optim_config.grad_clip if self.optim_config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self._param_list, clip, foreach=True)
        if self.fsdp:
            grad_norm = grad_norm.full_tensor()  # a replicated DTensor holding the global norm
        for opt in optimizers:
            if self._scaler is not None:
                self._scaler.step(opt)
            else:
                opt.step()
        if self._scaler is not None:
            self._scaler.update()
        self.model.zero_grad(set_to_none=True)
        return StepResult(total / n, grad_norm)

    @torch.no_grad()
    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        self.model.eval()
        with self._autocast():
            loss = self._loss(self._to_device(x), self._to_device(y))
        return float(loss)

    def optimizer_state_shapes(self) -> dict[str, tuple[int, ...]]:
        return optimizer_state_shapes(self.config, self.optim_config, self.lora)

    def get_optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        assert self.optimizer is not None
        self._sharded()
        tensors: dict[str, np.ndarray] = {}
        step = self.muon.steps if self.muon is not None else 0
        for name, p in self._trainable_params().items():
            if name in self._muon_names:  # (never sharded: muon trains with one process or DDP)
                st = self.muon.state.get(p)
                if st:
                    full = _gather(st["momentum_buffer"].detach())
                    if self._rank0:
                        tensors[f"momentum.{name}"] = full.float().cpu().numpy().copy()
                elif self._rank0:  # before the first step: the buffer starts at zero
                    tensors[f"momentum.{name}"] = np.zeros(tuple(p.shape), dtype=np.float32)
                continue
            st = self.optimizer.state.get(p)
            if st:  # every rank has state for every parameter (its shard under FSDP), or none
                for key, prefix in (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")):
                    full = _gather(st[key].detach())
                    if self._rank0:
                        tensors[f"{prefix}.{name}"] = full.float().cpu().numpy().copy()
                step = int(st["step"])
            elif self._rank0:  # before the first step: AdamW's moments start at zero
                tensors[f"exp_avg.{name}"] = np.zeros(tuple(p.shape), dtype=np.float32)
                tensors[f"exp_avg_sq.{name}"] = np.zeros(tuple(p.shape), dtype=np.float32)
        meta: dict[str, Any] = {"step": step}
        if self._scaler is not None:
            meta["grad_scale"] = float(self._scaler.get_scale())
        return tensors, meta

    def set_optimizer_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self._sharded()
        step = int(meta.get("step", 0))
        self.optimizer.state.clear()
        if self.muon is not None:
            self.muon.state.clear()
            self.muon.steps = step
        if step == 0:
            return  # nothing has moved yet: fresh optimizers are exactly this state
        on_device = any(group.get("fused") or group.get("capturable") for group in self.optimizer.param_groups)
        for name, p in self._trainable_params().items():
            if name in self._muon_names:
                value = torch.from_numpy(np.asarray(tensors[f"momentum.{name}"], dtype=np.float32).copy()) if self._rank0 else None
                self.muon.state[p] = {"momentum_buffer": self._from_rank0(value, p).detach().clone()}
                continue
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                value = torch.from_numpy(np.asarray(tensors[f"{key}.{name}"], dtype=np.float32).copy()) if self._rank0 else None
                moments[key] = self._from_rank0(value, p).detach().clone()
            self.optimizer.state[p] = {
                # fused and capturable AdamW keep the step on the parameter's device
                "step": torch.tensor(float(step), device=_local(p).device if on_device else "cpu"),
                **moments,
            }
        if self._scaler is not None and "grad_scale" in meta:
            self._scaler.update(float(meta["grad_scale"]))

    def _from_rank0(self, value: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """`value` (rank 0's full tensor, on the CPU) laid out like parameter `like` on every
        rank: as it is with one process, broadcast under DDP, scattered into shards under
        FSDP. Collective when distributed; the other ranks pass None."""
        if not self.parallel.distributed:
            assert value is not None
            return value.to(self.device)
        import torch.distributed as dist

        if self.fsdp:
            from torch.distributed.tensor import distribute_tensor

            full = value.to(self.device) if value is not None else torch.empty(like.shape, dtype=torch.float32, device=self.device)
            return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=0)
        full = value.to(self.device) if value is not None else torch.empty(like.shape, dtype=torch.float32, device=self.device)
        dist.broadcast(full, src=0)
        return full

    # ---- LoRA -----------------------------------------------------------------------
    def apply_lora(self, lora: LoRAConfig) -> None:
        if self.optimizer is not None:
            raise RuntimeError("apply_lora() must come before setup_optimizer()")
        if self.parallel.distributed:
            raise UserError(LORA_ONE_PROCESS)
        apply_lora(self.model, lora)
        self.lora = lora
        self.set_adapters(init_adapters(self.config, lora, self.seed))

    def get_adapters(self) -> dict[str, np.ndarray]:
        return {n: p.detach().float().cpu().numpy().copy() for n, p in self.model.named_parameters() if is_adapter(n)}

    def set_adapters(self, tensors: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if is_adapter(name):
                    p.copy_(torch.from_numpy(np.ascontiguousarray(tensors[name], dtype=np.float32)))

    def rng_state_shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        shapes = {"torch_cpu": ("uint8", tuple(torch.get_rng_state().shape))}
        if self.device.startswith("cuda"):
            shapes["torch_cuda"] = ("uint8", tuple(torch.cuda.get_rng_state().shape))
        return shapes

    def get_rng_state(self) -> dict[str, np.ndarray]:
        state = {"torch_cpu": torch.get_rng_state().numpy().copy()}
        if self.device.startswith("cuda"):
            state["torch_cuda"] = torch.cuda.get_rng_state().numpy().copy()
        return state

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        if "torch_cpu" in state:
            torch.set_rng_state(torch.from_numpy(np.asarray(state["torch_cpu"], dtype=np.uint8).copy()))
        if "torch_cuda" in state and self.device.startswith("cuda"):
            torch.cuda.set_rng_state(torch.from_numpy(np.asarray(state["torch_cuda"], dtype=np.uint8).copy()))

    # ---- generation -----------------------------------------------------------------
    def new_cache(self, pad: np.ndarray | None = None) -> ModelCache:
        rows = None if pad is None else torch.as_tensor(np.asarray(pad, dtype=np.int64), device=self.device)
        return ModelCache(self.config.n_layer, rows)

    def _use_decode_layout(self) -> None:
        """Make the one-row matmuls of CPU generation fast, once, for a backend that is not
        training (see `prepack_for_decoding`; the column-major layout where that cannot
        run). Values never change, so get/set_weights and every op still work."""
        self._decode_layout = True
        if self.optimizer is not None or self.device != "cpu" or self.parallel.distributed:
            return
        self._decode_threads = ThreadPolicy.for_backend(self)
        extra = 4 * sum(m.weight.numel() for m in self.model.modules() if isinstance(m, torch.nn.Linear))
        extra += 4 * self.model.wte.weight.numel() if self.config.tie_embeddings else 0
        if extra < DECODE_LAYOUT_MIN_BYTES:
            return  # small enough to stay in cache: MKL's plain path is faster
        available = self.available_memory("cpu")
        if available is None or available > 2 * extra:  # the packed copies must fit beside the weights
            self._decode_undo = prepack_for_decoding(self.model, self.config.tie_embeddings)
            if self._decode_undo is not None:
                return
        column_major_for_decoding(self.model, self.config.tie_embeddings)

    @torch.inference_mode()
    def forward_last(self, ids: np.ndarray | torch.Tensor, cache: ModelCache | None) -> torch.Tensor:
        if self.model.training:  # eval() walks every module: too slow to repeat per token
            self.model.eval()
        if not self._decode_layout:
            self._use_decode_layout()
        if self._decode_threads is not None:
            self._decode_threads.tick()
        x = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        with self._autocast():
            logits = self.model(x, cache=cache, last_only=True)
        return logits[:, -1, :].float()

    def make_generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device if self.device.startswith("cuda") else "cpu")
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        return gen

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, params: SamplingParams, history: np.ndarray | None, generator: torch.Generator) -> np.ndarray:
        x = filtered_logits(logits, params, history)
        if params.greedy:
            return x.argmax(dim=-1).cpu().numpy()
        probs = torch.softmax(x, dim=-1)
        if probs.device.type != generator.device.type:
            probs = probs.cpu()
        return torch.multinomial(probs, 1, generator=generator)[:, 0].cpu().numpy()


def _gather(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP shard (a collective all-gather), or `t` itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of an FSDP DTensor, or `t` itself."""
    return t.to_local() if hasattr(t, "to_local") else t


# ---- CPU decoding ------------------------------------------------------------------------
# The decode layouts pay only for a model whose matmuls stream from memory: a oneDNN call
# costs about 12 us more than MKL's before it reads a byte. Measured here (one-row decode,
# 65-token vocabulary, packed vs plain tokens/s): 0.6x at 0.8M Linear elements (the tiny
# preset), 0.76x at 3.2M, 1.04x at 4.8M, 1.5x at 7.5M, 1.7x at `small`, 1.7x at gpt2.
DECODE_LAYOUT_MIN_BYTES = 16 << 20


def prepack_for_decoding(model: GPT, tied: bool) -> list[Any] | None:
    """Route every Linear (and a tied head) of an inference model through oneDNN with its
    weight prepacked for one-row inputs; returns what undoes it, or None when this torch
    has no oneDNN linear (then nothing was changed).

    Why: decoding multiplies one row by every weight matrix, which is bound by memory
    bandwidth. On the AMD EPYC dev VM, MKL's path streams a 124M model's weights at about
    19 GB/s while oneDNN's prepacked inner product streams them at about 28 GB/s
    (benchmarks/generate.py: 40 -> 56 tokens/s at the gpt2 shape, the same greedy tokens).
    The dense weights stay as they are (a packed copy sits beside each), so the model can
    still be read, saved and trained; `setup_optimizer` and `set_weights` call the undo
    first (a packed copy is a snapshot). LoRA adapters are read live, not packed.
    """
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(ops, "_reorder_linear_weight") or not hasattr(ops, "_linear_pointwise"):
        return None
    try:  # the ops are internal (torch.compile's CPU freezing uses them): check they run here
        probe = torch.ones(2, 3)
        ok = torch.allclose(ops._linear_pointwise(torch.ones(1, 3), ops._reorder_linear_weight(probe, 1), None, "none", [], ""),
                            torch.full((1, 2), 3.0))
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        return None

    def packed(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        w = ops._reorder_linear_weight(weight.detach().contiguous(), 1)
        b = bias.detach() if bias is not None else None

        def linear(x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            y = ops._linear_pointwise(x.reshape(-1, shape[-1]).contiguous(), w, b, "none", [], "")
            return y.view(*shape[:-1], y.shape[-1])

        return linear

    def with_adapters(module: torch.nn.Linear, base: Any) -> Any:
        """A LoRA layer: the packed frozen weight plus its small update, read live."""
        def linear(x: torch.Tensor) -> torch.Tensor:
            return base(x) + module.scale * F.linear(F.linear(x, module.lora_a), module.lora_b)

        return linear

    undo = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                base = packed(module.weight, module.bias)
                module.forward = with_adapters(module, base) if hasattr(module, "lora_a") else base  # this instance only
                undo.append(lambda m=module: m.__dict__.pop("forward", None))
        if tied:
            model.head = packed(model.wte.weight, None)
            undo.append(lambda: model.__dict__.pop("head", None))
    return undo


def column_major_for_decoding(model: GPT, tied: bool) -> None:
    """Store Linear weights (and a tied head) column-major, [in, out] in memory: one-row
    matmuls run about 1.4x faster on CPU against that layout (GPT-2's Conv1D layout) than
    against row-major `[out, in]` with MKL. Names, shapes and values are unchanged."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if tied:
        weights.append(model.wte.weight)  # the tied head is the biggest matrix of all
    with torch.inference_mode(False), torch.no_grad():  # normal tensors: training may follow
        for w in weights:
            if w.stride() != (1, w.shape[0]):
                w.data = w.data.t().contiguous().t()


# ---- sampling filters: torch versions of gptbench.backends.sampling's references ----------
def repetition_penalty(logits: torch.Tensor, history: np.ndarray, penalty: float) -> torch.Tensor:
    h = torch.as_tensor(np.asarray(history, dtype=np.int64), device=logits.device)
    counts = torch.zeros_like(logits).scatter_add_(1, h.clamp(min=0), (h >= 0).to(logits.dtype))
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalised, logits)


def center(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.max(dim=-1, keepdim=True).values


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    remove = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, before >= p)
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    if min_p <= 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + float(np.log(min_p))
    return logits.masked_fill(logits < threshold, float("-inf"))


def filtered_logits(logits: torch.Tensor, params: SamplingParams, history: np.ndarray | None) -> torch.Tensor:
    """The fixed filter order of gptbench.backends.sampling, vectorised over the batch."""
    return apply_filters(logits, params, history, repetition_penalty=repetition_penalty, center=center,
                         top_k=top_k_filter, top_p=top_p_filter, min_p=min_p_filter)

