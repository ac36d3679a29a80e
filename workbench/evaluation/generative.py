"""Generative tasks for chat runs (`gen:FILE.jsonl`): the local format, greedy answers
through the run's chat template, and exact match.

One item a line, either form:

    {"prompt": "What is 2+2?", "answer": "4"}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...], "answer": "4"}

the messages ending with a user turn; "answer" may also be a list of accepted answers. The
prompt is the run's chat template over the messages with the assistant's turn opened
(`ChatTokenizer.prompt_ids`); the model answers greedily (temperature 0) until its end of
turn (`<|end|>`), end-of-text or `max_new_tokens`, several items per batch
(`generate_batch`). An answer is right when, normalised, it equals one of the item's
answers normalised: leading and trailing whitespace stripped and every run of whitespace
made one space; case and punctuation count. Few-shot examples are other items, drawn per
item with the seed as for multiple choice, given as earlier turns (each its messages and
its first answer as the assistant's reply). A model without a chat template (a base run)
is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptbench.errors import UserError
from gptbench.evaluation.items import GenItem, Task, read_task_file
from gptbench.evaluation.results import TaskResult
from gptbench.tokenizers.chat import ROLES, Message, is_chat

FORMAT = '{"prompt": str, "answer": str} or {"messages": [{"role", "content"}, ...], "answer": str}'


def check_gen_item(obj: object, where: str) -> GenItem:
    """One JSONL line as a `GenItem`, or a UserError naming `where` and the fix."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a generative item is a JSON object {FORMAT}")
    unknown = sorted(set(obj) - {"prompt", "messages", "answer"})
    if unknown or ("prompt" in obj) == ("messages" in obj):
        extra = f"unknown key(s) {', '.join(unknown)}; " if unknown else ""
        raise UserError(f"{where}: {extra}an item is {FORMAT} (exactly one of prompt and messages)")
    if "prompt" in obj:
        raw = [{"role": "user", "content": obj["prompt"]}]
    elif isinstance(obj["messages"], list) and obj["messages"]:
        raw = obj["messages"]
    else:
        raise UserError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    messages = []
    for k, m in enumerate(raw, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise UserError(f"{where}: message {k} needs a role of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise UserError(f"{where}: message {k} ({m['role']}) needs non-empty text as its content")
        messages.append(Message(m["role"], m["content"]))
    if messages[-1].role != "user":
        raise UserError(f"{where}: the conversation must end with a user turn, which the model answers")
    answers = obj.get("answer")
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise UserError(f"{where}: \"answer\" must be a non-empty string (or a list of them)")
    return GenItem(tuple(messages), tuple(answers))


def load_gen_items(path: Path) -> tuple[GenItem, ...]:
    """Every generative item of a local JSONL file, each line checked."""
    return read_task_file(path, check_gen_item)


def normalise(text: str) -> str:
    """What exact match compares: surrounding whitespace stripped, inner runs one space."""
    return " ".join(text.split())


def conversations(task: Task, shots: int, seed: int) -> list[list[Message]]:
    """Every item's conversation, after `shots` solved examples as earlier turns; item i
    draws its examples (never itself) from its own generator `[seed, i]`."""
    pool = task.gen_pool or task.gen_items
    if shots and len(pool) <= shots:
        raise UserError(f"task {task.name} has {len(pool)} items, too few for --shots {shots}; ask for fewer shots")
    out = []
    for i, item in enumerate(task.gen_items):
        turns: list[Message] = []
        if shots:
            rng = np.random.default_rng([seed, i])
            for j in [j for j in rng.permutation(len(pool))[: shots + 1] if pool[j] is not item][:shots]:
                turns += [m for m in pool[j].messages if m.role != "system"] + [Message("assistant", pool[j].answers[0])]
        system = [m for m in item.messages[:1] if m.role == "system"]
        out.append(system + turns + list(item.messages[len(system):]))
    return out


def encode_gen(task: Task, tokenizer, shots: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """Every item's prompt ids through the chat template; a model without one is refused."""
    if not is_chat(tokenizer):
        raise UserError(f"task {task.name} asks a chat run (trained with --sft) through its chat template, and this model "
                        "has none; evaluate a chat run, or use mc: and bpb: tasks on a base model")
    prompts = []
    for i, conv in enumerate(conversations(task, shots, seed)):
        try:
            prompts.append(tuple(tokenizer.prompt_ids(conv)))
        except UserError as exc:
            raise UserError(f"task {task.name} item {i + 1}: {exc}") from None
    return tuple(prompts)


@dataclass(frozen=True)
class GenScore:
    """One generative item: the model's answer and whether it matched."""

    index: int
    answers: tuple[str, ...]
    output: str
    correct: bool
    truncated: bool  # the prompt and answer outgrew the block size (the window slid)
    finish_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "answers": list(self.answers), "output": self.output, "correct": self.correct,
                "truncated": self.truncated, "finish_reason": self.finish_reason}


def score_gen(model, tokenizer, task: Task, prompts: tuple[tuple[int, ...], ...], shots: int,
              max_new_tokens: int, max_rows: int) -> TaskResult:
    """Greedy answers to every prompt, `max_rows` at a time, scored by exact match."""
    from gptbench.backends.generate import generate_batch
    from gptbench.backends.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.end_id,))
    scores = []
    for start in range(0, len(prompts), max_rows):
        chunk = prompts[start: start + max_rows]
        for k, (prompt, result) in enumerate(zip(chunk, generate_batch(model, tokenizer, [list(p) for p in chunk], params))):
            item = task.gen_items[start + k]
            correct = normalise(result.text) in {normalise(a) for a in item.answers}
            cut = len(prompt) + len(result.tokens) - 1 > model.config.block_size
            scores.append(GenScore(start + k, item.answers, result.text, correct, cut, result.finish_reason))
    n = len(scores)
    return TaskResult(task.name, "gen", n, acc=sum(s.correct for s in scores) / n, truncated=sum(s.truncated for s in scores),
                      shots=shots, items=tuple(scores))
