"""The PyTorch backend (CUDA, MPS, CPU): `TorchBackend` implements the `Backend` contract
over `model.GPT`, gluing the model to its optimizers (`optim.py`), placement and ranks
(`parallel.py`), decode layouts (`decode.py`) and sampling (`sampling.py`). Mirrors
`backends/mlx/backend.py`.

Mixed precision: parameters and optimizer state stay float32; on CUDA the forward pass runs
under bfloat16 autocast by default (`dtype="float16"` adds a GradScaler). `compile=True`
compiles the batch loss (model and cross-entropy) with `torch.compile`; weights are always
read from the uncompiled module, so checkpoints never carry `_orig_mod.` prefixes.

Several processes: `train_step` scales each micro-batch's loss by 1/(its rank's count): the
all-reduce averages over ranks (see `parallel.py` for DDP and FSDP2).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np
import torch

from gptbench.backends.base import Backend, Batch, StepResult
from gptbench.backends.cpu import ThreadPolicy
from gptbench.backends.lora import LORA_ONE_PROCESS, LORA_WITH_MUON, LoRAConfig, init_adapters, is_adapter
from gptbench.backends.optim import MUON_FSDP, OptimConfig, muon_blocks, optimizer_state_shapes
from gptbench.backends.parallel import Collectives, Parallel, rank_seed
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.spec import GPTConfig
from gptbench.backends.torch import decode, parallel as ranks  # `parallel` is the Parallel argument
from gptbench.backends.torch.lora import apply_lora
from gptbench.backends.torch.model import GPT, ModelCache, cross_entropy, target_logprobs
from gptbench.backends.torch.optim import Muon, adamw
from gptbench.backends.torch.sampling import make_generator, sample_tokens
from gptbench.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_dtype(dtype: str, device: str, fsdp: bool) -> str:
    """The training dtype `dtype` names on `device` (`auto`: bfloat16 on a CUDA GPU that has
    it, else float32), refused with a UserError when unknown or not allowed under FSDP."""
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    if fsdp and dtype == "float16":
        raise UserError("--strategy fsdp trains in float32 or bfloat16; drop --dtype float16 (or use --strategy ddp)")
    return dtype


def precision(dtype: str, device: str) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """The forward pass's autocast context (a no-op in float32 or on the CPU) and, for
    float16 on CUDA, the gradient scaler that keeps small gradients from flushing to zero."""
    kind = device.split(":")[0]
    use_amp = dtype != "float32" and kind in ("cuda", "mps")
    if not use_amp:
        return contextlib.nullcontext, None
    scaler = torch.amp.GradScaler("cuda") if dtype == "float16" and kind == "cuda" else None
    return (lambda: torch.autocast(device_type=kind, dtype=DTYPES[dtype])), scaler


class TorchBackend(Backend):
    name = "torch"
    shares_context = True

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
        compile: bool = False,
        parallel: Parallel = Parallel(),
    ) -> None:
        ranks.apply_thread_setting()
        self.config = config
        self.parallel = parallel
        self.device = ranks.rank_device(device, parallel) if parallel.distributed else ranks.resolve_device(device)
        self.fsdp = parallel.distributed and parallel.strategy == "fsdp"
        self.dtype = check_dtype(dtype, self.device, self.fsdp)
        self.compile = compile
        self.seed = seed
        torch.manual_seed(seed)
        self.model = GPT(config)
        self.model.init_weights(seed)  # its own generator: the same weights on every rank
        self.model.to(self.device)
        if parallel.activation_checkpointing:
            ranks.checkpoint_blocks(self.model)
        if parallel.distributed and parallel.rank:
            torch.manual_seed(rank_seed(seed, parallel.rank))  # each rank its own dropout masks
        self._ddp = ranks.wrap_model(self.model, self.device, parallel)
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
        self._decode_undo: list[Any] | None = None  # restores the modules decode.prepack_for_decoding changed
        self._decode_threads: ThreadPolicy | None = None  # adapts the CPU threads while generating
        self._autocast, self._scaler = precision(self.dtype, self.device)

    @classmethod
    def available_memory(cls, device: str, processes: int = 1) -> int | None:
        resolved = ranks.resolve_device(device)
        if resolved.startswith("cuda"):  # each rank has a GPU of its own (the current one)
            return int(torch.cuda.mem_get_info(torch.device(resolved))[0])
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
        """FSDP's sharded layout again, which the state calls work on (see `parallel.reshard`)."""
        if self.fsdp:
            ranks.reshard(self.model)

    def _from_rank0(self, value: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Rank 0's full `value`, laid out like `like` on this rank (`parallel.from_rank0`)."""
        return ranks.from_rank0(value, like, self.device, self.parallel, self.fsdp)

    def get_weights(self) -> dict[str, np.ndarray]:
        self._sharded()
        out = {}
        for n, p in self._named_params().items():
            full = ranks.gather(p.detach())  # collective under FSDP
            if self._rank0:
                out[n] = full.float().cpu().numpy().copy()
        return out

    def _plain_modules(self) -> None:
        """Undo `decode.prepack_for_decoding` (its copies are snapshots of the weights); the
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
            return self.model(x).float().cpu().numpy()

    @torch.no_grad()
    def token_logprobs(self, idx: np.ndarray, targets: np.ndarray, positions: np.ndarray | None = None,
                       segments: np.ndarray | None = None) -> np.ndarray:
        self.model.eval()
        with self._autocast():
            return target_logprobs(self.model, self._to_device(idx), targets, positions, segments)

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
        self.optimizer = adamw([p for n, p in params.items() if n not in blocks], optim, self.device)
        self.optim_config = optim
        self._param_list = list(params.values())

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(a, dtype=np.int64))
        if self.device == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.startswith("cuda") else t.to(self.device)

    def _set_learning_rates(self, lr: float) -> list[torch.optim.Optimizer]:
        """Give this step's learning rate to AdamW (and `lr * lr_ratio` to Muon); returns
        the optimizers that step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.muon is None:
            return [self.optimizer]
        for group in self.muon.param_groups:
            group["lr"] = lr * self.optim_config.muon.lr_ratio
        return [self.optimizer, self.muon]

    def train_step(self, micro_batches: Sequence[Batch], lr: float) -> StepResult:
        if self.optimizer is None or self.optim_config is None:
            raise RuntimeError("setup_optimizer() must be called before train_step()")
        optimizers = self._set_learning_rates(lr)
        self.model.train()
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, (x_np, y_np) in enumerate(micro_batches):
            x, y = self._to_device(x_np), self._to_device(y_np)
            with ranks.grad_sync(self.model, self._ddp, self.fsdp, i == n - 1):
                with self._autocast():
                    loss = self._loss(x, y)
                scaled = loss / n  # 1/n, not 1/(ranks·n): the all-reduce averages over ranks
                if self._scaler is not None:
                    self._scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            total += loss.detach()
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

    # Each optimizer's per-parameter state entries -> checkpoint name prefixes.
    _ADAMW_ENTRIES = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
    _MUON_ENTRIES = {"momentum_buffer": "momentum"}

    def _state_names(self, name: str) -> tuple[torch.optim.Optimizer, dict[str, str]]:
        """The optimizer that trains parameter `name`, with its state entries' prefixes."""
        if name in self._muon_names:
            return self.muon, self._MUON_ENTRIES
        return self.optimizer, self._ADAMW_ENTRIES

    def get_optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        assert self.optimizer is not None
        self._sharded()
        tensors: dict[str, np.ndarray] = {}
        step = self.muon.steps if self.muon is not None else 0
        for name, p in self._trainable_params().items():
            # AdamW has state for every parameter on every rank (its shard under FSDP), or
            # none before the first step, when the moments start at zero; Muon's buffers are
            # never sharded (muon trains with one process or DDP).
            opt, entries = self._state_names(name)
            st = opt.state.get(p)
            for entry, prefix in entries.items():
                full = ranks.gather(st[entry].detach()) if st else torch.zeros(tuple(p.shape))  # collective under FSDP
                if self._rank0:
                    tensors[f"{prefix}.{name}"] = full.float().cpu().numpy().copy()
            if st and opt is self.optimizer:
                step = int(st["step"])
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
            opt, entries = self._state_names(name)
            state: dict[str, torch.Tensor] = {}
            if opt is self.optimizer:  # fused and capturable AdamW keep the step on the parameter's device
                state["step"] = torch.tensor(float(step), device=ranks.local(p).device if on_device else "cpu")
            for entry, prefix in entries.items():
                value = torch.from_numpy(np.asarray(tensors[f"{prefix}.{name}"], dtype=np.float32).copy()) if self._rank0 else None
                state[entry] = self._from_rank0(value, p).detach().clone()
            opt.state[p] = state
        if self._scaler is not None and "grad_scale" in meta:
            self._scaler.update(float(meta["grad_scale"]))

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
        training (`decode.use_decode_layout`), with the CPU threads adapting as it decodes."""
        self._decode_layout = True
        if self.optimizer is not None or self.device != "cpu" or self.parallel.distributed:
            return
        self._decode_threads = ThreadPolicy.for_backend(self)
        self._decode_undo = decode.use_decode_layout(self.model, self.config.tie_embeddings, lambda: self.available_memory("cpu"))

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
        return make_generator(seed, self.device)

    def sample(self, logits: torch.Tensor, params: SamplingParams, history: np.ndarray | None, generator: torch.Generator) -> np.ndarray:
        return sample_tokens(logits, params, history, generator)
