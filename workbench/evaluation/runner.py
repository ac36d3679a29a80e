"""Score one task on one loaded model: prompts, requests, batched log-likelihoods, results.

The model is anything with `token_logprobs` (both backends, through the backend contract)
and a `config.block_size`; the tokenizer is the model's own. An item the tokenizer cannot
encode, or whose continuation encodes to nothing or to more than the block size, is refused
naming the task and the item (`UserError`, one line).
"""

from __future__ import annotations

from dataclasses import dataclass

from gptbench.errors import UserError
from gptbench.evaluation.bpb import text_bpb
from gptbench.evaluation.generative import encode_gen, score_gen
from gptbench.evaluation.items import Task
from gptbench.evaluation.results import ItemScore, TaskResult
from gptbench.evaluation.scoring import Request, encode_pair, score_requests

LOGIT_BUDGET = 1 << 30  # bytes of float32 logits (and their log-softmax) one forward may hold


@dataclass(frozen=True)
class EvalOptions:
    shots: int = 0
    seed: int = 1234  # lm-evaluation-harness's default few-shot seed
    limit: int | None = None
    max_rows: int = 32  # rows per forward pass (an item's choices share one row where they can)
    share_context: bool = True  # pack an item's choices after one context where the backend can
    max_new_tokens: int = 64  # the longest answer of a generative task


def token_budget(vocab_size: int, block_size: int) -> int:
    """Padded tokens per forward pass that keep its logits within `LOGIT_BUDGET`."""
    return max(block_size, LOGIT_BUDGET // (8 * vocab_size))


def encode_task(task: Task, tokenizer, shots: int, seed: int, block_size: int) -> list[list[Request]]:
    """Every item's requests (one per choice), with its few-shot prefix."""
    out = []
    for i, item in enumerate(task.prompts(shots, seed)):
        where = f"task {task.name} item {i + 1}"
        try:
            reqs = [encode_pair(tokenizer, c, k) for c, k in zip(item.contexts, item.continuations)]
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        for k, r in enumerate(reqs):
            if not r.continuation:
                raise UserError(f"{where}: choice {k} encodes to no tokens; give every choice some text")
            if len(r.continuation) > block_size:
                raise UserError(f"{where}: choice {k} is {len(r.continuation)} tokens, longer than the model's block size ({block_size}); shorten it")
        out.append(reqs)
    return out


@dataclass(frozen=True)
class Prepared:
    """A task cut to `--limit`, its items encoded (none for a text): every item checked."""

    task: Task
    requests: tuple[tuple[Request, ...], ...] = ()
    prompts: tuple[tuple[int, ...], ...] = ()  # a generative task's prompt ids


def prepare(model, tokenizer, task: Task, options: EvalOptions = EvalOptions()) -> Prepared:
    """Encode `task` for `model` before anything is scored, so a bad item fails first."""
    task = task.limited(options.limit)
    if task.kind == "bpb":
        return Prepared(task)
    if task.kind == "gen":
        return Prepared(task, prompts=encode_gen(task, tokenizer, options.shots, options.seed))
    per_item = encode_task(task, tokenizer, options.shots, options.seed, model.config.block_size)
    return Prepared(task, tuple(tuple(reqs) for reqs in per_item))


def evaluate(model, tokenizer, task: Task | Prepared, options: EvalOptions = EvalOptions()) -> TaskResult:
    """`task` scored on `model` (a backend): acc/acc_norm per item, bits per byte, or
    (a generative task) the exact-match rate of greedy answers."""
    prepared = task if isinstance(task, Prepared) else prepare(model, tokenizer, task, options)
    task = prepared.task
    block = model.config.block_size
    budget = token_budget(model.config.vocab_size, block)
    if task.kind == "bpb":
        try:
            return text_bpb(model.token_logprobs, tokenizer, task.text, block, task.name, budget)
        except UserError as exc:
            raise UserError(f"task {task.name}: {exc}") from None
    if task.kind == "gen":
        return score_gen(model, tokenizer, task, prepared.prompts, options.shots, options.max_new_tokens, options.max_rows)
    flat = [r for reqs in prepared.requests for r in reqs]
    share = options.share_context and getattr(model, "shares_context", False)
    scored = score_requests(model.token_logprobs, flat, block, max_rows=options.max_rows, max_tokens=budget, share=share)
    items, k = [], 0
    for i, (item, reqs) in enumerate(zip(task.items, prepared.requests)):
        got = scored[k: k + len(reqs)]
        k += len(reqs)
        items.append(ItemScore(i, item.answer, tuple(s.loglik for s in got), item.lengths, any(s.truncated for s in got)))
    return TaskResult.from_items(task.name, items, options.shots)
