"""Evaluation during training: fixed, seeded eval batches per split, bits per byte, a sample.

Eval batches come from their own generator (seeded once per run), so evaluating never
moves the training batch stream. Every evaluation also reports `val_bpb`, the validation
loss in bits per byte of text: loss · tokens / (bytes · ln 2) over the validation split,
which does not depend on the tokenizer, so runs with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gptbench.backends.base import Backend
from gptbench.backends.parallel import Collectives
from gptbench.backends.sampling import training_sample_params
from gptbench.errors import UserError
from gptbench.training.textmetrics import split_bytes

class Evaluator:
    """Mean losses over each split's fixed batches, in the run's units."""

    def __init__(self, data: Any, backend: Backend, comm: Collectives, batch_size: int, block_size: int, eval_iters: int, seed: int) -> None:
        from gptbench.data import get_batch

        self.data, self.backend, self.comm, self.seed = data, backend, comm, seed
        rng = np.random.default_rng([seed, 1])
        self.batches = {
            split: [get_batch(getattr(data, split), batch_size, block_size, rng) for _ in range(eval_iters)]
            for split in ("train", "val")
        }
        # chat data: the bytes of the trained (assistant) tokens, so bpb is over the answers
        self.val_bytes = split_bytes(data.val.trained_ids() if hasattr(data.val, "trained_ids") else data.val, data.tokenizer)
        # val loss (nats a token) -> bits a byte; None for a split of special tokens only
        self._bpb_per_nat = len(data.val) / (self.val_bytes * math.log(2)) if self.val_bytes else None

    def bpb(self, val_loss: float | None) -> float | None:
        """A validation loss (nats a token) in bits per byte of the validation text."""
        if val_loss is None or self._bpb_per_nat is None:
            return None
        return val_loss * self._bpb_per_nat

    def losses(self) -> dict[str, float]:
        """Mean loss over each split's fixed eval batches. Ranks take every world-th batch
        and their sums are added up, so the result is one process's mean; every rank runs
        as many forwards (a rank short of batches repeats one, with weight 0), because
        under FSDP a forward is collective."""
        world, rank = self.comm.world_size, self.comm.rank
        totals = []
        for batches in self.batches.values():
            total = 0.0
            for k in range(-(-len(batches) // world)):
                i = rank + k * world
                if i < len(batches):
                    total += self.backend.eval_loss(*batches[i])
                else:
                    self.backend.eval_loss(*batches[0])
            totals.append(total)
        totals = self.comm.sum(totals) if world > 1 else totals
        return {split: total / len(b) for (split, b), total in zip(self.batches.items(), totals)}

    def sample(self, max_new_tokens: int) -> str:
        """A sample from the model, from the end-of-text token (or a newline)."""
        from gptbench.backends.generate import generate

        tok = self.data.tokenizer
        if tok.eot_id is not None:
            prompt: Any = [tok.eot_id]
        else:
            try:
                prompt = tok.encode("\n")
            except UserError:
                prompt = [0]
        return generate(self.backend, tok, prompt, training_sample_params(max_new_tokens, self.seed)).text
