"""The table of settable fields of a run specification: path, flag, TOML key, type and help.

Every CLI flag of `gptbench train` that sets part of a run, every key of a `--config` TOML
file and every field of the TUI's train form is a row here (tests check that the three
and the README's flag table cannot drift from it or from the spec's dataclasses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gptbench.spec.duration import duration_arg


@dataclass(frozen=True)
class Setting:
    """One settable field. `path` addresses it in a RunSpec (`section.field` or a top-level
    field); `toml` is its key in a config file (`section.key` or a top-level key)."""

    path: str
    flag: str
    kind: type
    help: str
    toml: str | None = None  # None: the same as `path`; "" = not settable from a file
    switch: bool = False  # a --flag / --no-flag pair
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # how the flag's (or a file's string) value is read; None: `kind`

    @property
    def dest(self) -> str:
        """The argparse attribute name (the flag without dashes)."""
        return self.flag[2:].replace("-", "_")

    @property
    def toml_key(self) -> str:
        return self.path if self.toml is None else self.toml

    @property
    def section(self) -> str:
        return self.path.partition(".")[0] if "." in self.path else ""

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]


def _s(path: str, flag: str, kind: type, help_: str, **extra: Any) -> Setting:
    return Setting(path, flag, kind, help_, **extra)


RUN_SETTINGS = [
    _s("name", "--name", str, "run name (letters, digits, . _ -); default PRESET-DATE-TIME"),
    _s("init_from", "--init-from", str, "start from pretrained weights: a Hugging Face GPT-2 folder or name (gpt2, gpt2-medium, "
       "gpt2-large, gpt2-xl; from the local HF cache), a gptbench .safetensors file, or RUN[:CHECKPOINT]; the model shape "
       "and tokenizer follow the source", metavar="SRC"),
    _s("data", "--data", str, "corpus (see the --data grammar below)"),
    _s("tokenizer", "--tokenizer", str, "char | byte | gpt2[:RANKS_FILE] | bpe:PATH | bpe:VOCAB_SIZE (default char)"),
]
RUNTIME_SETTINGS = [
    _s("runtime.backend", "--backend", str, "auto | torch | mlx (default auto)", toml="backend"),
    _s("runtime.device", "--device", str, "auto | cpu | cuda | mps (torch) | gpu (mlx) (default auto)", toml="device"),
    _s("runtime.dtype", "--dtype", str, "auto | float32 | bfloat16 | float16 (auto = bf16 autocast on CUDA)", toml="dtype"),
    _s("runtime.compile", "--compile", bool, "compile the training step with the framework's JIT (default: on for mlx, off for torch)",
       toml="compile", switch=True),
    _s("runtime.log_to", "--log-to", str, "mirror the metrics, config and run name to trackers: tensorboard, wandb, trackio "
       "(comma-separated; offline: TensorBoard event files in RUN/tensorboard, a W&B offline run in RUN/wandb, trackio's local store)", toml="log_to",
       metavar="TRACKERS"),
    _s("runtime.threads", "--threads", int, "CPU threads for torch, fixed (default: adapted to the cores other processes leave free)",
       toml="threads"),
]
PARALLEL_SETTINGS = [
    _s("parallel.nproc", "--nproc", int, "train on N processes of this machine: torch through torchrun (one per GPU, or CPU cores), "
       "mlx through mlx.launch"),
    _s("parallel.strategy", "--strategy", str, "with several processes: ddp (a full model on each, default) or fsdp (torch: "
       "parameters, gradients and optimizer state sharded)"),
    _s("parallel.activation_checkpointing", "--activation-checkpointing", bool, "recompute each block's activations in the "
       "backward pass: less memory, about a third more compute (torch)", switch=True),
    _s("parallel.hostfile", "--hostfile", str, "mlx: train on the Macs listed in this mlx.launch hostfile (one rank each)",
       metavar="FILE"),
]
LORA_SETTINGS = [
    _s("lora.rank", "--lora-rank", int, "train LoRA adapters of rank R instead of every weight (needs --init-from)", metavar="R"),
    _s("lora.alpha", "--lora-alpha", float, "LoRA scale numerator: updates are scaled by alpha/R (default 2R)"),
    _s("lora.targets", "--lora-targets", str, "Linear layers that get adapters: attn, mlp, or attn.c_attn, attn.c_proj, mlp.c_fc, "
       "mlp.c_proj, mlp.c_gate, comma-separated (default attn,mlp)"),
    _s("lora.dropout", "--lora-dropout", float, "dropout on the adapters' input (default 0)"),
]
MODEL_SETTINGS = [
    _s("model.n_layer", "--n-layer", int, "transformer blocks"),
    _s("model.n_head", "--n-head", int, "attention heads"),
    _s("model.n_embd", "--n-embd", int, "embedding width (divisible by --n-head)"),
    _s("model.block_size", "--block-size", int, "context length in tokens"),
    _s("model.dropout", "--dropout", float, "dropout probability"),
    _s("model.bias", "--bias", bool, "biases in Linear and LayerNorm", switch=True),
    _s("model.norm", "--norm", str, "layernorm | rmsnorm"),
    _s("model.norm_eps", "--norm-eps", float, "epsilon of the norms (default 1e-5)"),
    _s("model.mlp", "--mlp", str, "gelu | relu2 | swiglu"),
    _s("model.tie_embeddings", "--tie-embeddings", bool, "the LM head shares the token embedding (--untied: a separate head)",
       switch=True),
    _s("model.pos", "--pos", str, "learned | rope: a learned position table (GPT-2) or rotary embeddings on queries and keys"),
    _s("model.rope_theta", "--rope-theta", float, "rotary base (default 10000)"),
    _s("model.qk_norm", "--qk-norm", bool, "RMS-normalise each head's queries and keys before attention", switch=True),
    _s("model.logit_softcap", "--logit-softcap", float, "cap the logits with cap*tanh(logits/cap) (0 = off; nanochat uses 15)"),
    _s("model.zero_init_proj", "--zero-init", bool, "initialise the residual output projections to zero", switch=True),
]
TRAIN_SETTINGS = [
    _s("train.batch_size", "--batch-size", int, "sequences per micro-batch"),
    _s("train.grad_accum", "--grad-accum", int, "micro-batches per optimizer step on each process (the step's total is this x --nproc)"),
    _s("train.max_iters", "--max-iters", int, "total optimizer steps"),
    _s("train.max_time", "--max-time", float, "training-time budget (90s, 5m, 1h): stop there with a final evaluation and "
       "checkpoint; the learning-rate schedule then runs over the budget (see README: Experiments) (default: none)",
       parse=duration_arg, metavar="DURATION"),
    _s("train.lr", "--lr", float, "peak learning rate (AdamW's: with --optimizer muon, of embeddings, head, norms, biases)"),
    _s("train.min_lr", "--min-lr", float, "learning rate at the end of the cosine decay"),
    _s("train.warmup_iters", "--warmup-iters", int, "linear warmup steps"),
    _s("train.lr_decay_iters", "--lr-decay-iters", int, "step where the cosine reaches --min-lr (default: --max-iters)"),
    _s("train.decay_lr", "--decay-lr", bool, "decay the learning rate (--no-decay-lr: constant at --lr)", switch=True),
    _s("train.weight_decay", "--weight-decay", float, "AdamW weight decay (2-D tensors only)"),
    _s("train.beta1", "--beta1", float, "AdamW beta1"),
    _s("train.beta2", "--beta2", float, "AdamW beta2"),
    _s("train.grad_clip", "--grad-clip", float, "clip the global gradient norm (0 = off)"),
    _s("train.optimizer", "--optimizer", str, "adamw | muon: Muon for the hidden matrices, AdamW for the rest"),
    _s("train.muon_lr", "--muon-lr", float, "Muon's peak learning rate (follows the --lr schedule)"),
    _s("train.muon_momentum", "--muon-momentum", float, "Muon's Nesterov momentum"),
    _s("train.muon_momentum_warmup", "--muon-momentum-warmup", int, "steps over which Muon's momentum rises from 0.85 (0 = constant)"),
    _s("train.muon_weight_decay", "--muon-weight-decay", float, "Muon's decoupled weight decay"),
    _s("train.eval_interval", "--eval-interval", int, "steps between evaluations, checkpoints and samples"),
    _s("train.eval_iters", "--eval-iters", int, "batches per evaluation (fixed, seeded)"),
    _s("train.log_interval", "--log-interval", int, "steps between metric records"),
    _s("train.sample_tokens", "--sample-tokens", int, "length of the sample logged at each eval (0 = off)"),
    _s("train.keep_last", "--keep-last", int, "checkpoints kept besides the best"),
    _s("train.seed", "--seed", int, "random seed (init, batches, dropout)"),
    _s("train.val_fraction", "--val-fraction", float, "share of the corpus held out for validation"),
    _s("train.sft", "--sft", bool, "supervised fine-tuning on conversations (--data: messages or prompt/completion JSONL, "
       "or hf:NAME): adds the chat turn tokens, loss on the assistant's tokens only", switch=True),
    _s("train.train_on_prompt", "--train-on-prompt", bool, "with --sft: train on the prompt's tokens too (no masking)", switch=True),
    _s("train.eval_task", "--eval-task", str, "score these tasks at every evaluation, recorded in the run (TASK[,TASK...]: "
       "mc:FILE.jsonl, bpb:FILE, gen:FILE.jsonl (chat runs), hellaswag, ...; see gptbench eval)", metavar="TASKS"),
]
SETTINGS: list[Setting] = RUN_SETTINGS + RUNTIME_SETTINGS + PARALLEL_SETTINGS + LORA_SETTINGS + MODEL_SETTINGS + TRAIN_SETTINGS
BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}
# Spec fields that no flag sets, and why: the tokenizer decides the vocabulary; the preset is
# chosen by --preset before the other settings apply; the rest are records.
NOT_SETTINGS = ("model.vocab_size", "preset", "model_given", "command")
# What a resume may change: the run keeps its model, data, tokenizer, source and adapters.
RESUMABLE_SECTIONS = ("train", "runtime", "parallel")
