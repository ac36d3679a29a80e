"""The MLX backend (Apple GPU, or CPU anywhere `mlx` installs): `Backend` over `mlx_model.GPT`.

Same spec, names and layouts as the torch backend, and the same optimisation:
`mlx.optimizers.AdamW` with `bias_correction=True` (MLX defaults to False; torch always
corrects), eps added after the bias-corrected sqrt(v) (MLX's and torch's placement agree),
weight decay on >= 2-D tensors only, clipping by global norm with torch's `1e-6` guard, and
the mean loss over micro-batches. Optimizer moments are exported as `exp_avg.<name>` /
`exp_avg_sq.<name>` with meta `{"step"}` exactly like torch, so a run resumes on either.

The whole training step (every micro-batch's forward/backward, accumulation, clipping and
the AdamW update) is one function over (weights, optimizer state, batch, key), compiled
with `mx.compile` unless `compile=False`; MLX evaluates lazily, so the step returns
unevaluated scalars and the loop syncs only when it logs. With `OptimConfig.muon`, `_Muon`
below trains the hidden matrices (the float32 update of `base.MuonConfig`, the same math
as torch's; `mlx.optimizers.Muon` adds weight decay to the gradient and cannot split
c_attn) beside `_AdamW`, and its state is exported as `momentum.<name>`. Precision: parameters, moments and compute are float32 (MLX has no autocast); an
explicit `--dtype bfloat16|float16` is refused rather than silently ignored.

Several processes (started by mlx.launch, which sets MLX_RANK and MLX_HOSTFILE): `connect`
joins the ring group, and the compiled step averages the accumulated gradients over ranks
with `nn.average_gradients` (one all-sum per 32 MiB of gradients) before clipping, so the
norm and the update are the global ones. MLX does not broadcast weights: every rank
initialises from the same seed, and rank 0's weights are then copied to all (an all-sum
with zeros elsewhere), which also installs a resumed checkpoint read on rank 0 only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

# mlx_model first: it may preload a faster CBLAS, which must happen before mlx.core loads.
from gptbench.backends.mlx_model import GPT, LoRAKeys, ModelCache, apply_lora, cross_entropy  # isort: skip

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.optimizers import MultiOptimizer
from mlx.utils import tree_flatten, tree_map, tree_map_with_path, tree_unflatten

from gptbench.backends.base import (
    NS_COEFFICIENTS,
    NS_EPS,
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
from gptbench.backends.lora import LORA_ONE_PROCESS, LORA_WITH_MUON, LoRAConfig, init_adapters, is_adapter
from gptbench.backends.spec import GPTConfig
from gptbench.backends.sampling import SamplingParams, apply_filters
from gptbench import paths
from gptbench.errors import UserError


def resolve_device(device: str | None) -> mx.Device:
    """`auto` -> the GPU when MLX has one (Metal or CUDA build), else the CPU."""
    device = (device or "auto").lower()
    if device == "auto":
        return mx.Device(mx.gpu) if mx.is_available(mx.gpu) else mx.Device(mx.cpu)
    if device == "gpu":
        if not mx.is_available(mx.gpu):
            raise UserError("--device gpu requested but this MLX build has no GPU; use --device auto or cpu")
        return mx.Device(mx.gpu)
    if device == "cpu":
        return mx.Device(mx.cpu)
    if device.split(":")[0] in ("cuda", "mps"):
        raise UserError(f"--device {device} is a torch device; the mlx backend takes --device auto, gpu or cpu")
    raise UserError(f"unknown device {device!r} for the mlx backend; use auto, gpu or cpu")


class _AdamW(optim.AdamW):
    """`mlx.optimizers.AdamW` with weight decay only on >= 2-D tensors (matrices and
    embeddings), the rule torch's parameter groups implement; biases and norm gains get
    plain (bias-corrected) Adam. The decision is made on static shapes, so it compiles."""

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if parameter.ndim >= 2:
            return super().apply_single(gradient, parameter, state)
        return optim.Adam.apply_single(self, gradient, parameter, state)


def orthogonalize(updates: list[mx.array]) -> list[mx.array]:
    """NS of `base.MuonConfig` for every update, each [blocks, rows, cols], in float32.

    Blocks of the same (transposed when tall) shape run through the iteration as one batch:
    the hidden matrices of a GPT come in two or three shapes, so a step is a few batched
    matmul chains instead of one per matrix."""
    a, b, c = NS_COEFFICIENTS
    oriented = [u.swapaxes(-1, -2) if u.shape[-2] > u.shape[-1] else u for u in updates]
    same_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(oriented):
        same_shape.setdefault(tuple(x.shape[1:]), []).append(i)
    out: list[mx.array] = list(updates)
    for members in same_shape.values():
        X = mx.concatenate([oriented[i] for i in members])
        X = X / (mx.linalg.norm(X, axis=(-2, -1), keepdims=True) + NS_EPS)
        for _ in range(NS_STEPS):
            A = X @ X.swapaxes(-1, -2)
            X = a * X + (b * A + c * (A @ A)) @ X
        ends = np.cumsum([oriented[i].shape[0] for i in members])[:-1].tolist()
        for i, part in zip(members, mx.split(X, ends, axis=0)):
            out[i] = part.swapaxes(-1, -2) if updates[i].shape[-2] > updates[i].shape[-1] else part
    return out


class _Muon(optim.Optimizer):
    """Muon over 2-D matrices: the update of `base.MuonConfig`, in float32.

    `blocks` gives each parameter's row blocks by canonical name (the path MLX passes).
    The learning rate and the momentum are arrays in the state, set by the backend before
    every step from `steps` (updates taken, the momentum warmup's clock), so the compiled
    training step sees them change (a Python attribute would be frozen into the trace)."""

    def __init__(self, blocks: dict[str, int], muon: MuonConfig) -> None:
        super().__init__()
        self.blocks = blocks
        self.muon = muon
        self.steps = 0
        self.state["learning_rate"] = mx.array(0.0, dtype=mx.float32)
        self.state["momentum"] = mx.array(muon.momentum, dtype=mx.float32)

    def init_single(self, parameter: mx.array, state: dict) -> None:
        state["momentum_buffer"] = mx.zeros(parameter.shape, dtype=mx.float32)

    def apply_gradients(self, gradients: dict, parameters: dict) -> dict:
        if not self._initialized:
            self.init(gradients)
        self.state["step"] = self.step + 1
        mu, eta, wd = self.state["momentum"], self.state["learning_rate"], self.muon.weight_decay

        def nesterov(path: str, g: mx.array, state: dict) -> mx.array:
            g = g.astype(mx.float32)
            state["momentum_buffer"] = mu * state["momentum_buffer"] + (1 - mu) * g
            return (1 - mu) * g + mu * state["momentum_buffer"]

        updates = tree_flatten(tree_map_with_path(nesterov, gradients, self.state))
        params = dict(tree_flatten(tree_map(lambda g, p: p, gradients, parameters)))
        orthogonal = orthogonalize([u.reshape(self.blocks[name], -1, u.shape[1]) for name, u in updates])
        new = []
        for (name, _), o in zip(updates, orthogonal):
            p = params[name]
            rows = p.shape[0] // self.blocks[name]
            if wd:
                p = p * (1 - eta * wd)
            new.append((name, (p - (eta * max(1.0, rows / p.shape[1]) ** 0.5) * o.reshape(p.shape)).astype(p.dtype)))
        return tree_unflatten(new)


class _KeyStream:
    """A sampling RNG: an MLX key split once per draw (independent of training's key)."""

    def __init__(self, seed: int | None) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.key = mx.random.key(int(seed) % (1 << 64))  # MLX keys take an unsigned 64-bit seed

    def next(self) -> mx.array:
        self.key, sub = mx.random.split(self.key)
        return sub


class MLXCollectives(Collectives):
    """The trainer's collectives over MLX's ring group. They run on the training device's
    stream, after the step queued there, so every rank issues collectives in one order;
    sums are float64 on the CPU (MLX's GPUs have no float64)."""

    name = "ring"

    def __init__(self, parallel: Parallel, device: mx.Device) -> None:
        super().__init__(parallel)
        self._device = device
        self._dtype = mx.float64 if device == mx.Device(mx.cpu) else mx.float32

    def _all_sum(self, a: np.ndarray, dtype: Any) -> np.ndarray:
        with mx.stream(self._device):
            out = mx.distributed.all_sum(mx.array(a, dtype=dtype))
            return np.array(out)

    def sum(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in self._all_sum(np.asarray(values, dtype=np.float64), self._dtype)]

    def any(self, flag: bool) -> bool:
        return bool(self._all_sum(np.array([1 if flag else 0], dtype=np.int32), mx.int32)[0] > 0)

    def broadcast(self, obj: Any) -> Any:
        import json

        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8) if self.rank == 0 else np.zeros(0, dtype=np.uint8)
        size = int(self._all_sum(np.array([len(data)], dtype=np.int32), mx.int32)[0])
        buf = np.zeros(size, dtype=np.int32)
        if self.rank == 0:
            buf[:] = data
        return json.loads(self._all_sum(buf, mx.int32).astype(np.uint8).tobytes())

    def barrier(self) -> None:
        self._all_sum(np.zeros(1, dtype=np.int32), mx.int32)


class MLXBackend(Backend):
    name = "mlx"
    # The training step (every micro-batch's forward and backward, clipping and the AdamW
    # update) compiles into one function, traced once per run: MLX documents the fusion
    # gains on its GPU, and on a CPU it measured within noise of eager.
    default_compile = True

    @classmethod
    def connect(cls, parallel: Parallel, device: str = "auto") -> Collectives:
        if parallel.activation_checkpointing:
            raise UserError("the mlx backend has no activation checkpointing; drop --activation-checkpointing (or use --backend torch)")
        if not parallel.distributed:
            return Collectives(parallel)
        if parallel.strategy != "ddp":
            raise UserError(f"--strategy {parallel.strategy} is torch only; the mlx backend trains data-parallel (--strategy ddp)")
        if not mx.distributed.is_available("ring"):
            raise UserError("this MLX build has no ring backend; pip install -U mlx to train on several processes")
        group = mx.distributed.init(strict=True, backend="ring")
        if group.size() != parallel.world_size or group.rank() != parallel.rank:
            raise RuntimeError(f"MLX ring group is rank {group.rank()} of {group.size()}, expected {parallel.rank} of {parallel.world_size}")
        return MLXCollectives(parallel, resolve_device(device))

    def __init__(
        self,
        config: GPTConfig,
        *,
        device: str = "auto",
        seed: int = 0,
        dtype: str = "float32",
        compile: bool = True,
        parallel: Parallel = Parallel(),
    ) -> None:
        if parallel.activation_checkpointing:
            raise UserError("the mlx backend has no activation checkpointing; drop --activation-checkpointing (or use --backend torch)")
        self.config = config
        self.parallel = parallel
        self._device = resolve_device(device)
        self.device = "gpu" if self._device == mx.Device(mx.gpu) else "cpu"
        if dtype not in ("auto", "float32"):
            if dtype in ("bfloat16", "float16"):
                raise UserError(f"the mlx backend computes in float32 only; drop --dtype {dtype} (or use auto / float32)")
            raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
        self.dtype = "float32"
        self.compile = compile  # compiles the training step and the evaluation loss
        self.seed = seed
        self._lora_keys: LoRAKeys | None = None  # set by apply_lora
        with mx.stream(self._device):
            self.model = GPT(config)
            self.model.init_weights(seed)
            mx.eval(self.model.parameters())
            # Dropout key: a plain array, so it is checkpointed and restored exactly. Each
            # rank draws its own masks; rank 0 keeps the single-process stream.
            self._key = mx.random.key(((seed + 1) if parallel.rank == 0 else rank_seed(seed, parallel.rank)) % (1 << 64))
        if parallel.distributed:  # the same weights everywhere, whatever each rank's RNG did
            self.model.update(tree_unflatten(list(zip(self._named_params(), self._from_rank0(list(self._named_params().values()))))))
            mx.eval(self.model.parameters())
        self.optimizer: _AdamW | MultiOptimizer | None = None
        self._adamw: _AdamW | None = None
        self._muon: _Muon | None = None  # with OptimConfig.muon: the hidden matrices
        self.optim_config: OptimConfig | None = None
        self._step_fn: Any = None
        self._eval_fn: Any = None
        self._decode_layout = False  # whether forward_last chose the decode layout (see set_layout)
        self._column_major = False  # whether it applied it

    def hints(self) -> list[str]:
        from gptbench.backends import mlx_model

        if sys.platform == "linux" and self.device == "cpu" and mlx_model.BLAS is None and (paths.env(paths.MLX_BLAS) or "auto").lower() == "auto":
            return ["mlx[cpu] is using its reference BLAS (about 8x slower to train); install OpenBLAS "
                    "(Debian/Ubuntu: apt-get install libopenblas0-pthread) and gptbench uses it automatically"]
        return []

    def peak_memory(self) -> int:
        if self.device == "gpu":
            return int(mx.get_peak_memory())
        return super().peak_memory()

    # ---- weights --------------------------------------------------------------------
    def _named_params(self) -> dict[str, mx.array]:
        """Canonical name -> parameter (a tied head is the embedding, listed once); LoRA
        adapters are not model weights and are left out."""
        return {n: p for n, p in tree_flatten(self.model.parameters()) if not is_adapter(n)}

    def _trainable_params(self) -> dict[str, mx.array]:
        """What the optimizer steps: every parameter, or only the adapters after apply_lora."""
        return dict(tree_flatten(self.model.trainable_parameters()))

    def get_weights(self) -> dict[str, np.ndarray]:
        if self.parallel.rank != 0:
            return {}  # every rank holds the same weights: rank 0's are the checkpoint
        params = self._named_params()
        mx.eval(list(params.values()))
        return {n: np.ascontiguousarray(np.array(p.astype(mx.float32), copy=True)) for n, p in params.items()}

    def set_weights(self, tensors: dict[str, np.ndarray]) -> None:
        names = self._named_params()
        with mx.stream(self._device):
            arrays = [mx.array(np.ascontiguousarray(tensors[n], dtype=np.float32)) if self.parallel.rank == 0 else p for n, p in names.items()]
            self.model.update(tree_unflatten(list(zip(names, self._from_rank0(arrays)))))
            mx.eval(self.model.parameters())
        self._decode_layout = self._column_major = False  # new arrays, row-major

    def _from_rank0(self, arrays: list[mx.array]) -> list[mx.array]:
        """Rank 0's `arrays` on every rank (one all-sum of one flat buffer, the other ranks
        contributing zeros); the arrays themselves with one process. Collective."""
        if not self.parallel.distributed:
            return arrays
        with mx.stream(self._device):
            flat = mx.concatenate([a.astype(mx.float32).reshape(-1) for a in arrays])
            if self.parallel.rank != 0:
                flat = mx.zeros_like(flat)
            summed = mx.distributed.all_sum(flat)
            mx.eval(summed)
            out, start = [], 0
            for a in arrays:
                out.append(summed[start : start + a.size].reshape(a.shape))
                start += a.size
            return out

    def forward_logits(self, idx: np.ndarray) -> np.ndarray:
        with mx.stream(self._device):
            logits = self.model(mx.array(np.asarray(idx, dtype=np.int32)))
            return np.array(logits.astype(mx.float32))

    # ---- training -------------------------------------------------------------------
    def setup_optimizer(self, optim: OptimConfig) -> None:
        if optim.muon is not None and self.lora is not None:
            raise UserError(LORA_WITH_MUON)
        if self._column_major:  # training runs on row-major weights
            set_layout(self.model, self.config.tie_embeddings, column_major=False)
        self._decode_layout = self._column_major = False
        self.optim_config = optim
        self._adamw = _AdamW(
            learning_rate=0.0,
            betas=[optim.beta1, optim.beta2],
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            bias_correction=True,
        )
        blocks = muon_blocks(self.config) if optim.muon is not None else {}
        if blocks:
            self._muon = _Muon(blocks, optim.muon)
            self.optimizer = MultiOptimizer([self._muon, self._adamw], [lambda path, _: path in blocks])
        else:
            self._muon, self.optimizer = None, self._adamw
        with mx.stream(self._device):
            self.optimizer.init(self.model.trainable_parameters())
        self._build_step()

    def _build_step(self) -> None:
        """Build (and compile) the training step over the current model and optimizer
        state objects; rebuilt whenever `set_optimizer_state` replaces the state tree."""
        assert self.optimizer is not None and self.optim_config is not None
        model, optimizer = self.model, self.optimizer
        clip = float(self.optim_config.grad_clip)

        def loss_fn(x: mx.array, y: mx.array, key: mx.array) -> mx.array:
            return cross_entropy(model(x, key=key), y)

        lora_keys = self._lora_keys
        if lora_keys is not None and self.lora is not None and self.lora.dropout > 0:
            plain_loss = loss_fn

            def loss_fn(x: mx.array, y: mx.array, key: mx.array) -> mx.array:  # noqa: F811
                key, lora_keys.key = mx.random.split(key)  # LoRA dropout draws from its own half
                try:
                    return plain_loss(x, y, key)
                finally:
                    lora_keys.key = None

        grad_fn = nn.value_and_grad(model, loss_fn)
        state = [model.state, optimizer.state]
        average = self.parallel.distributed

        def step(xs: mx.array, ys: mx.array, key: mx.array) -> tuple[mx.array, mx.array]:
            n = xs.shape[0]
            keys = mx.random.split(key, n)
            total, grads = None, None
            for i in range(n):  # unrolled at trace time; n is fixed for a run
                loss, g = grad_fn(xs[i], ys[i], keys[i])
                g = tree_map(lambda a: a / n, g)
                total = loss if total is None else total + loss
                grads = g if grads is None else tree_map(mx.add, grads, g)
            if average:  # the mean over ranks: the step of one process over all their batches
                grads = nn.average_gradients(grads)
            if clip > 0:
                grads, norm = optim.clip_grad_norm(grads, clip)
            else:
                norm = mx.sqrt(sum(mx.sum(mx.square(g)) for _, g in tree_flatten(grads)))
            optimizer.update(model, grads)
            return total / n, norm

        self._step_fn = mx.compile(step, inputs=state, outputs=state) if self.compile else step

    def train_step(self, micro_batches: Sequence[Batch], lr: float) -> StepResult:
        if self.optimizer is None or self._step_fn is None:
            raise RuntimeError("setup_optimizer() must be called before train_step()")
        with mx.stream(self._device):
            xs = mx.array(np.stack([np.asarray(x, dtype=np.int32) for x, _ in micro_batches]))
            ys = mx.array(np.stack([np.asarray(y, dtype=np.int32) for _, y in micro_batches]))
            self._adamw.learning_rate = mx.array(lr, dtype=mx.float32)
            if self._muon is not None:
                muon = self.optim_config.muon
                self._muon.learning_rate = mx.array(lr * muon.lr_ratio, dtype=mx.float32)
                self._muon.state["momentum"] = mx.array(muon.momentum_at(self._muon.steps), dtype=mx.float32)
                self._muon.steps += 1
            self._key, key = mx.random.split(self._key)  # the dropout key of this step
            loss, norm = self._step_fn(xs, ys, key)
            # Schedule the work without waiting for it: the loop reads the loss only when
            # it logs, and the next step's batch preparation overlaps with this compute.
            mx.async_eval(loss, norm, self.model.state, self.optimizer.state, self._key)
        return StepResult(loss, norm)

    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        with mx.stream(self._device):
            if self._eval_fn is None:
                model = self.model

                def batch_loss(xa: mx.array, ya: mx.array) -> mx.array:
                    return cross_entropy(model(xa), ya)

                self._eval_fn = mx.compile(batch_loss, inputs=[model.state]) if self.compile else batch_loss
            loss = self._eval_fn(mx.array(np.asarray(x, dtype=np.int32)), mx.array(np.asarray(y, dtype=np.int32)))
            return float(loss)

    def optimizer_state_shapes(self) -> dict[str, tuple[int, ...]]:
        return optimizer_state_shapes(self.config, self.optim_config, self.lora)

    def _state_names(self) -> list[tuple[optim.Optimizer, dict[str, str]]]:
        """Each optimizer with its per-parameter state entries -> checkpoint name prefixes."""
        out: list[tuple[optim.Optimizer, dict[str, str]]] = [(self._adamw, {"m": "exp_avg", "v": "exp_avg_sq"})]
        if self._muon is not None:
            out.append((self._muon, {"momentum_buffer": "momentum"}))
        return out

    _SCALARS = ("step", "learning_rate", "momentum")  # optimizer-wide state, not per parameter

    def get_optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        assert self._adamw is not None
        if self.parallel.rank != 0:  # every rank holds the same state; rank 0 saves it
            return {}, {"step": int(self._adamw.state["step"].item())}
        tensors: dict[str, np.ndarray] = {}
        for opt, prefixes in self._state_names():
            flat = dict(tree_flatten({k: v for k, v in opt.state.items() if k not in self._SCALARS}))
            mx.eval(list(flat.values()))
            for key, value in flat.items():
                name, _, entry = key.rpartition(".")
                tensors[f"{prefixes[entry]}.{name}"] = np.array(value.astype(mx.float32), copy=True)
        return tensors, {"step": int(self._adamw.state["step"].item())}

    def set_optimizer_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        assert self._adamw is not None and self.optimizer is not None
        step = int(meta.get("step", 0))
        muon_names = set(self._muon.blocks) if self._muon is not None else set()
        with mx.stream(self._device):
            for opt, prefixes in self._state_names():
                names, arrays = [], []
                for name, p in self._trainable_params().items():
                    if (name in muon_names) == (opt is self._muon):
                        for entry, prefix in prefixes.items():
                            names.append(f"{name}.{entry}")
                            arrays.append(mx.array(np.asarray(tensors[f"{prefix}.{name}"], dtype=np.float32)) if self.parallel.rank == 0 else mx.zeros(p.shape))
                state = tree_unflatten(list(zip(names, self._from_rank0(arrays))))  # rank 0's, on every rank
                state.update({k: v for k, v in opt.state.items() if k in self._SCALARS})
                state["step"] = mx.array(step, dtype=mx.uint64)
                opt.state = state
            if self._muon is not None:
                self._muon.steps = step
            self.optimizer.init(self.model.trainable_parameters())  # marks them initialised
            mx.eval(self.optimizer.state)
        self._build_step()

    # ---- LoRA -----------------------------------------------------------------------
    def apply_lora(self, lora: LoRAConfig) -> None:
        if self.optimizer is not None:
            raise RuntimeError("apply_lora() must come before setup_optimizer()")
        if self.parallel.distributed:
            raise UserError(LORA_ONE_PROCESS)
        with mx.stream(self._device):
            self._lora_keys = apply_lora(self.model, lora)
        self.lora = lora
        self._eval_fn = None  # traced over the old module tree
        self.set_adapters(init_adapters(self.config, lora, self.seed))

    def get_adapters(self) -> dict[str, np.ndarray]:
        adapters = {n: p for n, p in tree_flatten(self.model.parameters()) if is_adapter(n)}
        mx.eval(list(adapters.values()))
        return {n: np.array(p.astype(mx.float32), copy=True) for n, p in adapters.items()}

    def set_adapters(self, tensors: dict[str, np.ndarray]) -> None:
        names = [n for n, _ in tree_flatten(self.model.parameters()) if is_adapter(n)]
        with mx.stream(self._device):
            self.model.update(tree_unflatten([(n, mx.array(np.ascontiguousarray(tensors[n], dtype=np.float32))) for n in names]))
            mx.eval(self.model.parameters())

    def rng_state_shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {"mlx_key": ("uint32", tuple(self._key.shape))}

    def get_rng_state(self) -> dict[str, np.ndarray]:
        return {"mlx_key": np.array(self._key, copy=True)}

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        if "mlx_key" in state:
            self._key = mx.array(np.asarray(state["mlx_key"], dtype=np.uint32))

    # ---- generation -----------------------------------------------------------------
    def new_cache(self, pad: np.ndarray | None = None) -> ModelCache:
        rows = None if pad is None else mx.array(np.asarray(pad, dtype=np.int32))
        return ModelCache(self.config.n_layer, rows)

    def _matmul_bytes(self) -> int:
        """Bytes of the Linear weights and a tied head: what one decoded token streams."""
        weights = [m.weight for _, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        weights += [self.model.wte.weight] if self.config.tie_embeddings else []
        return sum(w.nbytes for w in weights)

    def forward_last(self, ids: np.ndarray | mx.array, cache: ModelCache | None) -> mx.array:
        if not self._decode_layout:  # decided once; set_weights and setup_optimizer undo it
            self._decode_layout = True
            if self.optimizer is None and self.device == "cpu" and self._matmul_bytes() >= DECODE_LAYOUT_MIN_BYTES:
                set_layout(self.model, self.config.tie_embeddings, column_major=True)
                self._column_major = True
        with mx.stream(self._device):
            x = ids if isinstance(ids, mx.array) else mx.array(np.asarray(ids, dtype=np.int32))
            logits = self.model(x, cache=cache, last_only=True)[:, -1, :].astype(mx.float32)
            mx.async_eval(logits)
            return logits

    def make_generator(self, seed: int | None) -> _KeyStream:
        return _KeyStream(seed)

    def sample(self, logits: mx.array, params: SamplingParams, history: np.ndarray | None, generator: _KeyStream) -> np.ndarray:
        with mx.stream(self._device):
            x = filtered_logits(logits, params, history)
            if params.greedy:
                tok = mx.argmax(x, axis=-1)
            else:
                tok = mx.random.categorical(x, axis=-1, key=generator.next())
            return np.array(tok).astype(np.int64)


# ---- sampling filters: MLX versions of gptbench.backends.sampling's references ----------
NEG_INF = float("-inf")


# ---- CPU decoding ------------------------------------------------------------------------
# Below this, column-major weights buy nothing measurable: one-row decode tokens/s,
# column-major vs row-major, here: 1.0x at the tiny preset, 0.9-1.0x at `small` with 65
# tokens (42 MB), 1.08x at `small` with GPT-2's vocabulary (119 MB), 1.6x at gpt2 (124M).
DECODE_LAYOUT_MIN_BYTES = 64 << 20


def set_layout(model: GPT, tied: bool, column_major: bool) -> None:
    """Store every Linear weight (and a tied head's embedding) column-major, [in, out] in
    memory, or back to row-major. Names, shapes and values never change.

    Why: decoding multiplies one row by every weight matrix, bound by memory bandwidth.
    With mlx[cpu] on the AMD EPYC dev VM, `x @ W.T` runs about 1.8x faster on the Linears
    and 1.4x on the 50,257-row head against that layout (mlx-lm's gpt2 gets it for free by
    transposing the Conv1D weights it loads): benchmarks/generate.py, the MLX rows.
    """
    def layout(w: mx.array) -> mx.array:
        return mx.contiguous(w.T).T if column_major else mx.contiguous(w)

    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    for m in linears:
        m.weight = layout(m.weight)
    if tied:
        model.wte.weight = layout(model.wte.weight)
    mx.eval([m.weight for m in linears] + ([model.wte.weight] if tied else []))


def repetition_penalty(logits: mx.array, history: np.ndarray, penalty: float) -> mx.array:
    h = mx.array(np.asarray(history, dtype=np.int32))
    B = logits.shape[0]
    rows = mx.broadcast_to(mx.arange(B)[:, None], h.shape)
    counts = mx.zeros(logits.shape, dtype=mx.float32).at[rows, mx.maximum(h, 0)].add((h >= 0).astype(mx.float32))
    penalised = mx.where(logits > 0, logits / penalty, logits * penalty)
    return mx.where(counts > 0, penalised, logits)


def center(logits: mx.array) -> mx.array:
    return logits - mx.max(logits, axis=-1, keepdims=True)


def top_k_filter(logits: mx.array, k: int) -> mx.array:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.min(mx.topk(logits, k, axis=-1), axis=-1, keepdims=True)
    return mx.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: mx.array, p: float) -> mx.array:
    if p >= 1.0:
        return logits
    probs = mx.softmax(logits, axis=-1, precise=True)
    order = mx.argsort(-probs, axis=-1)  # MLX's sort is stable: ties keep index order
    sorted_probs = mx.take_along_axis(probs, order, axis=-1)
    before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
    remove = mx.put_along_axis(mx.zeros(probs.shape, dtype=mx.bool_), order, before >= p, axis=-1)
    return mx.where(remove, NEG_INF, logits)


def min_p_filter(logits: mx.array, min_p: float) -> mx.array:
    if min_p <= 0.0:
        return logits
    threshold = mx.max(logits, axis=-1, keepdims=True) + float(np.log(min_p))
    return mx.where(logits < threshold, NEG_INF, logits)


def filtered_logits(logits: mx.array, params: SamplingParams, history: np.ndarray | None) -> mx.array:
    """The fixed filter order of gptbench.backends.sampling, vectorised over the batch."""
    return apply_filters(logits, params, history, repetition_penalty=repetition_penalty, center=center,
                         top_k=top_k_filter, top_p=top_p_filter, min_p=min_p_filter)
