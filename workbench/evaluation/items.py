"""Task items (multiple choice, and the generative items of chat runs) and tasks: the local
multiple-choice JSONL format, its checks, and few-shot contexts.

One item a line: `{"context": str, "choices": [str, ...], "answer": int}`. Each choice is
a continuation scored as given (a leading space included), after its context. An item may
instead carry one context per choice (Winogrande's partial scoring: the choices differ in
the context and share the continuation); `Item` holds both shapes as (context,
continuation) pairs. Few-shot examples are other items of the same task, drawn with a seed
per item, each written as its context plus its right continuation and joined by a blank
line, as lm-evaluation-harness writes them (`fewshot_delimiter` "\\n\\n"). Generative items
(`GenItem`, read and scored by `generative`) are a conversation and its accepted answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from gptbench.errors import UserError
from gptbench.tokenizers.chat import Message

T = TypeVar("T")

FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Item:
    """One question: a (context, continuation) pair per choice, and the right choice."""

    contexts: tuple[str, ...]  # one per choice
    continuations: tuple[str, ...]
    answer: int
    # what acc_norm divides by, in characters: the choice without the delimiter a hub task
    # puts before it (lm-evaluation-harness's `len(choice)`); default the continuation's
    choice_lengths: tuple[int, ...] = ()

    @classmethod
    def shared(cls, context: str, choices: list[str] | tuple[str, ...], answer: int, delimiter: str = "") -> "Item":
        return cls(tuple([context] * len(choices)), tuple(delimiter + c for c in choices), answer, tuple(len(c) for c in choices))

    @property
    def lengths(self) -> tuple[int, ...]:
        return self.choice_lengths or tuple(len(c) for c in self.continuations)

    @property
    def n_choices(self) -> int:
        return len(self.continuations)

    def example(self) -> str:
        """The item as a solved few-shot example: its context and its right continuation."""
        return self.contexts[self.answer] + self.continuations[self.answer]

    def with_prefix(self, prefix: str) -> "Item":
        return Item(tuple(prefix + c for c in self.contexts), self.continuations, self.answer, self.choice_lengths)


@dataclass(frozen=True)
class GenItem:
    """One generative question for a chat run: the conversation so far (ending with a user
    turn) and the answers that count as right."""

    messages: tuple[Message, ...]
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """What one `--task` names: multiple-choice items, a text for bits per byte, or
    generative items for a chat run."""

    name: str  # as the user named it: "hellaswag", "mc:items.jsonl", "bpb:text.txt", "gen:qa.jsonl"
    kind: str  # "mc" | "bpb" | "gen"
    items: tuple[Item, ...] = ()
    text: str = ""
    description: str = ""  # prepended to every context (MMLU's subject line)
    fewshot_pool: tuple[Item, ...] = ()  # where few-shot examples come from (default: items)
    gen_items: tuple[GenItem, ...] = ()
    gen_pool: tuple[GenItem, ...] = ()  # few-shot examples of a generative task (default: gen_items)

    def limited(self, limit: int | None) -> "Task":
        """The first `limit` items (few-shot examples still come from the whole task)."""
        if limit is None or self.kind == "bpb":
            return self
        return replace(self, items=self.items[:limit], fewshot_pool=self.fewshot_pool or self.items,
                       gen_items=self.gen_items[:limit], gen_pool=self.gen_pool or self.gen_items)

    def prompts(self, shots: int, seed: int) -> list[Item]:
        """Every item with its description and `shots` solved examples before each context;
        item i draws its examples (never itself) from its own generator `[seed, i]`, so an
        item's prompt does not depend on `--limit` or on the other items."""
        pool = self.fewshot_pool or self.items
        if shots and len(pool) <= shots:
            raise UserError(f"task {self.name} has {len(pool)} items, too few for --shots {shots}; ask for fewer shots")
        out = []
        for i, item in enumerate(self.items):
            prefix = self.description
            if shots:
                rng = np.random.default_rng([seed, i])
                others = [j for j in rng.permutation(len(pool))[: shots + 1] if pool[j] is not item][:shots]
                prefix += "".join(pool[j].example() + FEWSHOT_DELIMITER for j in others)
            out.append(item.with_prefix(prefix) if prefix else item)
        return out


def check_item(obj: object, where: str) -> Item:
    """One JSONL line as an `Item`, or a UserError naming `where` (file and line) and the fix."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: an item is a JSON object {{\"context\": str, \"choices\": [str, ...], \"answer\": int}}")
    unknown = sorted(set(obj) - {"context", "choices", "answer"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; an item has context, choices and answer")
    context, choices, answer = obj.get("context"), obj.get("choices"), obj.get("answer")
    if not isinstance(context, str):
        raise UserError(f"{where}: \"context\" must be a string")
    if not isinstance(choices, list) or len(choices) < 2:
        raise UserError(f"{where}: \"choices\" must be a list of at least 2 strings")
    for k, c in enumerate(choices):
        if not isinstance(c, str) or not c:
            raise UserError(f"{where}: choice {k} is {'empty' if c == '' else 'not a string'}; every choice is a non-empty continuation")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: \"answer\" must be an integer index into choices (0 to {len(choices) - 1}), got {answer!r}")
    return Item.shared(context, choices, answer)


def load_jsonl_items(path: Path) -> tuple[Item, ...]:
    """Every multiple-choice item of a local JSONL file, each line checked."""
    return read_task_file(path, check_item)


def read_task_file(path: Path, check: Callable[[Any, str], T]) -> tuple[T, ...]:
    """Every item of a local JSONL task file (blank lines skipped), each line read by `check`
    with its place (`FILE line N`) for the one-line error it raises."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"task file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read task file {path}: {exc}") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {n}: not JSON ({exc.msg}); one item a line") from None
        items.append(check(obj, f"{path} line {n}"))
    if not items:
        raise UserError(f"task file {path} has no items; one JSON object a line")
    return tuple(items)
