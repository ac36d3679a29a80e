"""The standard multiple-choice tasks, loaded through `datasets` and shaped as lm-evaluation-
harness shapes them (prompt, choices, target delimiter " "), so scores are comparable.

| task | dataset (config) | split | prompt |
|---|---|---|---|
| hellaswag | Rowan/hellaswag | validation | "{activity}: {ctx_a} {Ctx_b}" cleaned; choices the endings |
| arc_easy, arc_challenge | allenai/ai2_arc (ARC-Easy / ARC-Challenge) | test | "Question: {q}\\nAnswer:" |
| piqa | baber/piqa | validation | "Question: {goal}\\nAnswer:"; choices sol1, sol2 |
| winogrande | allenai/winogrande (winogrande_xl) | validation | the sentence up to "_" with each option; the rest is the continuation |
| mmlu | cais/mmlu (all) | test | the question, lettered choices, "Answer:"; choices " A".." D" |

Names, configs, splits and dataset revisions (commits of the hub's dataset repositories)
are pinned here (`HUB_TASKS`), so a score names exactly the items it was computed on. The
revisions are the ones lm-evaluation-harness users pin for these datasets (Rowan/hellaswag
218ec52, allenai/ai2_arc 210d026, baber/piqa 142f6d7, allenai/winogrande 01e7417, cais/mmlu
c30699e). Each converter takes plain rows (dicts), so it is tested on a local JSON file
shaped like the hub dataset. Offline, or without `datasets`, loading fails in one line
naming what is missing.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from gptbench.errors import UserError
from gptbench.evaluation.items import Item

DELIMITER = " "  # lm-evaluation-harness's target_delimiter


def _clean_hellaswag(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_item(row: dict[str, Any]) -> Item:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = _clean_hellaswag(row["activity_label"] + ": " + ctx)
    return Item.shared(query, [_clean_hellaswag(e) for e in row["endings"]], int(row["label"]), DELIMITER)


def arc_item(row: dict[str, Any]) -> Item:
    labels = list(row["choices"]["label"])
    return Item.shared(f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]), labels.index(row["answerKey"]), DELIMITER)


def piqa_item(row: dict[str, Any]) -> Item:
    return Item.shared(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]), DELIMITER)


def winogrande_item(row: dict[str, Any]) -> Item:
    """Partial scoring: the context is the sentence up to the blank with each option
    filled in; the continuation, shared, is the rest of the sentence."""
    sentence = row["sentence"]
    cut = sentence.index("_")
    options = [row["option1"], row["option2"]]
    rest = DELIMITER + sentence[cut + 1:].strip()
    return Item(tuple(sentence[:cut] + o for o in options), (rest, rest), int(row["answer"]) - 1,
                tuple(len(o) for o in options))


def mmlu_item(row: dict[str, Any]) -> Item:
    letters = "ABCD"
    lines = [row["question"].strip()] + [f"{letters[k]}. {c}" for k, c in enumerate(row["choices"])]
    subject = row["subject"].replace("_", " ")
    described = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return Item.shared(described + "\n".join(lines) + "\nAnswer:", list(letters[: len(row["choices"])]), int(row["answer"]), DELIMITER)


@dataclass(frozen=True)
class HubTask:
    path: str
    config: str | None
    split: str
    revision: str  # the dataset repository's commit
    convert: Callable[[dict[str, Any]], Item]

    def describe(self) -> str:
        config = f" ({self.config})" if self.config else ""
        return f"{self.path}{config} at revision {self.revision[:7]}, split {self.split}"


ARC_REVISION = "210d026faf9955653af8916fad021475a3f00453"
HUB_TASKS: dict[str, HubTask] = {
    "hellaswag": HubTask("Rowan/hellaswag", None, "validation", "218ec52e09a7e7462a5400043bb9a69a41d06b76", hellaswag_item),
    "arc_easy": HubTask("allenai/ai2_arc", "ARC-Easy", "test", ARC_REVISION, arc_item),
    "arc_challenge": HubTask("allenai/ai2_arc", "ARC-Challenge", "test", ARC_REVISION, arc_item),
    "piqa": HubTask("baber/piqa", None, "validation", "142f6d7367fd9877f0fb3b5734ea6a545f54cdd1", piqa_item),
    "winogrande": HubTask("allenai/winogrande", "winogrande_xl", "validation", "01e74176c63542e6b0bcb004dcdea22d94fb67b5", winogrande_item),
    "mmlu": HubTask("cais/mmlu", "all", "test", "c30699e8356da336a370243923dbaf21066bb9fe", mmlu_item),
}


def convert_rows(name: str, rows: Iterable[dict[str, Any]]) -> tuple[Item, ...]:
    """The rows of task `name`'s dataset as items; a row of another shape is refused."""
    convert = HUB_TASKS[name].convert
    items = []
    for i, row in enumerate(rows):
        try:
            items.append(convert(row))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise UserError(f"task {name}: row {i + 1} of the dataset is not shaped as expected ({type(exc).__name__}: {exc})") from None
    return tuple(items)


def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None when the hub answers (or the cache only is asked for), else why not."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach huggingface.co: {exc.strerror or type(exc).__name__}; set HF_DATASETS_OFFLINE=1 to use the Hugging Face cache"


def load_hub_items(name: str, data_files: str | None = None) -> tuple[Item, ...]:
    """Task `name`'s items from the hub (or its local cache), or from `data_files` (a local
    JSON/JSONL file shaped like the dataset)."""
    spec = HUB_TASKS[name]
    try:
        import datasets
    except ImportError:
        raise UserError(f'task {name} needs the `datasets` package; pip install "gptbench[data]"') from None
    datasets.disable_progress_bars()
    where = spec.describe()
    unreachable = None if data_files is not None else _hub_reachable()
    if unreachable:
        raise UserError(f"task {name} needs the dataset {where} ({unreachable}), or use a local mc:FILE.jsonl task")
    try:
        if data_files is not None:
            ds = datasets.load_dataset("json", data_files=data_files, split="train")
        else:
            ds = datasets.load_dataset(spec.path, spec.config, split=spec.split, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - offline, missing and gated datasets raise many kinds
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"task {name} needs the dataset {where}, which could not be loaded ({reason}); "
                        "connect to the internet once to cache it, or use a local mc:FILE.jsonl task") from None
    return convert_rows(name, ds)
