"""The MLX backend (Apple GPU, or CPU anywhere `mlx` installs): `MLXBackend` implements the
`Backend` contract over `model.GPT`, gluing the model to its optimizers (`optim.py`), device
and ranks (`parallel.py`), decode layout (`decode.py`) and sampling (`sampling.py`). Mirrors
`backends/torch/backend.py`.

Same spec, names and layouts as the torch backend, and the same optimisation (see
`optim.py`): weight decay on >= 2-D tensors only, clipping by global norm with torch's
`1e-6` guard, and the mean loss over micro-batches. Optimizer moments are exported as
`exp_avg.<name>` / `exp_avg_sq.<name>` (Muon's as `momentum.<name>`) with meta `{"step"}`
exactly like torch, so a run resumes on either.

The whole training step (every micro-batch's forward/backward, accumulation, clipping and
the optimizer update) is one function over (weights, optimizer state, batch, key), compiled
with `mx.compile` unless `compile=False`; MLX evaluates lazily, so the step returns
unevaluated scalars and the loop syncs only when it logs. Precision: parameters, moments and
compute are float32 (MLX has no autocast); an explicit `--dtype bfloat16|float16` is refused
rather than silently ignored.
"""

from __future__ import annotations

# the model first: it may preload a faster CBLAS, which must happen before mlx.core loads.
from gptbench.backends.mlx.model import BLAS, GPT, ModelCache, cross_entropy, target_logprobs  # isort: skip
from gptbench.backends.mlx.lora import LoRAKeys, apply_lora  # isort: skip

import sys
from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.optimizers import MultiOptimizer, Optimizer, clip_grad_norm
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from gptbench import paths
from gptbench.backends.base import Backend, Batch, StepResult
from gptbench.backends.lora import LORA_ONE_PROCESS, LORA_WITH_MUON, LoRAConfig, init_adapters, is_adapter
from gptbench.backends.mlx import decode, parallel as ranks  # `parallel` is the Parallel argument
from gptbench.backends.mlx.optim import AdamW, Muon, adamw
from gptbench.backends.mlx.sampling import KeyStream, make_generator, sample_tokens
from gptbench.backends.optim import OptimConfig, muon_blocks, optimizer_state_shapes
from gptbench.backends.parallel import Collectives, Parallel, rank_seed
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError


def check_dtype(dtype: str) -> str:
    """The training dtype `dtype` names: float32 (also for `auto`), the only one MLX
    computes in; the half-precision ones are refused rather than silently ignored."""
    if dtype not in ("auto", "float32"):
        if dtype in ("bfloat16", "float16"):
            raise UserError(f"the mlx backend computes in float32 only; drop --dtype {dtype} (or use auto / float32)")
        raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    return "float32"


class MLXBackend(Backend):
    name = "mlx"
    shares_context = True
    # The training step (every micro-batch's forward and backward, clipping and the AdamW
    # update) compiles into one function, traced once per run: MLX documents the fusion
    # gains on its GPU, and on a CPU it measured within noise of eager.
    default_compile = True

    @classmethod
    def connect(cls, parallel: Parallel, device: str = "auto") -> Collectives:
        return ranks.connect(parallel, device)

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
            raise UserError(ranks.NO_ACTIVATION_CHECKPOINTING)
        self.config = config
        self.parallel = parallel
        self._device = ranks.resolve_device(device)
        self.device = "gpu" if self._device == mx.Device(mx.gpu) else "cpu"
        self.dtype = check_dtype(dtype)
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
        self.optimizer: AdamW | MultiOptimizer | None = None
        self._adamw: AdamW | None = None
        self._muon: Muon | None = None  # with OptimConfig.muon: the hidden matrices
        self.optim_config: OptimConfig | None = None
        self._step_fn: Any = None
        self._eval_fn: Any = None
        self._decode_layout = False  # whether forward_last chose the decode layout (see decode.py)
        self._column_major = False  # whether it applied it

    def hints(self) -> list[str]:
        if sys.platform == "linux" and self.device == "cpu" and BLAS is None and (paths.env(paths.MLX_BLAS) or "auto").lower() == "auto":
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

    def _from_rank0(self, arrays: list[mx.array]) -> list[mx.array]:
        """Rank 0's `arrays` on every rank (`parallel.from_rank0`). Collective."""
        return ranks.from_rank0(arrays, self._device, self.parallel)

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

    def forward_logits(self, idx: np.ndarray) -> np.ndarray:
        with mx.stream(self._device):
            logits = self.model(mx.array(np.asarray(idx, dtype=np.int32)))
            return np.array(logits.astype(mx.float32))

    def token_logprobs(self, idx: np.ndarray, targets: np.ndarray, positions: np.ndarray | None = None,
                       segments: np.ndarray | None = None) -> np.ndarray:
        with mx.stream(self._device):
            return target_logprobs(self.model, mx.array(np.asarray(idx, dtype=np.int32)), targets, positions, segments)

    # ---- training -------------------------------------------------------------------
    def setup_optimizer(self, optim: OptimConfig) -> None:
        if optim.muon is not None and self.lora is not None:
            raise UserError(LORA_WITH_MUON)
        if self._column_major:  # training runs on row-major weights
            decode.set_layout(self.model, self.config.tie_embeddings, column_major=False)
        self._decode_layout = self._column_major = False
        self.optim_config = optim
        self._adamw = adamw(optim)
        blocks = muon_blocks(self.config) if optim.muon is not None else {}
        if blocks:
            self._muon = Muon(blocks, optim.muon)
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
                grads, norm = clip_grad_norm(grads, clip)
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

    def _state_names(self) -> list[tuple[Optimizer, dict[str, str]]]:
        """Each optimizer with its per-parameter state entries -> checkpoint name prefixes."""
        out: list[tuple[Optimizer, dict[str, str]]] = [(self._adamw, {"m": "exp_avg", "v": "exp_avg_sq"})]
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

    def forward_last(self, ids: np.ndarray | mx.array, cache: ModelCache | None) -> mx.array:
        if not self._decode_layout:  # decided once; set_weights and setup_optimizer undo it
            self._decode_layout = True
            if self.optimizer is None and self.device == "cpu":
                self._column_major = decode.use_decode_layout(self.model, self.config.tie_embeddings)
        with mx.stream(self._device):
            x = ids if isinstance(ids, mx.array) else mx.array(np.asarray(ids, dtype=np.int32))
            logits = self.model(x, cache=cache, last_only=True)[:, -1, :].astype(mx.float32)
            mx.async_eval(logits)
            return logits

    def make_generator(self, seed: int | None) -> KeyStream:
        return make_generator(seed)

    def sample(self, logits: mx.array, params: SamplingParams, history: np.ndarray | None, generator: KeyStream) -> np.ndarray:
        with mx.stream(self._device):
            return sample_tokens(logits, params, history, generator)
