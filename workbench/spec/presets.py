"""Presets: named run specifications, values of `RunSpec`.

A preset sets the model's shape and the training hyperparameters (the vocabulary always
comes from the tokenizer). The reasons for each value stand beside it.
"""

from __future__ import annotations

from typing import Any

from gptbench.backends.spec import GPTConfig
from gptbench.spec.run import RunSpec
from gptbench.spec.train import TrainConfig

# Presets set model shape and training hyperparameters; vocab_size always comes from the
# tokenizer. `tiny` is nanoGPT's CPU shakespeare_char command, `small` its GPU config.
_PRESET_SECTIONS: dict[str, dict[str, dict[str, Any]]] = {
    # `tiny` keeps nanoGPT's shape and schedule but adds biases, unties the head and drops
    # weight decay: at 0.8M parameters and 2000 steps the model underfits, and these
    # regularisers cost more than they give (tinyshakespeare, full val split, 2000 steps:
    # 1.917 -> 1.877; see benchmarks/quality.py).
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=True, tie_embeddings=False),
        "train": dict(batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
                      weight_decay=0.0, eval_interval=250, eval_iters=20),
    },
    "small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
        "train": dict(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99, eval_interval=250, eval_iters=200),
    },
    # `modern`: today's recipe (modded-nanogpt's speedrun, nanochat) on `tiny`'s task and scale:
    # the same shape, context and batch, so the comparison is the recipe alone. Measured on
    # char-level tinyshakespeare, val loss over the whole val split, seed 1337, one run each
    # (steps to val loss <= 1.88, evaluated every 25 steps near it; wall-clock is
    # benchmarks/time_to_target.py's job):
    #   - tiny needs ~2000 steps (the end of its schedule); modern 375, and ends at ~1.77 after
    #     600. A modern step costs ~1.75x a tiny one on a CPU (Newton-Schulz on 24 matrices
    #     every step), so modern reaches 1.88 in about a third of tiny's wall-clock.
    #   - Added one at a time to tiny: rope 2000 -> 1300 steps (a 64-entry position table is
    #     slow to learn), qk-norm -> 1225, relu2 -> 725, rmsnorm without biases -> 700;
    #     zero-init and soft-cap: 850, 825 (noise: those curves sit at 1.885-1.89 for 100
    #     steps); muon -> 600; modern's schedule and learning rates -> 375.
    #   - Left out of modern one at a time: qk-norm 400, soft-cap 400, zero-init 375 (kept: the
    #     recipe's, neutral here). swiglu instead of relu2 (+9% parameters): 375, no gain.
    #   - muon_lr=0.01: 0.02 (nanochat's default, for N(0, 1/sqrt(C)) weights; ours are
    #     N(0, 0.02), so the same spectral step is a larger relative change) was a little
    #     slower, 0.05 slower again. lr=3e-3 (AdamW: embeddings, head, norms): 6e-3 the same.
    #     betas (0.8, 0.95): modded-nanogpt's.
    #   - max_iters=600 (50-step warmup, momentum 0.85 -> 0.95 over 100): a 400-step schedule
    #     reaches 1.88 a little sooner (350) but ends barely below it; 300 steps never do.
    #     batch 24 reaches it in 225 steps, about the same wall-clock.
    "modern": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False, norm="rmsnorm", mlp="relu2",
                      tie_embeddings=False, pos="rope", qk_norm=True, logit_softcap=15.0, zero_init_proj=True),
        "train": dict(batch_size=12, max_iters=600, lr=3e-3, min_lr=3e-4, warmup_iters=50, beta1=0.8, beta2=0.95,
                      weight_decay=0.0, optimizer="muon", muon_lr=0.01, muon_momentum_warmup=100,
                      eval_interval=100, eval_iters=20),
    },
    # `modern-small`: the same recipe at `small`'s GPU shape (6 x 384, context 256, dropout 0.2
    # against overfitting a 1 MB corpus). Not measured here (no GPU): half of small's steps,
    # on the CPU finding that the recipe needs a fifth to a third of them; Muon's lr 0.02 is
    # the CPU preset's relative step size at this width (the spectral norm of N(0, 0.02)
    # weights grows with sqrt(width)); AdamW's lr stays small's.
    "modern-small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False, norm="rmsnorm", mlp="relu2",
                      tie_embeddings=False, pos="rope", qk_norm=True, logit_softcap=15.0, zero_init_proj=True),
        "train": dict(batch_size=64, max_iters=2500, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta1=0.8, beta2=0.95,
                      optimizer="muon", muon_lr=0.02, muon_momentum_warmup=300, eval_interval=250, eval_iters=200),
    },
    "gpt2": {
        "model": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=6e-4, min_lr=6e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    "gpt2-medium": {
        "model": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=3e-4, min_lr=3e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    "gpt2-large": {
        "model": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=2.5e-4, min_lr=2.5e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    "gpt2-xl": {
        "model": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, dropout=0.0, bias=True),
        "train": dict(batch_size=12, grad_accum=40, max_iters=600000, lr=2e-4, min_lr=2e-5, warmup_iters=2000, beta2=0.95, eval_interval=2000, eval_iters=200),
    },
    # nanoGPT's finetune_shakespeare: a small constant learning rate, a short run, frequent
    # evaluation. No model section: the shape comes from --init-from, dropout is --dropout
    # (default 0). For LoRA, raise --lr about tenfold (the adapters start from zero).
    "finetune": {
        "model": {},
        "train": dict(batch_size=1, grad_accum=32, max_iters=20, lr=3e-5, min_lr=0.0, decay_lr=False, warmup_iters=0,
                      beta2=0.95, eval_interval=5, eval_iters=40),
    },
    # `sft`: supervised fine-tuning on conversations (`--sft` picks it unless --preset is
    # given). From nanochat's chat_sft: 32 conversations a step (4 x 8 micro-batches: one
    # conversation per row, so a step's tokens vary less with its length mix), no warmup and
    # no weight decay (a short run from a trained model), the learning rate decayed to zero.
    # lr 1e-4: nanochat scales its base learning rates by 0.02 for SFT; 1e-4 is that order
    # for AdamW on GPT-2-sized weights, and still moves a small model trained from scratch.
    # Without --init-from the model is `tiny`'s shape with a 256-token context, which holds
    # a few turns of a conversation (64 would cut most of them).
    "sft": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, dropout=0.0, bias=True, tie_embeddings=False),
        "train": dict(batch_size=4, grad_accum=8, max_iters=300, lr=1e-4, min_lr=0.0, warmup_iters=0, weight_decay=0.0,
                      beta2=0.95, eval_interval=50, eval_iters=20, sft=True),
    },
}

DEFAULT_PRESET = "tiny"
SFT_PRESET = "sft"  # the default preset with --sft
FINETUNE_PRESET = "finetune"  # the default preset with --init-from
NEEDS_INIT_FROM = (FINETUNE_PRESET,)
PRESETS: dict[str, RunSpec] = {
    name: RunSpec(preset=name, model=GPTConfig(**sections["model"]), train=TrainConfig(**sections["train"]))
    for name, sections in _PRESET_SECTIONS.items()
}
